// Row decoding for every shipped weight format, scalar and vectorised. The GEMM calls this
// while packing a panel, so the dequantised base never exists in memory beyond one panel.
#include "weights.h"
#include "common.h"
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>

namespace v4 {

float e8m0(uint8_t b) {
  if (b == 255) return NAN;
  return std::ldexp(1.0f, int(b) - 127);
}
// e4m3: s eeee mmm, bias 7, no infinities; 0x7f / 0xff are NaN.
float fp8_e4m3(uint8_t b) {
  int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return NAN;
  float v = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return s ? -v : v;
}
static const float kFp4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
float fp4_e2m1(uint8_t nib) { return kFp4[nib & 15]; }

struct Luts {
  float fp8[256];
  float e8[256];
  Luts() {
    for (int i = 0; i < 256; i++) fp8[i] = fp8_e4m3(uint8_t(i)), e8[i] = e8m0(uint8_t(i));
  }
};
static const Luts kLut;
const float* e8m0_table() { return kLut.e8; }
const float* fp4_e2m1_table() { return kFp4; }

long weight_data_bytes(Fmt f, long rows, long cols) {
  switch (f) {
    case Fmt::f32: return rows * cols * 4;
    case Fmt::bf16: return rows * cols * 2;
    case Fmt::fp8: return rows * cols;
    case Fmt::fp4: return rows * cols / 2;
  }
  return 0;
}
long weight_scale_bytes(Fmt f, long rows, long cols) {
  if (f == Fmt::fp8) return cdiv(rows, 128) * cdiv(cols, 128);
  if (f == Fmt::fp4) return rows * (cols / 32);
  return 0;
}

// The clean reference decoder: one element at a time.
static void decode_row_scalar(const WeightRef& w, long r, long c0, long n, float* out) {
  switch (w.fmt) {
    case Fmt::f32: std::memcpy(out, (const float*)w.data + r * w.ld + c0, n * 4); return;
    case Fmt::bf16: {
      const uint16_t* p = (const uint16_t*)w.data + r * w.cols + c0;
      for (long j = 0; j < n; j++) {
        uint32_t u = uint32_t(p[j]) << 16;
        std::memcpy(out + j, &u, 4);
      }
      return;
    }
    case Fmt::fp8: {
      const uint8_t* p = (const uint8_t*)w.data + r * w.cols;
      const uint8_t* s = w.scale + (r / 128) * cdiv(w.cols, 128);
      for (long j = 0; j < n; j++) out[j] = kLut.fp8[p[c0 + j]] * kLut.e8[s[(c0 + j) / 128]];
      return;
    }
    case Fmt::fp4: {
      const uint8_t* p = (const uint8_t*)w.data + r * (w.cols / 2);
      const uint8_t* s = w.scale + r * (w.cols / 32);
      for (long j = 0; j < n; j++) {
        long c = c0 + j;
        uint8_t b = p[c >> 1];
        out[j] = kFp4[(c & 1) ? (b >> 4) : (b & 15)] * kLut.e8[s[c / 32]];
      }
      return;
    }
  }
}

// Vectorised decode for 16-aligned column starts; every scale group (32 or 128) is a
// multiple of 16, so one scale covers each vector.
V4_AVX512 static void decode_row_512(const WeightRef& w, long r, long c0, long n, float* out) {
  long j = 0;
  switch (w.fmt) {
    case Fmt::f32: std::memcpy(out, (const float*)w.data + r * w.ld + c0, n * 4); return;
    case Fmt::bf16: {
      const uint16_t* p = (const uint16_t*)w.data + r * w.cols + c0;
      for (; j + 16 <= n; j += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(p + j)));
        _mm512_storeu_ps(out + j, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
      }
      break;
    }
    case Fmt::fp8: {
      // e4m3 -> fp16 bits (s<<15 | em<<7) is exact incl. subnormals, off by 2^8 in scale.
      const uint8_t* p = (const uint8_t*)w.data + r * w.cols + c0;
      const uint8_t* s = w.scale + (r / 128) * cdiv(w.cols, 128);
      for (; j + 16 <= n; j += 16) {
        __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(p + j)));
        __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8),
                                    _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)), 7));
        __m512 f = _mm512_cvtph_ps(h);
        _mm512_storeu_ps(out + j, _mm512_mul_ps(f, _mm512_set1_ps(256.0f * kLut.e8[s[(c0 + j) / 128]])));
      }
      break;
    }
    case Fmt::fp4: {
      const uint8_t* p = (const uint8_t*)w.data + r * (w.cols / 2) + c0 / 2;
      const uint8_t* s = w.scale + r * (w.cols / 32);
      const __m512 table = _mm512_loadu_ps(kFp4);
      const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
      const __m512i shift = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
      for (; j + 16 <= n; j += 16) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + j / 2)));
        __m512i nib = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(dup, b), shift), _mm512_set1_epi32(15));
        __m512 f = _mm512_permutexvar_ps(nib, table);
        _mm512_storeu_ps(out + j, _mm512_mul_ps(f, _mm512_set1_ps(kLut.e8[s[(c0 + j) / 32]])));
      }
      break;
    }
  }
  if (j < n) decode_row_scalar(w, r, c0 + j, n - j, out + j);
}

