// merge_requant (requant.h): per row block, decode the shipped weight, add the LoRA delta in the
// order of adapter.ts `delta` (f32 accumulator, products in double), then encode with the
// encoders of src/model/formats.ts ported operation for operation (nearest, ties to even,
// saturating; E8M0 scale = the smallest power of two keeping amax/scale ≤ qmax).
// test/native/requant.test.ts checks the bytes against merge.ts's TypeScript path.
#pragma GCC optimize("fp-contract=off")
#include "requant.h"
#include <algorithm>
#include <cmath>
#include <cstring>
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

// d[i] = f32(d[i] + b·a[i]) for i < n (adapter.ts delta: a double product rounded into f32)
static inline __attribute__((always_inline))
void delta_row_body(float* d, double b, const float* a, long n) {
  for (long i = 0; i < n; i++) d[i] = float(double(d[i]) + b * double(a[i]));
}
V4_AVX512 void delta_row_512(float* d, double b, const float* a, long n) { delta_row_body(d, b, a, n); }
void delta_row_any(float* d, double b, const float* a, long n) { delta_row_body(d, b, a, n); }
void delta_row(float* d, double b, const float* a, long n) {
  if (isa() == Isa::avx512) delta_row_512(d, b, a, n);
  else delta_row_any(d, b, a, n);
}

}  // namespace

long merge_requant(uint8_t* out_data, uint8_t* out_scale, double* bad_value, const WeightRef& W,
                   const float* A, const float* B, long r, double scaling, OutFmt fmt) {
  const long rows = W.rows, cols = W.cols;
  // a task owns whole scale blocks: 128 rows for FP8, else 16 rows
  const long RB = fmt == OutFmt::fp8 ? 128 : 16;
  const long nblk = cdiv(rows, RB);
  std::vector<long> bad(nblk, -1);
  std::vector<double> badv(nblk, 0);
  parallel_run(int(nblk), [&](int b) {
    const long r0 = b * RB, r1 = std::min(rows, r0 + RB), n = r1 - r0;
    std::vector<float> x(size_t(n) * cols), d(cols);
    for (long i = r0; i < r1; i++) {
      float* xr = x.data() + (i - r0) * cols;
      decode_row(W, i, 0, cols, xr);
      if (A && B) {
        std::fill(d.begin(), d.end(), 0.0f);
        for (long k = 0; k < r; k++) {
          const double bk = double(B[i * r + k]) * scaling;
          if (bk == 0) continue;
          delta_row(d.data(), bk, A + k * cols, cols);
        }
        for (long j = 0; j < cols; j++) xr[j] = xr[j] + d[j];
      }
      for (long j = 0; j < cols; j++) {
        if (!std::isfinite(xr[j])) {
          if (bad[b] < 0) {
            bad[b] = i * cols + j;
            badv[b] = xr[j];
          }
          break;
        }
      }
    }
    if (bad[b] >= 0) return;
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
          const float* xg = x.data() + i * cols + g * 32;
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
