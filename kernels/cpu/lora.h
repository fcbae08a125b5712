// Linear layers with a fused LoRA delta, and the grouped routed-expert SwiGLU with LoRA.
#pragma once
#include <cstdint>
#include "weights.h"

namespace v4 {

// ---- LoRA dropout (PEFT's lora_dropout, training only): the LoRA path reads x ⊙ m/(1−p), the
// base path x. The mask is a counter-based hash of (seed, row, col), never stored; it is
// src/backend/dropout.ts bit for bit:
//   hash32(s, row, col) = fmix32(fmix32(s ^ row·0x9E3779B1) ^ col·0x85EBCA77)   (mod 2^32)
//   kept iff hash32 >> 8 >= threshold (= ⌊p·2^24⌋), kept values times scale (= 1/(1−p)).
// row is the token's index in the op's x (routed experts: the token, not its sorted position).
struct Dropout {
  bool on = false;  // false: no dropout (the kernels take their plain path)
  uint32_t threshold = 0;
  float scale = 1.f;
  uint32_t seed = 0;
  long row0 = 0;  // model row of x's row 0 (plain and grouped linears; routed experts name their rows)
};
inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}
inline uint32_t dropout_row_key(uint32_t seed, uint32_t row) { return fmix32(seed ^ (row * 0x9e3779b1u)); }
inline uint32_t dropout_hash(uint32_t row_key, uint32_t col) { return fmix32(row_key ^ (col * 0x85ebca77u)); }

// out[p, c] = in[p, c] · m(row_p, c) (accumulate: out += …) for p < n, c < C, where m is the
// mask's multiplier (scale or 0) and row_p = rows[p] (rows null: row0 + p). out, in (n, C) with
// leading dimensions ldo, ldi.
void dropout_apply(float* out, long ldo, const float* in, long ldi, const int* rows, long row0, long n, long C,
                   const Dropout& dr, bool accumulate);

// x is (T, G, inG), W is (G·outG, inG) in its shipped format, A is (r, inG), B is (G·outG, r);
// y is (T, G·outG). Group g uses rows g·outG … (g+1)·outG of W and B (G = 1: a plain linear):
// y_g = x_g W_gᵀ + s·(x̃_g Aᵀ) B_gᵀ          (r = 0 or A = null: no adapter)
// x̃ = x ⊙ dropout mask over x (T, G·inG) (row t, col g·inG + i); x̃ = x when dr is off.
void linear_lora_forward(float* y, const float* x, const WeightRef& W, const float* A, const float* B,
                         long r, float s, long T, long G, const Dropout& dr = Dropout{});
// dx (T, G, inG), dA, dB accumulate; any may be null.
void linear_lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const WeightRef& W,
                          const float* A, const float* B, long r, float s, long T, long G,
                          const Dropout& dr = Dropout{});

// One routed expert: base weights W1, W3 (I, d) and W2 (d, I), adapters A1 (r, d), B1 (I, r),
// A3 (r, d), B3 (I, r), A2 (r, I), B2 (d, r); a null A means no adapter on that projection.
struct Expert {
  WeightRef w1, w2, w3;
  const float *a1, *b1, *a2, *b2, *a3, *b3;
  long r1, r2, r3;
  float s1, s2, s3;  // LoRA scalings (alpha / r, or alpha / sqrt(r) for rsLoRA)
  Dropout d1, d2, d3;  // dropout on each projection's LoRA input (x for 1 and 3, act for 2)
};
struct ExpertGrads {
  float *da1, *db1, *da2, *db2, *da3, *db3;  // null where there is no adapter; accumulated (+=)
};

// x is (T, d); the P = Σ_e n_e (token, expert) pairs are sorted by expert: pairs
// off[e] .. off[e+1]-1 belong to expert e, idx[p] is the token, w[p] its routing weight.
// out is (T, d), accumulated: out[idx[p]] += w[p] · expert_e(x[idx[p]]), where
//   h1 = x W1ᵀ + s1 (x̃1 A1ᵀ) B1ᵀ,  h3 = x W3ᵀ + s3 (x̃3 A3ᵀ) B3ᵀ
//   act = silu(min(h1, L)) · clamp(h3, -L, L)
//   expert(x) = act W2ᵀ + s2 (ãct2 A2ᵀ) B2ᵀ
// x̃k = x ⊙ (dk's mask at row idx[p]), ãct2 = act ⊙ (d2's mask at row idx[p]); = x, act when off.
// h13, when not null (2·P·I floats), receives h1 of pair p at [p·I] and h3 at [(P + p)·I], for
// the backward (a training forward keeps them).
void routed_experts_forward(float* out, const float* x, long T, long d, long I, const int* idx, const int* off, const float* w,
                    const Expert* experts, long E, float L, float* h13 = nullptr);
// dx (T, d) and dw (P) accumulate; grads[e] accumulate. With h13 (the forward's, unchanged) the
// backward reads h1 and h3 from it; without, it recomputes them (w1·x and w3·x) expert by expert.
void routed_experts_backward(float* dx, float* dw, const ExpertGrads* grads, const float* dout, const float* x, long T, long d,
                     long I, const int* idx, const int* off, const float* w, const Expert* experts, long E, float L,
                     const float* h13 = nullptr);

}  // namespace v4
