// Frozen weights in their shipped format, and the row decoder the GEMM packing step uses.
// W is logically [rows, cols] (out, in). Formats:
//   F32, BF16 (u16), FP8 e4m3 with E8M0 scales [ceil(rows/128), ceil(cols/128)],
//   FP4 e2m1 two a byte (low nibble first; sign bit 3, magnitudes {0,.5,1,1.5,2,3,4,6})
//   with E8M0 scales [rows, cols/32]. E8M0 byte b means 2^(b-127).
#pragma once
#include <cstdint>

namespace v4 {

enum class Fmt : int { f32 = 0, bf16 = 1, fp8 = 2, fp4 = 3 };

struct WeightRef {
  Fmt fmt;
  const void* data;
  const uint8_t* scale;  // null for f32 / bf16
  long rows, cols;       // logical (dequantised) shape
  long ld;               // f32 only: elements between rows (== cols for a packed matrix)
  long row0;             // first row of the shipped tensor this view starts at (block scales)
};

inline WeightRef f32_matrix(const float* p, long rows, long cols, long ld = -1) {
  return WeightRef{Fmt::f32, p, nullptr, rows, cols, ld < 0 ? cols : ld, 0};
}

// Rows r0 .. r0+n of W as a weight of its own (the view keeps W's data and scales).
inline WeightRef weight_rows(const WeightRef& W, long r0, long n) {
  WeightRef s = W;
  s.row0 = W.row0 + r0;
  s.rows = n;
  return s;
}

// out[0:n] = W[r, c0:c0+n] dequantised to fp32.
void decode_row(const WeightRef& w, long r, long c0, long n, float* out);

// Bytes of data / scale a weight of this format and shape must have.
long weight_data_bytes(Fmt f, long rows, long cols);
long weight_scale_bytes(Fmt f, long rows, long cols);

float e8m0(uint8_t b);
float fp8_e4m3(uint8_t b);
float fp4_e2m1(uint8_t nib);
// the decoders' tables: e8m0(b) for every byte b, and the 16 e2m1 values by code
const float* e8m0_table();
const float* fp4_e2m1_table();

// out[i] = x[i] as IEEE half bits (src/model/formats.ts f32ToF16Bytes: nearest, ties to even,
// overflow → inf, every NaN → 0x7e00)
void f32_to_f16(uint16_t* out, const float* x, long n);

}  // namespace v4
