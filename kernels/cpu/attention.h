// Sparse attention with one shared KV head: a sliding window of raw kv plus a per-query list
// of compressed entries, softmax with a learned sink. Never a T × T matrix.
#pragma once

namespace v4 {

// q is (T, H, D), kv is (M, D) (window rows and compressed entries alike); idx is (T, K): the kv
// rows query t sees (−1 = none); sink is (H)
// s_j = scale·q·kv_j;  lse = log(Σ_j e^{s_j} + e^{sink_h});  p_j = e^{s_j − lse};  o = Σ_j p_j kv_j
// o is (T, H, D), lse is (T, H) (saved for the backward)
void attention_forward(float* o, float* lse, const float* q, const float* kv, const int* idx, const float* sink,
                       long T, long H, long D, long K, long M, float scale);

// dq (T, H, D), dkv (M, D), dsink (H, may be null) accumulate.
void attention_backward(float* dq, float* dkv, float* dsink, const float* dout, const float* lse,
                        const float* q, const float* kv, const int* idx, const float* sink, long T, long H, long D,
                        long K, long M, float scale);

}  // namespace v4
