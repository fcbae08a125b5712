// RMSNorm, interleaved RoPE, and the embedding gather.
#pragma once
#include "weights.h"

namespace v4 {

// inp is (T, C), weight is (C) or null (no weight, e.g. the per-head query norm)
// out is (T, C), rstd is (T): out = inp · rstd · weight, rstd = 1/sqrt(mean(inp²) + eps)
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, long T, long C, float eps);
// dinp (T, C) and dweight (C, may be null) accumulate.
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, long T, long C);

// x is (T, H, D), rotated on its last rd dims; pos (T); cos, sin are (maxPos, rd/2)
// pair k = (x[D-rd+2k], x[D-rd+2k+1]) -> (x0 c − x1 s, x0 s + x1 c), c, s at pos[t]; inverse
// rotates by −θ. The backward of a rotation is the inverse rotation of dout.
// src null: x is rotated in place; else x = src rotated (src (T, H, D), the first D − rd of
// each head copied), one pass instead of a copy and a rotation.
void rope_forward(float* x, const int* pos, const float* cos, const float* sin, long T, long H, long D, long rd,
                  bool inverse, const float* src = nullptr);

// out is (T, d): out[t] = E[ids[t]], E (V, d) in its shipped format
void embedding_forward(float* out, const int* ids, const WeightRef& E, long T);

}  // namespace v4
