// merge_requant (requant.h): per row block, decode the shipped weight, add the LoRA delta in the
// order of adapter.ts `delta` (float fused multiply-adds over the rank, times scaling), then encode with the
// encoders of src/model/formats.ts ported operation for operation (nearest, ties to even,
// saturating; E8M0 scale = the smallest power of two keeping amax/scale ≤ qmax).
// test/backend/native/requant.test.ts checks the bytes against merge.ts's TypeScript path.
#pragma GCC optimize("fp-contract=off")
#include "requant.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <memory>
#include <vector>
#include "common.h"

namespace v4 {

namespace {

// formats.ts rne: round half to even of a double
inline double rne(double v) {
  double f = std::floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return std::fmod(f, 2.0) == 0 ? f : f + 1;
}
// exponent e with 2^e <= a < 2^(e+1), a > 0 finite
inline int floor_log2(double a) { return std::ilogb(a); }

// formats.ts e8m0ScaleFor
inline int e8m0_scale_for(double amax, double qmax) {
  if (!(amax > 0) || !std::isfinite(amax)) return 127;
  double r = amax / qmax;
  int e = floor_log2(r);
  if (std::ldexp(1.0, e) < r) e += 1;
  return std::min(254, std::max(0, e + 127));
}

// formats.ts fp8e4m3Encode (x a double)
inline uint8_t fp8_encode(double x) {
  if (std::isnan(x)) return 0x7f;
  int sign = std::signbit(x) ? 0x80 : 0;
  double a = std::fabs(x);
  if (a >= 448) return uint8_t(sign | 0x7e);
  double code;
  if (a < std::ldexp(1.0, -6)) {
    code = rne(a * 512);
  } else {
    int e = floor_log2(a);
    code = (e + 7) * 8 + rne((std::ldexp(a, -e) - 1) * 8);
  }
  if (code > 0x7e) code = 0x7e;
  return uint8_t(sign | int(code));
}

// formats.ts fp4e2m1Encode: the first midpoint above |x| (ties to the even code), saturating
inline uint8_t fp4_encode(double x) {
  static const double vals[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  if (std::isnan(x)) return 0;
  int sign = std::signbit(x) ? 8 : 0;
  double a = std::fabs(x);
  int code = 7;
  for (int c = 0; c < 7; c++) {
    double mid = (vals[c] + vals[c + 1]) / 2;
    if (a < mid || (a == mid && c % 2 == 0)) {
      code = c;
      break;
    }
  }
  return uint8_t(sign | code);
}

// formats.ts bf16Encode: nearest even; NaN → quiet NaN with the sign
inline uint16_t bf16_encode(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t(((u >> 16) & 0x8000u) | 0x7fc0u);
  uint32_t lsb = (u >> 16) & 1u;
  return uint16_t((u + 0x7fffu + lsb) >> 16);
}

// d[i] = fma(b, a[i], d[i]) for i < n, in float (adapter.ts `delta`: one fused multiply-add a term)
void delta_row(float* d, float b, const float* a, long n) {
  for (long i = 0; i < n; i++) d[i] = std::fmaf(b, a[i], d[i]);
}

// ---- AVX-512 paths: the same bytes as the scalar code above, element for element ----
// The encoders work on y = x·2^k in float (2^k the inverse of a power-of-two scale): y is exact
// wherever the code depends on its value (|y| ≥ 2^-126; below that every encoder gives ±0, and
// the sign survives the underflow), and the bit arithmetic below is the scalar rounding rule
// (nearest, ties to even, saturating). They were compared with fp8_encode / fp4_encode /
// bf16_encode on all 2^32 float inputs (the FP4 one on all it takes: finite, |y| ≤ 6) when
// written; test/backend/native/requant.test.ts checks the bytes.

// e4m3 codes of 16 floats (fp8_encode): NaN → 0x7f, |y| ≥ 448 → 0x7e, |y| < 2^-6 → rne(|y|·512),
// else the float's exponent and top 3 mantissa bits rounded to nearest even, capped at 0x7e.
V4_AVX512 inline __m128i fp8_encode16(__m512 y) {
  const __m512i u = _mm512_castps_si512(y);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  // normal: ((a − 120·2^23) + 0x7ffff + bit 20) >> 20 == (e + 7)·8 + rne(3-bit mantissa)
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1));
  __m512i code = _mm512_srli_epi32(_mm512_add_epi32(_mm512_sub_epi32(a, _mm512_set1_epi32(120 << 23)), _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7ffff))), 20);
  code = _mm512_min_epi32(code, _mm512_set1_epi32(0x7e));
  const __mmask16 sub = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32(0x3c800000));  // |y| < 2^-6
  const __m512 as = _mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(512.0f));
  code = _mm512_mask_mov_epi32(code, sub, _mm512_cvt_roundps_epi32(as, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(0x43e00000)), _mm512_set1_epi32(0x7e));  // ≥ 448, inf
  code = _mm512_or_si512(code, sign);
  code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epi32_mask(a, _mm512_set1_epi32(0x7f800000)), _mm512_set1_epi32(0x7f));  // NaN
  return _mm512_cvtepi32_epi8(code);
}

