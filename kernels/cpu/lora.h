// Linear layers with a fused LoRA delta, and the grouped routed-expert SwiGLU with LoRA.
#pragma once
#include "weights.h"

namespace v4 {

// x is (T, G, inG), W is (G·outG, inG) in its shipped format, A is (r, inG), B is (G·outG, r);
// y is (T, G·outG). Group g uses rows g·outG … (g+1)·outG of W and B (G = 1: a plain linear):
// y_g = x_g W_gᵀ + s·(x_g Aᵀ) B_gᵀ          (r = 0 or A = null: no adapter)
void linear_lora_forward(float* y, const float* x, const WeightRef& W, const float* A, const float* B,
                         long r, float s, long T, long G);
// dx (T, G, inG), dA, dB accumulate; any may be null.
void linear_lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const WeightRef& W,
                          const float* A, const float* B, long r, float s, long T, long G);

// One routed expert: base weights W1, W3 (I, d) and W2 (d, I), adapters A1 (r, d), B1 (I, r),
// A3 (r, d), B3 (I, r), A2 (r, I), B2 (d, r); a null A means no adapter on that projection.
struct Expert {
  WeightRef w1, w2, w3;
  const float *a1, *b1, *a2, *b2, *a3, *b3;
  long r1, r2, r3;
  float s1, s2, s3;  // LoRA scalings (alpha / r, or alpha / sqrt(r) for rsLoRA)
};
struct ExpertGrads {
  float *da1, *db1, *da2, *db2, *da3, *db3;  // null where there is no adapter; accumulated (+=)
};

// x is (T, d); the P = Σ_e n_e (token, expert) pairs are sorted by expert: pairs
// off[e] .. off[e+1]-1 belong to expert e, idx[p] is the token, w[p] its routing weight.
// out is (T, d), accumulated: out[idx[p]] += w[p] · expert_e(x[idx[p]]), where
//   h1 = x W1ᵀ + s1 (x A1ᵀ) B1ᵀ,  h3 = x W3ᵀ + s3 (x A3ᵀ) B3ᵀ
//   act = silu(min(h1, L)) · clamp(h3, -L, L)
//   expert(x) = act W2ᵀ + s2 (act A2ᵀ) B2ᵀ
void expert_forward(float* out, const float* x, long T, long d, long I, const int* idx, const int* off, const float* w,
                    const Expert* experts, long E, float L);
// dx (T, d) and dw (P) accumulate; grads[e] accumulate. Nothing (P, I)-sized is kept between
// the passes: the backward recomputes h1, h3 and act expert by expert.
void expert_backward(float* dx, float* dw, const ExpertGrads* grads, const float* dout, const float* x, long T, long d,
                     long I, const int* idx, const int* off, const float* w, const Expert* experts, long E, float L);

}  // namespace v4
