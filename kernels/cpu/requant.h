// Merging a LoRA delta into a shipped weight and writing it back in its format, as
// src/export/merge.ts does it (formats.ts encoders, lora/adapter.ts delta), bit for bit:
//   x = dequant(W) (rows, cols) f32;  d = Σ_k (B[o][k]·s)·A[k] accumulated in f32 per element;
//   x += d;  out = FP8 e4m3 + E8M0 128×128 block scales | FP4 e2m1 + E8M0 per-32 scales | BF16.
#pragma once
#include <cstdint>
#include "weights.h"

namespace v4 {

enum class OutFmt : int { bf16 = 1, fp8 = 2, fp4 = 3 };

// out_data / out_scale: the stored bytes (FP8: rows·cols + ⌈rows/128⌉·⌈cols/128⌉ scales; FP4:
// rows·cols/2 + rows·cols/32; BF16: 2·rows·cols, no scale). A (r, cols), B (rows, r) or null (no
// delta: a conversion). Returns the index of the first non-finite merged value (its value in
// *bad_value), or −1.
long merge_requant(uint8_t* out_data, uint8_t* out_scale, double* bad_value, const WeightRef& W,
                   const float* A, const float* B, long r, double scaling, OutFmt fmt);

}  // namespace v4