// e2m1 codes (fp4_encode) of 32 floats, y0 the first 16 and y1 the next, packed two a byte, low
// nibble first (16 bytes). Only for finite |y| ≤ 6, which every FP4 group scaled by its own E8M0
// scale is (fp4_encode_groups16). It works on the high 16 bits of each float with the low 16 folded
// into bit 0 — the rounding only asks whether they are zero — so each operation serves 32 values:
// |y| < 1 (e2m1's subnormals 0, 0.5, and 1.0 by rounding) is rne(2|y|), decided by two compares;
// |y| ≥ 1 is e2m1's exponent (the float's − 126) and one mantissa bit rounded to nearest even, the
// bits above bit 6 of the half rounded like fp8_encode16's; the sign becomes bit 3. Compared with
// fp4_encode on every finite float of |y| ≤ 6, both signs, when written (one FP4 expert's merge:
// 6.7 → 6.1 ms on one thread against the 16-lane encoder it replaced).
V4_AVX512 inline __m128i fp4_encode32_packed(__m512 y0, __m512 y1) {
  const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512i u0 = _mm512_castps_si512(y0), u1 = _mm512_castps_si512(y1);
  const __m512i hi = _mm512_permutex2var_epi16(u0, odd, u1);
  const __m512i lo = _mm512_permutex2var_epi16(u0, _mm512_sub_epi16(odd, _mm512_set1_epi16(1)), u1);
  const __m512i one = _mm512_set1_epi16(1);
  const __m512i h = _mm512_or_si512(hi, _mm512_maskz_mov_epi16(_mm512_test_epi16_mask(lo, lo), one));
  const __m512i a = _mm512_and_si512(h, _mm512_set1_epi16(0x7fff));
  // |y| ≥ 1: (a − 126·2^7 + 0x1f + bit 6) >> 6
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi16(a, 6), one);
  __m512i code = _mm512_srli_epi16(_mm512_add_epi16(_mm512_sub_epi16(a, _mm512_set1_epi16(0x3f00 - 0x1f)), lsb), 6);
  code = _mm512_min_epu16(code, _mm512_set1_epi16(7));
  // |y| < 1: rne(2|y|) = (|y| > 0.25) + (|y| ≥ 0.75)
  __m512i sub = _mm512_maskz_mov_epi16(_mm512_cmpgt_epu16_mask(a, _mm512_set1_epi16(0x3e80)), one);
  sub = _mm512_mask_add_epi16(sub, _mm512_cmpge_epu16_mask(a, _mm512_set1_epi16(0x3f40)), sub, one);
  code = _mm512_mask_mov_epi16(code, _mm512_cmplt_epu16_mask(a, _mm512_set1_epi16(0x3f80)), sub);
  code = _mm512_or_si512(code, _mm512_and_si512(_mm512_srli_epi16(h, 12), _mm512_set1_epi16(8)));
  const __m512i pair = _mm512_or_si512(code, _mm512_srli_epi32(code, 12));
  return _mm512_cvtepi32_epi8(_mm512_and_si512(pair, _mm512_set1_epi32(0xff)));
}

// bf16 bits of 16 floats (bf16_encode)
V4_AVX512 inline __m256i bf16_encode16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i h = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  h = _mm512_mask_mov_epi32(h, nan, _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)), _mm512_set1_epi32(0x7fc0)));
  return _mm512_cvtepi32_epi16(h);
}