V4_AVX2 static void decode_row_256(const WeightRef& w, long r, long c0, long n, float* out) {
  long j = 0;
  switch (w.fmt) {
    case Fmt::f32: std::memcpy(out, (const float*)w.data + r * w.ld + c0, n * 4); return;
    case Fmt::bf16: {
      const uint16_t* p = (const uint16_t*)w.data + r * w.cols + c0;
      for (; j + 8 <= n; j += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + j)));
        _mm256_storeu_ps(out + j, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      }
      break;
    }
    case Fmt::fp8: {
      const uint8_t* p = (const uint8_t*)w.data + r * w.cols + c0;
      const uint8_t* s = w.scale + (r / 128) * cdiv(w.cols, 128);
      for (; j + 8 <= n; j += 8) {
        __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)(p + j)));
        __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                                 _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7));
        _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f * kLut.e8[s[(c0 + j) / 128]])));
      }
      break;
    }
    case Fmt::fp4: {
      const uint8_t* p = (const uint8_t*)w.data + r * (w.cols / 2) + c0 / 2;
      const uint8_t* s = w.scale + r * (w.cols / 32);
      const __m256 lo = _mm256_loadu_ps(kFp4), hi = _mm256_loadu_ps(kFp4 + 8);
      const __m256i dup = _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0);
      const __m256i shift = _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0);
      for (; j + 8 <= n; j += 8) {
        uint32_t four;
        std::memcpy(&four, p + j / 2, 4);
        __m256i b = _mm256_cvtepu8_epi32(_mm_cvtsi32_si128(int(four)));
        __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(_mm256_permutevar8x32_epi32(b, dup), shift), _mm256_set1_epi32(15));
        __m256 vlo = _mm256_permutevar8x32_ps(lo, nib), vhi = _mm256_permutevar8x32_ps(hi, nib);
        __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(nib, 28));  // bit 3 -> sign bit
        __m256 f = _mm256_blendv_ps(vlo, vhi, sel);
        _mm256_storeu_ps(out + j, _mm256_mul_ps(f, _mm256_set1_ps(kLut.e8[s[(c0 + j) / 32]])));
      }
      break;
    }
  }
  if (j < n) decode_row_scalar(w, r, c0 + j, n - j, out + j);
}

void decode_row(const WeightRef& w, long r, long c0, long n, float* out) {
  r += w.row0;
  Isa i = isa();
  if (c0 % 16 == 0 && i == Isa::avx512) return decode_row_512(w, r, c0, n, out);
  if (c0 % 16 == 0 && i == Isa::avx2) return decode_row_256(w, r, c0, n, out);
  decode_row_scalar(w, r, c0, n, out);
}


// ---- float32 → float16 (formats.ts f32ToF16Bytes: nearest, ties to even, overflow → inf, NaN → 0x7e00) ----
namespace {
uint16_t f16_from_f32_bits(uint32_t u) {
  const uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffff;
  if (a >= 0x7f800000) return uint16_t(a > 0x7f800000 ? 0x7e00 : sign | 0x7c00);
  const uint32_t exp = a >> 23, mant = a & 0x7fffff;
  if (exp >= 113) {
    uint32_t h = ((exp - 112) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return uint16_t(sign | std::min<uint32_t>(h, 0x7c00));
  }
  const uint32_t shift = 126 - exp;
  if (shift > 24) return uint16_t(sign);
  const uint32_t m = mant | 0x800000, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  uint32_t h = m >> shift;
  if (rest > half || (rest == half && (h & 1))) h++;
  return uint16_t(sign | h);
}
void f32_to_f16_any(uint16_t* out, const float* x, long n) {
  for (long i = 0; i < n; i++) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    out[i] = f16_from_f32_bits(u);
  }
}
// F16C's conversion is IEEE's nearest-even with overflow to inf; a NaN keeps its sign and payload
// there, so NaN lanes are set to the reference's 0x7e00
V4_AVX512 void f32_to_f16_512(uint16_t* out, const float* x, long n) {
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    _mm256_storeu_si256((__m256i*)(out + i), _mm256_mask_blend_epi16(nan, h, _mm256_set1_epi16(0x7e00)));
  }
  f32_to_f16_any(out + i, x + i, n - i);
}
}  // namespace

void f32_to_f16(uint16_t* out, const float* x, long n) {
  if (isa() == Isa::avx512) return f32_to_f16_512(out, x, n);
  f32_to_f16_any(out, x, n);
}

}  // namespace v4