// x[i][j] += scaling · d[i][j], d[i][j] = fma(B[i][r−1], A[r−1][j], … fma(B[i][0], A[0][j], 0)),
// all in float, for rows4 × 4 rows i (4 × 64 columns of sums in registers, each A vector loaded
// once for the 4 rows) — adapter.ts `delta` exactly: k in order, one fused multiply-add a term,
// then the product with scaling and the sum with x each rounded once (no contraction in this file).
// The 64-column strip is the outer loop, so its r × 64 floats of A stay in L1 for all the rows:
// Ap holds A in strips (a64_strips), each strip's r rows of 64 contiguous. Read in place, a
// strip's rows lie cols floats apart — 16 KB at 4096 columns, all in one L1 set, more lines than
// its ways — and were fetched from L2 again for every 4 rows (one FP4 expert's [2048, 4096] ΔW
// on one core, interleaved runs: 118–120 → 153–162 GFLOP/s). A zero B adds fma(0, a, d) = d
// (A finite, which the caller checks), as skipping the term does.
V4_AVX512 void delta_add_rows4_512(float* x, long rows4, long cols, const float* B, long r, const float* A, const float* Ap, float scaling) {
  const __m512 s = _mm512_set1_ps(scaling);
  long j = 0;
  for (; j + 64 <= cols; j += 64) {
    const float* strip = Ap + j * r;
    for (long q = 0; q < rows4; q++) {
      const float* b4 = B + q * 4 * r;
      __m512 acc[4][4];
      for (int i = 0; i < 4; i++)
        for (int v = 0; v < 4; v++) acc[i][v] = _mm512_setzero_ps();
      for (long k = 0; k < r; k++) {
        const float* a = strip + k * 64;
        const __m512 a0 = _mm512_loadu_ps(a), a1 = _mm512_loadu_ps(a + 16), a2 = _mm512_loadu_ps(a + 32), a3 = _mm512_loadu_ps(a + 48);
        for (int i = 0; i < 4; i++) {
          const __m512 b = _mm512_set1_ps(b4[i * r + k]);
          acc[i][0] = _mm512_fmadd_ps(b, a0, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(b, a1, acc[i][1]);
          acc[i][2] = _mm512_fmadd_ps(b, a2, acc[i][2]);
          acc[i][3] = _mm512_fmadd_ps(b, a3, acc[i][3]);
        }
      }
      for (int i = 0; i < 4; i++) {
        float* xr = x + (q * 4 + i) * cols + j;
        for (int v = 0; v < 4; v++) _mm512_storeu_ps(xr + 16 * v, _mm512_add_ps(_mm512_loadu_ps(xr + 16 * v), _mm512_mul_ps(acc[i][v], s)));
      }
    }
  }
  for (long i = 0; i < 4 * rows4 && j < cols; i++) {
    for (long c = j; c < cols; c++) {
      float d = 0;
      for (long k = 0; k < r; k++) d = std::fmaf(B[i * r + k], A[k * cols + c], d);
      x[i * cols + c] = x[i * cols + c] + d * scaling;
    }
  }
}

// A [r, cols] in strips of 64 columns, for delta_add_rows4_512: strip j/64's row k at j·r + k·64
// (the columns past the last whole strip are left out: the tail loop reads A itself)
std::vector<float> a64_strips(const float* A, long r, long cols) {
  std::vector<float> Ap(size_t(cols - cols % 64) * r);
  for (long j = 0; j + 64 <= cols; j += 64)
    for (long k = 0; k < r; k++) std::memcpy(&Ap[j * r + k * 64], A + k * cols + j, 64 * sizeof(float));
  return Ap;
}

// true when every x[0:n] is finite
V4_AVX512 bool all_finite_512(const float* x, long n) {
  long j = 0;
  __mmask16 bad = 0;
  for (; j + 16 <= n; j += 16) bad |= _mm512_fpclass_ps_mask(_mm512_loadu_ps(x + j), 0x99);  // NaN, ±inf
  if (bad) return false;
  for (; j < n; j++)
    if (!std::isfinite(x[j])) return false;
  return true;
}

V4_AVX512 float absmax_512(const float* x, long n) {
  __m512 m = _mm512_setzero_ps();
  long j = 0;
  for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
  float r = _mm512_reduce_max_ps(m);
  for (; j < n; j++) r = std::max(r, std::fabs(x[j]));
  return r;
}

// inverse of the E8M0 scale 2^(sb−127) as a float (2^−127 .. 2^127, all exact): exponent field
// 254 − sb, or the subnormal 2^−127 for sb = 254
inline float inv_scale_f(int sb) {
  const uint32_t u = sb >= 254 ? 0x00400000u : uint32_t(254 - sb) << 23;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// e8m0_scale_for on the bits: r = amax/qmax is a normal double for every float amax > 0, so
// ilogb(r) is its exponent field − 1023, and 2^e < r exactly when its mantissa is not zero
inline int e8m0_scale_for_fast(double amax, double qmax) {
  if (!(amax > 0) || !std::isfinite(amax)) return 127;
  const double r = amax / qmax;
  uint64_t u;
  std::memcpy(&u, &r, 8);
  const int e = int((u >> 52) & 0x7ff) - 1023 + ((u & 0xfffffffffffffull) != 0);
  return std::min(254, std::max(0, e + 127));
}

// 16 vectors reduced to the largest lane of each at once, by halving: 8 vectors of two inputs'
// 8-lane maxima, 4 of four inputs' 4, 2 of eight inputs' 2, one of all 16, in an interleaved lane order
V4_AVX512 inline __m512 max16_interleaved(const __m512* m) {
  __m512 h[8], q[4], e[2];
  for (int t = 0; t < 8; t++)
    h[t] = _mm512_max_ps(_mm512_shuffle_f32x4(m[2 * t], m[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(m[2 * t], m[2 * t + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int t = 0; t < 4; t++)
    q[t] = _mm512_max_ps(_mm512_shuffle_f32x4(h[2 * t], h[2 * t + 1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(h[2 * t], h[2 * t + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int t = 0; t < 2; t++)
    e[t] = _mm512_max_ps(_mm512_shuffle_ps(q[2 * t], q[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(q[2 * t], q[2 * t + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_max_ps(_mm512_shuffle_ps(e[0], e[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(e[0], e[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// lane[g]: the lane where max16_interleaved puts the maximum of its input g (found by running it
// on vectors labelled by their index)
V4_AVX512 void max16_lanes(int* lane) {
  __m512 lab[16];
  for (int g = 0; g < 16; g++) lab[g] = _mm512_set1_ps(float(g));
  alignas(64) float at[16];
  _mm512_store_ps(at, max16_interleaved(lab));
  for (int l = 0; l < 16; l++) lane[int(at[l])] = l;
}

struct Max16Order {
  alignas(64) int lane[16];
  Max16Order() { max16_lanes(lane); }
};

// lane g: the largest lane of m[g]
V4_AVX512 inline __m512 max16_transposed(const __m512* m) {
  static const Max16Order order;
  return _mm512_permutexvar_ps(_mm512_load_si512(order.lane), max16_interleaved(m));
}

// FP4 of 16 groups of 32 inputs (x[0:512], one row): the group maxima reduced together, the 16
// E8M0 scales from their bits (e8m0_scale_for_fast for qmax 6: a = m·2^f, m in [1, 2), gives
// ceil(log2(a/6)) = f − 2 + (m > 1.5), as the double division does, a/6 being a power of two
// only for m = 1.5), then each group times its inverse scale (inv_scale_f) and encoded. x is
// finite (merge_requant checks before encoding); an all-zero group gets scale 127.
V4_AVX512 inline void fp4_encode_groups16(const float* x, uint8_t* out, uint8_t* scale) {
  __m512 m[16];
  for (int g = 0; g < 16; g++)
    m[g] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + 32 * g)), _mm512_abs_ps(_mm512_loadu_ps(x + 32 * g + 16)));
  const __m512 amax = max16_transposed(m);
  const __m512i f = _mm512_cvtps_epi32(_mm512_getexp_ps(amax));
  const __mmask16 up = _mm512_cmp_ps_mask(_mm512_getmant_ps(amax, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero), _mm512_set1_ps(1.5f), _CMP_GT_OQ);
  __m512i sb = _mm512_add_epi32(f, _mm512_set1_epi32(125));
  sb = _mm512_mask_add_epi32(sb, up, sb, _mm512_set1_epi32(1));
  sb = _mm512_min_epi32(_mm512_max_epi32(sb, _mm512_setzero_si512()), _mm512_set1_epi32(254));
  sb = _mm512_mask_mov_epi32(sb, _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_EQ_OQ), _mm512_set1_epi32(127));
  _mm_storeu_si128((__m128i*)scale, _mm512_cvtepi32_epi8(sb));
  // 2^(127 − sb): exponent field 254 − sb, the subnormal 2^−127 for sb = 254
  __m512i invb = _mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(254), sb), 23);
  invb = _mm512_mask_mov_epi32(invb, _mm512_cmpeq_epi32_mask(sb, _mm512_set1_epi32(254)), _mm512_set1_epi32(0x00400000));
  const __m512 inv = _mm512_castsi512_ps(invb);
  for (int g = 0; g < 16; g++) {
    const __m512 s = _mm512_permutexvar_ps(_mm512_set1_epi32(g), inv);
    _mm_storeu_si128((__m128i*)(out + 16 * g), fp4_encode32_packed(_mm512_mul_ps(_mm512_loadu_ps(x + 32 * g), s), _mm512_mul_ps(_mm512_loadu_ps(x + 32 * g + 16), s)));
  }
}

// the encoders of one task's rows [r0, r0+n) of x (n × cols), as the scalar block below
V4_AVX512 void encode_block_512(const float* x, long n, long cols, long r0, OutFmt fmt, uint8_t* out_data, uint8_t* out_scale, long b) {
  if (fmt == OutFmt::bf16) {
    uint16_t* o = reinterpret_cast<uint16_t*>(out_data) + r0 * cols;
    long i = 0;
    for (; i + 16 <= n * cols; i += 16) _mm256_storeu_si256((__m256i*)(o + i), bf16_encode16(_mm512_loadu_ps(x + i)));
    for (; i < n * cols; i++) {
      uint16_t h = bf16_encode(x[i]);
      std::memcpy(o + i, &h, 2);
    }
  } else if (fmt == OutFmt::fp8) {
    const long sc = cdiv(cols, 128);
    for (long bj = 0; bj < sc; bj++) {
      const long j0 = bj * 128, j1 = std::min(cols, j0 + 128);
      float amax = 0;
      for (long i = 0; i < n; i++) amax = std::max(amax, absmax_512(x + i * cols + j0, j1 - j0));
      const int sb = e8m0_scale_for_fast(double(amax), 448);
      out_scale[b * sc + bj] = uint8_t(sb);
      const __m512 inv = _mm512_set1_ps(inv_scale_f(sb));
      for (long i = 0; i < n; i++) {
        const float* xr = x + i * cols;
        uint8_t* o = out_data + (r0 + i) * cols;
        long j = j0;
        for (; j + 16 <= j1; j += 16) _mm_storeu_si128((__m128i*)(o + j), fp8_encode16(_mm512_mul_ps(_mm512_loadu_ps(xr + j), inv)));
        const double invd = 1 / std::ldexp(1.0, sb - 127);
        for (; j < j1; j++) o[j] = fp8_encode(double(xr[j]) * invd);
      }
    }
  } else {
    const long groups = cols / 32;
    for (long i = 0; i < n; i++) {
      long g = 0;
      for (; g + 16 <= groups; g += 16)
        fp4_encode_groups16(x + i * cols + g * 32, out_data + (((r0 + i) * cols + g * 32) >> 1), out_scale + (r0 + i) * groups + g);
      for (; g < groups; g++) {
        const float* xg = x + i * cols + g * 32;
        const __m512 v0 = _mm512_loadu_ps(xg), v1 = _mm512_loadu_ps(xg + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const int sb = e8m0_scale_for_fast(double(amax), 6);
        out_scale[(r0 + i) * groups + g] = uint8_t(sb);
        const __m512 inv = _mm512_set1_ps(inv_scale_f(sb));
        uint8_t* o = out_data + (((r0 + i) * cols + g * 32) >> 1);
        _mm_storeu_si128((__m128i*)o, fp4_encode32_packed(_mm512_mul_ps(v0, inv), _mm512_mul_ps(v1, inv)));
      }
    }
  }
}

}  // namespace

long merge_requant(uint8_t* out_data, uint8_t* out_scale, double* bad_value, const WeightRef& W,
                   const float* A, const float* B, long r, double scaling, OutFmt fmt) {
  const long rows = W.rows, cols = W.cols;
  // a task owns whole scale blocks: 128 rows for FP8, else 16 rows
  const long RB = fmt == OutFmt::fp8 ? 128 : 16;
  const long nblk = cdiv(rows, RB);
  const bool wide = isa() == Isa::avx512;
  std::vector<long> bad(nblk, -1);
  std::vector<double> badv(nblk, 0);
  // the 4-row kernel adds every term (a zero B included), so it needs A finite
  const bool rows4 = wide && A && B && std::all_of(A, A + r * cols, [](float v) { return std::isfinite(v); });
  const float s32 = float(scaling);
  const std::vector<float> Ap = rows4 ? a64_strips(A, r, cols) : std::vector<float>();
  parallel_run(int(nblk), [&](int b) {
    const long r0 = b * RB, r1 = std::min(rows, r0 + RB), n = r1 - r0;
    std::unique_ptr<float[]> xbuf(new float[size_t(n) * cols]);  // every element is decoded into: no zero fill
    float* const x = xbuf.get();
    for (long i = r0; i < r1; i++) decode_row(W, i, 0, cols, x + (i - r0) * cols);
    if (A && B) {
      long i = r0;
      if (rows4 && n >= 4) {
        delta_add_rows4_512(x, n / 4, cols, B + r0 * r, r, A, Ap.data(), s32);
        i = r0 + 4 * (n / 4);
      }
      std::vector<float> d(i < r1 ? cols : 0);
      for (; i < r1; i++) {
        std::fill(d.begin(), d.end(), 0.0f);
        for (long k = 0; k < r; k++) {
          const float bk = B[i * r + k];
          if (bk == 0) continue;
          delta_row(d.data(), bk, A + k * cols, cols);
        }
        float* xr = x + (i - r0) * cols;
        for (long j = 0; j < cols; j++) xr[j] = xr[j] + d[j] * s32;
      }
    }
    for (long i = r0; i < r1; i++) {
      const float* xr = x + (i - r0) * cols;
      if (wide && all_finite_512(xr, cols)) continue;
      for (long j = 0; j < cols; j++) {
        if (!std::isfinite(xr[j])) {
          bad[b] = i * cols + j;
          badv[b] = xr[j];
          break;
        }
      }
      if (bad[b] >= 0) break;
    }
    if (bad[b] >= 0) return;
    if (wide) {
      encode_block_512(x, n, cols, r0, fmt, out_data, out_scale, b);
      return;
    }
    if (fmt == OutFmt::bf16) {
      uint16_t* o = reinterpret_cast<uint16_t*>(out_data) + r0 * cols;
      for (long i = 0; i < n * cols; i++) {
        uint16_t h = bf16_encode(x[i]);
        std::memcpy(o + i, &h, 2);
      }
    } else if (fmt == OutFmt::fp8) {
      const long sc = cdiv(cols, 128);
      for (long bj = 0; bj < sc; bj++) {
        const long j0 = bj * 128, j1 = std::min(cols, j0 + 128);
        double amax = 0;
        for (long i = 0; i < n; i++)
          for (long j = j0; j < j1; j++) amax = std::max(amax, double(std::fabs(x[i * cols + j])));
        const int sb = e8m0_scale_for(amax, 448);
        out_scale[b * sc + bj] = uint8_t(sb);
        const double inv = 1 / std::ldexp(1.0, sb - 127);
        for (long i = 0; i < n; i++)
          for (long j = j0; j < j1; j++) out_data[(r0 + i) * cols + j] = fp8_encode(double(x[i * cols + j]) * inv);
      }
    } else {
      const long groups = cols / 32;
      for (long i = 0; i < n; i++) {
        for (long g = 0; g < groups; g++) {
          const float* xg = x + i * cols + g * 32;
          double amax = 0;
          for (long j = 0; j < 32; j++) amax = std::max(amax, double(std::fabs(xg[j])));
          const int sb = e8m0_scale_for(amax, 6);
          out_scale[(r0 + i) * groups + g] = uint8_t(sb);
          const double inv = 1 / std::ldexp(1.0, sb - 127);
          for (long j = 0; j < 32; j += 2) {
            uint8_t lo = fp4_encode(double(xg[j]) * inv), hi = fp4_encode(double(xg[j + 1]) * inv);
            out_data[((r0 + i) * cols + g * 32 + j) >> 1] = uint8_t(lo | (hi << 4));
          }
        }
      }
    }
  });
  for (long b = 0; b < nblk; b++)
    if (bad[b] >= 0) {
      *bad_value = badv[b];
      return bad[b];
    }
  return -1;
}

}  // namespace v4
