// GPTQ on the INT4 group grid and llama.cpp's Q4_0 / Q4_K grids in float64 (see gptq.h). Every
// element gets the operations that src/export/gptq.ts gives it, in the same order: loops are
// interchanged so that the vectorised index is one the reference never sums over, and products are
// never fused into FMAs (ISO C++ mode: -ffp-contract=off; the pragma keeps it so under the target
// attributes). The TypeScript functions are the readable reference;
// test/backend/native/gptq.test.ts checks codes and Q against them.
#pragma GCC optimize("fp-contract=off")
#include "gptq.h"
#include "q4k.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <vector>
#include "common.h"

namespace v4 {

namespace {

#define V4_INLINE static inline __attribute__((always_inline))

// The factor's and the column loop's [n, n] and [rows, n] float64 buffers (128 MB each at
// n = 4096), kept between calls (common.h Shelf): a quantize runs GPTQ on hundreds of linears of
// one shape, and a fresh buffer costs its page faults (about 0.25 s per 128 MB on this VM). Two are
// out at once (the factor's reversed H + damp, later its inverse, and L).
DoubleShelf big_shelf;
// smaller scratch, up to n × 64: the Hessian's converted rows of X, the inverse's strips
DoubleShelf sums_shelf;
// `n` elements of a borrowed buffer, their values unspecified
std::vector<double>& sized(DoubleScratch& b, size_t n) {
  if (b->size() < n) b->resize(n);
  return *b;
}

// y[j] -= a·x[j], j < n (each element: one product, one subtraction)
V4_INLINE void sub_scaled_body(double* y, double a, const double* x, long n) {
  for (long j = 0; j < n; j++) y[j] -= a * x[j];
}
// y[j] += a·x[j]
V4_INLINE void add_scaled_body(double* y, double a, const double* x, long n) {
  for (long j = 0; j < n; j++) y[j] += a * x[j];
}
V4_AVX512 void sub_scaled_512(double* y, double a, const double* x, long n) { sub_scaled_body(y, a, x, n); }
V4_AVX2 void sub_scaled_256(double* y, double a, const double* x, long n) { sub_scaled_body(y, a, x, n); }
void sub_scaled_any(double* y, double a, const double* x, long n) { sub_scaled_body(y, a, x, n); }
V4_AVX512 void add_scaled_512(double* y, double a, const double* x, long n) { add_scaled_body(y, a, x, n); }
V4_AVX2 void add_scaled_256(double* y, double a, const double* x, long n) { add_scaled_body(y, a, x, n); }
void add_scaled_any(double* y, double a, const double* x, long n) { add_scaled_body(y, a, x, n); }

void sub_scaled(double* y, double a, const double* x, long n) {
  switch (isa()) {
    case Isa::avx512: return sub_scaled_512(y, a, x, n);
    case Isa::avx2: return sub_scaled_256(y, a, x, n);
    default: return sub_scaled_any(y, a, x, n);
  }
}
void add_scaled(double* y, double a, const double* x, long n) {
  switch (isa()) {
    case Isa::avx512: return add_scaled_512(y, a, x, n);
    case Isa::avx2: return add_scaled_256(y, a, x, n);
    default: return add_scaled_any(y, a, x, n);
  }
}

// ---- the int4.ts grid, bit for bit ----

// round half to even (formats.ts rne)
double rne(double v) {
  double f = std::floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return std::fmod(f, 2.0) == 0 ? f : f + 1;
}
// JavaScript's Math.round: nearest, halves toward +∞
double js_round(double x) {
  double r = std::floor(x);
  return x - r >= 0.5 ? r + 1 : r;
}
}  // namespace

// formats.ts f16Encode: through float32, then nearest-even half bits (overflow → inf)
// F16C's conversions (AVX2 and AVX-512 machines have them): round to nearest even, subnormal
// halves included, overflow to infinity, as the arithmetic below
V4_AVX2 static int f16_of_f32_hw(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
V4_AVX2 static float f32_of_f16_hw(int h) { return _cvtsh_ss(uint16_t(h)); }

int f16_encode(double x) {
  float f = float(x);
  if (std::isfinite(f) && isa() != Isa::scalar) return f16_of_f32_hw(f);
  int sign = std::signbit(f) ? 0x8000 : 0;
  double a0 = std::fabs(double(f));
  if (std::isinf(a0)) return sign | 0x7c00;
  double code;
  if (a0 < std::ldexp(1.0, -14)) {
    code = rne(a0 * std::ldexp(1.0, 24));
  } else {
    int e = std::ilogb(a0);
    code = (e + 15) * 1024 + rne((std::ldexp(a0, -e) - 1) * 1024);
  }
  if (code >= 0x7c00) code = 0x7c00;
  return sign | int(code);
}
double f16_decode(int h) {
  if (((h >> 10) & 0x1f) != 31 && isa() != Isa::scalar) return double(f32_of_f16_hw(h));  // exact either way
  double s = h & 0x8000 ? -1 : 1;
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) return s * m * std::ldexp(1.0, -24);
  if (e == 31) return m ? NAN : s * INFINITY;
  return s * (1 + m / 1024.0) * std::ldexp(1.0, e - 15);
}
namespace {

int f16_round_up(double x) {
  int h = f16_encode(x);
  if (f16_decode(h) < x) h += 1;
  return h;
}
struct Grid {
  double scale;
  int bits;
  int zero;
};
// int4.ts groupGrid
Grid group_grid(double lo, double hi) {
  double xmin = std::min(lo, 0.0), xmax = std::max(hi, 0.0);
  if (xmax == xmin) return {1.0, f16_encode(1.0), 8};
  int bits = f16_round_up((xmax - xmin) / 15);
  double scale = f16_decode(bits);
  double zero = js_round(-xmin / scale);
  if (zero < 1) {
    zero = 1;
    if (xmax > 14.5 * scale) {
      bits = f16_round_up(xmax / 14.5);
      scale = f16_decode(bits);
    }
  }
  if (zero > 15) zero = 15;
  return {scale, bits, int(zero)};
}

}  // namespace

// the lanes of the v-th 8-double vector of a row of w doubles
static inline __mmask8 lanes8(long w, int v) {
  return w - 8 * v >= 8 ? __mmask8(0xff) : w - 8 * v <= 0 ? __mmask8(0) : __mmask8((1u << (w - 8 * v)) - 1);
}

// t[r][c] (r < 4, c < w ≤ 32; t rows ldt apart) += e_r[i]·H[i][c] for i in [i0, i1) ascending,
// each product and sum rounded apart (add_scaled's arithmetic), with 4 × 32 sums in registers:
// the Cholesky's trailing update, the inverse's V Vᵀ, GPTQ's lazy batch update, the output error's
// e H. With SkipZero an e_r[i] = 0 adds nothing to row r (as the reference's `if (e == 0)
// continue`), not a ±0 product: the lazy update's weights may be −0.
// The sums are named variables (Row4), not an array: GCC 12 at -O3 kept a `__m512d acc[4][4]`
// in registers but also stored all 16 to the stack on every step of the loop, which took more
// time than the arithmetic (4.3 × slower output error at n = 4096).
namespace {
struct Row4 {
  __m512d v0, v1, v2, v3;
};
struct Mask4 {
  __mmask8 m0, m1, m2, m3;
};
V4_AVX512 inline Mask4 mask4(long w) { return {lanes8(w, 0), lanes8(w, 1), lanes8(w, 2), lanes8(w, 3)}; }
V4_AVX512 inline Row4 load_row4(const double* p, Mask4 m) {
  return {_mm512_maskz_loadu_pd(m.m0, p), _mm512_maskz_loadu_pd(m.m1, p + 8), _mm512_maskz_loadu_pd(m.m2, p + 16), _mm512_maskz_loadu_pd(m.m3, p + 24)};
}
V4_AVX512 inline void store_row4(double* p, Mask4 m, const Row4& a) {
  _mm512_mask_storeu_pd(p, m.m0, a.v0);
  _mm512_mask_storeu_pd(p + 8, m.m1, a.v1);
  _mm512_mask_storeu_pd(p + 16, m.m2, a.v2);
  _mm512_mask_storeu_pd(p + 24, m.m3, a.v3);
}
// a += e·h lane by lane where `k` is set (product, then sum)
V4_AVX512 inline void add_row4(Row4& a, __m512d e, const Row4& h, Mask4 k) {
  a.v0 = _mm512_mask_add_pd(a.v0, k.m0, a.v0, _mm512_mul_pd(e, h.v0));
  a.v1 = _mm512_mask_add_pd(a.v1, k.m1, a.v1, _mm512_mul_pd(e, h.v1));
  a.v2 = _mm512_mask_add_pd(a.v2, k.m2, a.v2, _mm512_mul_pd(e, h.v2));
  a.v3 = _mm512_mask_add_pd(a.v3, k.m3, a.v3, _mm512_mul_pd(e, h.v3));
}
V4_AVX512 inline void add_row4(Row4& a, __m512d e, const Row4& h) {
  a.v0 = _mm512_add_pd(a.v0, _mm512_mul_pd(e, h.v0));
  a.v1 = _mm512_add_pd(a.v1, _mm512_mul_pd(e, h.v1));
  a.v2 = _mm512_add_pd(a.v2, _mm512_mul_pd(e, h.v2));
  a.v3 = _mm512_add_pd(a.v3, _mm512_mul_pd(e, h.v3));
}
template <bool SkipZero>
V4_AVX512 inline void add_row4_e(Row4& a, double e, const Row4& h) {
  const __m512d ev = _mm512_set1_pd(e);
  if (SkipZero) {
    const __mmask8 nz = _mm512_cmp_pd_mask(ev, _mm512_setzero_pd(), _CMP_NEQ_UQ);
    add_row4(a, ev, h, {nz, nz, nz, nz});
  } else {
    add_row4(a, ev, h);
  }
}
}  // namespace

// Desc: i descending (i1 − 1 down to i0).
template <bool SkipZero = false, bool Desc = false>
V4_AVX512 static void tile4_512(double* t, long ldt, const double* E, long lde, const double* H, long ldh, long i0, long i1, long w) {
  const Mask4 m = mask4(w);
  Row4 a0 = load_row4(t, m), a1 = load_row4(t + ldt, m), a2 = load_row4(t + 2 * ldt, m), a3 = load_row4(t + 3 * ldt, m);
  const double *e0 = E, *e1 = E + lde, *e2 = E + 2 * lde, *e3 = E + 3 * lde;
  for (long step = 0; step < i1 - i0; step++) {
    const long i = Desc ? i1 - 1 - step : i0 + step;
    const Row4 h = load_row4(H + i * ldh, m);
    add_row4_e<SkipZero>(a0, e0[i], h);
    add_row4_e<SkipZero>(a1, e1[i], h);
    add_row4_e<SkipZero>(a2, e2[i], h);
    add_row4_e<SkipZero>(a3, e3[i], h);
  }
  store_row4(t, m, a0);
  store_row4(t + ldt, m, a1);
  store_row4(t + 2 * ldt, m, a2);
  store_row4(t + 3 * ldt, m, a3);
}

// ---- Hessian: H[i][j] += Σ_t x_t[i] x_t[j], j ≥ i ----
// Per element the rows t are added in order, as calibrate.ts does (which skips x_t[i] = 0: here
// that adds ±0 to a sum that started at +0, leaving it as it was). X's rows are converted to
// float64 TB = 256 at a time (H, 128 MiB at n = 4096, is read and written once per TB rows: 64
// rows a pass made it 20 % slower), row-major (xt), transposed (xT) and in 32-column blocks
// (xp), once for all tasks. A task owns 64
// rows i of H: with AVX-512, 4 rows × 32 columns stay in registers over the TB rows of X (tiles
// from column i + 4 on, the first row's diagonal block added row by row, so nothing below the
// diagonal is written); without it, each row one t at a time.
void gptq_hessian_accumulate(double* H, const float* X, long rows, long n, long ldx) {
  const long TB = 256, IB = 64;
  const bool wide = isa() == Isa::avx512;
  const long nb = cdiv(n, 32);
  DoubleScratch xt_lease(sums_shelf), xT_lease(sums_shelf), xp_lease(sums_shelf);
  std::vector<double>& xt = sized(xt_lease, size_t(TB) * n);  // xt[t][j]
  std::vector<double>& xT = sized(xT_lease, size_t(TB) * n);  // xT[i][t]
  // xp[b][t][c] = x_t[32b + c]: a 32-column block's rows one after another, so a tile's loop over
  // t reads memory in order (xt's rows lie n doubles apart)
  std::vector<double>& xp = sized(xp_lease, size_t(TB) * nb * 32);
  const int ntask = int(cdiv(n, IB));
  for (long t0 = 0; t0 < rows; t0 += TB) {
    const long tb = std::min(rows, t0 + TB) - t0;
    for (long t = 0; t < tb; t++)
      for (long j = 0; j < n; j++) xt[t * n + j] = xT[j * TB + t] = xp[((j >> 5) * TB + t) * 32 + (j & 31)] = double(X[(t0 + t) * ldx + j]);
    parallel_run(ntask, [&](int task) {
      const long i0 = task * IB, i1 = std::min(n, i0 + IB);
      long i = i0;
      if (wide) {
        for (; i + 4 <= i1; i += 4)
          for (long r = 0; r < 4; r++)
            for (long t = 0; t < tb; t++) add_scaled(H + (i + r) * n + i + r, xT[(i + r) * TB + t], xt.data() + t * n + i + r, 4 - r);
        // columns from the block's quads' ends on, in xp's 32-column blocks, which every quad of
        // the block shares
        for (long j = (i0 + 4) & ~31L; j < n; j += 32) {
          const long w = std::min(32L, n - j);
          const double* blk = xp.data() + (j >> 5) * TB * 32;
          for (long q = i0; q + 4 <= i1 && q + 4 < j + w; q += 4) {
            const long jq = std::max(j, q + 4), wq = j + w - jq;  // a quad's columns start at q + 4
            if (wq > 0) tile4_512(H + q * n + jq, n, xT.data() + q * TB, TB, blk + (jq - j), 32, 0, tb, wq);
          }
        }
      }
      for (; i < i1; i++)
        for (long t = 0; t < tb; t++) add_scaled(H + i * n + i, xT[i * TB + t], xt.data() + t * n + i, n - i);
    });
  }
}

// ---- Cholesky: right-looking in panels; element (i, j) gets −U[k][i]·U[k][j] for k ascending ----
bool gptq_cholesky_upper(double* U, const double* A, long n) {
  for (long i = 0; i < n; i++) {
    std::fill(U + i * n, U + i * n + i, 0.0);
    std::memcpy(U + i * n + i, A + i * n + i, sizeof(double) * (n - i));
  }
  const long KB = 32;
  for (long k0 = 0; k0 < n; k0 += KB) {
    const long k1 = std::min(n, k0 + KB);
    // the panel's rows, each updated by the panel rows above it
    for (long k = k0; k < k1; k++) {
      double s = U[k * n + k];
      if (!(s > 0)) return false;
      double dkk = std::sqrt(s);
      U[k * n + k] = dkk;
      for (long j = k + 1; j < n; j++) U[k * n + j] = U[k * n + j] / dkk;
      for (long i = k + 1; i < k1; i++) sub_scaled(U + i * n + i, U[k * n + i], U + k * n + i, n - i);
    }
    // the trailing rows i ≥ k1: the panel's updates in order k0 … k1−1. With AVX-512, 4 rows at a
    // time in 4 × 32 register tiles on the panel's negated column (x + (−a)·b is x − a·b bit for
    // bit); the tile's columns start at its first row's diagonal, so rows 2–4 get values below
    // their diagonals, which nothing reads and the end sets to 0.
    const long rest = n - k1, kp = k1 - k0;
    const long quads = isa() == Isa::avx512 ? rest / 4 : 0;
    const int ntask = int(std::min<long>(std::max(quads, rest - 4 * quads), 4L * num_threads()));
    parallel_run(ntask, [&](int task) {
      double P[4 * 32];
      for (long q = task; q < quads; q += ntask) {
        const long i = k1 + 4 * q;
        for (long r = 0; r < 4; r++)
          for (long k = k0; k < k1; k++) P[r * kp + (k - k0)] = -U[k * n + i + r];
        for (long j = i; j < n; j += 32) tile4_512(U + i * n + j, n, P, kp, U + k0 * n + j, n, 0, kp, std::min(32L, n - j));
      }
      for (long i = k1 + 4 * quads + task; i < n; i += ntask)
        for (long k = k0; k < k1; k++) sub_scaled(U + i * n + i, U[k * n + i], U + k * n + i, n - i);
    });
    check_cancel();
  }
  for (long i = 1; i < n; i++) std::fill(U + i * n, U + i * n + i, 0.0);
  return true;
}

// ---- V = U⁻¹ of an upper triangular U ----
//   V[j][j] = 1/U[j][j];  V[i][j] = −(Σ_{k=j…i+1} U[i][k]·V[k][j]) / U[i][i], k descending
// A task computes V's columns [j0, j1) in a contiguous strip, rows i from the bottom up. k runs
// descending so that four rows share one pass over the strip's rows above them (4 × 32 tiles,
// each strip row read once for the four): their last terms, k among the four, are added row by row
// once the rows below are done. Lanes j < k add U[i][k]·0 = ±0 before their own first term, to a
// +0 sum, which leaves it +0.
void gptq_upper_inverse(double* V, const double* U, long n) {
  std::fill(V, V + n * n, 0.0);
  const long JT = 64;
  const long ntiles = cdiv(n, JT);
  const bool wide = isa() == Isa::avx512;
  parallel_run(int(ntiles), [&](int tile) {
    const long j0 = tile * JT, j1 = std::min(n, j0 + JT), w = j1 - j0;
    DoubleScratch strip_lease(sums_shelf);
    std::vector<double>& strip = *strip_lease;  // strip[k][j − j0] = V[k][j]
    strip.assign(size_t(j1) * w, 0.0);
    std::vector<double> s(4 * JT);
    // row i from its partial sums s_i (the terms k > i it has): the rest of its terms in order, then V[i][·]
    const auto finish = [&](long i, double* si, long kfrom) {
      for (long k = kfrom; k > i; k--) {
        const long js = std::max(k, j0);
        add_scaled(si + (js - j0), U[i * n + k], strip.data() + k * w + (js - j0), j1 - js);
      }
      for (long j = std::max(i, j0); j < j1; j++)
        strip[i * w + (j - j0)] = j == i ? 1 / U[i * n + i] : -si[j - j0] / U[i * n + i];
    };
    long i = j1 - 1;
    if (wide) {
      for (; i >= 3; i -= 4) {
        std::fill(s.begin(), s.end(), 0.0);
        if (j1 > i + 1) {
          // rows i, i − 1, i − 2, i − 3 (U's rows −n apart): Σ over k = j1 − 1 … i + 1
          tile4_512<false, true>(s.data(), JT, U + i * n, -n, strip.data(), w, i + 1, j1, std::min(32L, w));
          if (w > 32) tile4_512<false, true>(s.data() + 32, JT, U + i * n, -n, strip.data() + 32, w, i + 1, j1, w - 32);
        }
        for (long r = 0; r < 4; r++) finish(i - r, s.data() + r * JT, i);
      }
    }
    for (; i >= 0; i--) {
      std::fill(s.begin(), s.begin() + w, 0.0);
      finish(i, s.data(), j1 - 1);
    }
    for (long k = 0; k < j1; k++)
      for (long j = j0; j < j1; j++) V[k * n + j] = strip[k * w + (j - j0)];
  });
  check_cancel();
}

// ---- the factor: dead inputs, the dampening, U = upper Cholesky factor of (H + damp)⁻¹ ----
// As gptq.ts gptqFactor: L = the upper Cholesky factor of H + damp with the index order reversed,
// U[i][j] = L⁻¹[n−1−j][n−1−i] (two n³ steps where factor, inverse, product and factor took four)
bool gptq_factor(double* U, uint8_t* dead, const double* H, long n, double damp) {
  DoubleScratch Hd_lease(big_shelf), L_lease(big_shelf);
  double mean_diag = 0;
  std::vector<double>& Hd = sized(Hd_lease, size_t(n) * n);
  for (long i = 0; i < n; i++) {
    dead[i] = H[i * n + i] == 0;
    mean_diag += dead[i] ? 1 : H[i * n + i];
  }
  const double dv = damp * (mean_diag / n);
  // Hd = J (H + damp) J, the dead diagonal 1 + damp
  parallel_run(int(cdiv(n, 64)), [&](int t) {
    for (long i = t * 64L; i < std::min(n, t * 64L + 64); i++) {
      const double* h = H + (n - 1 - i) * n;
      double* d = Hd.data() + i * n;
      for (long j = 0; j < n; j++) d[j] = h[n - 1 - j];
      const long o = n - 1 - i;
      d[i] = (dead[o] ? 1 : H[o * n + o]) + dv;
    }
  });
  std::vector<double>& L = sized(L_lease, size_t(n) * n);
  if (!gptq_cholesky_upper(L.data(), Hd.data(), n)) return false;
  gptq_upper_inverse(Hd.data(), L.data(), n);
  // U[i][j] = V[n−1−j][n−1−i] (j ≥ i), in 32 × 32 blocks
  const double* V = Hd.data();
  parallel_run(int(cdiv(n, 32)), [&](int t) {
    const long ib = t * 32L, ie = std::min(n, ib + 32);
    for (long i = ib; i < ie; i++) std::fill(U + i * n, U + i * n + i, 0.0);
    for (long jb = ib; jb < n; jb += 32)
      for (long i = ib; i < ie; i++)
        for (long j = std::max(i, jb); j < std::min(n, jb + 32); j++) U[i * n + j] = V[(n - 1 - j) * n + (n - 1 - i)];
  });
  return true;
}

// lazy batch update W[:, i2:] −= E·U[i1:i2, i2:] of W (rows, n), per element i ascending, as
// W + (−e)·U with ne = −e (rows, ldne) (the same bits: negation is exact and x + (−p) is x − p), an
// ne = 0 skipped. With AVX-512, 4 rows × 32 columns of W stay in registers over the block's i; a
// 256-column strip of U's block (256 KB) stays in the cache across the rows.
void lazy_update(double* W, long rows, long n, const double* ne, long ldne, const double* U, long i1, long i2) {
  const bool wide = isa() == Isa::avx512;
  const long JC = 256;
  for (long jc = i2; jc < n; jc += JC) {
    const long je = std::min(n, jc + JC);
    long r = 0;
    if (wide)
      for (long c = jc; c < je; c += 32)
        for (r = 0; r + 4 <= rows; r += 4)
          tile4_512<true>(W + r * n + c, n, ne + r * ldne, ldne, U + i1 * n + c, n, 0, i2 - i1, std::min(32L, je - c));
    for (; r < rows; r++) {
      for (long i = i1; i < i2; i++) {
        const double a = ne[r * ldne + (i - i1)];
        if (a == 0) continue;
        add_scaled(W + r * n + jc, a, U + i * n + jc, je - jc);
      }
    }
  }
}

// ---- the column loop ----
// gptq.ts gptqRowsFactored on any grid: Grid::fit(row, group, vals) at a group's first column
// (vals: the row's current weights of the group, float64), Grid::quant(row, column, w) → the
// quantised value (the grid keeps the code). Rows are independent: a task owns a range of them.
template <class Grid>
static void column_loop(Grid& grid, double* Q, const float* Wsrc, long r0, long r1, const double* U, const uint8_t* dead, long n, long gs) {
  const long rows = r1 - r0;
  const long B = (gs <= 128 && 128 % gs == 0) ? 128 : gs;
  DoubleScratch W_lease(big_shelf);
  std::vector<double>& W = sized(W_lease, size_t(rows) * n);
  for (long i = 0; i < rows * n; i++) W[i] = Wsrc[r0 * n + i];
  for (long i = 0; i < n; i++)
    if (dead[i])
      for (long r = 0; r < rows; r++) W[r * n + i] = 0;

  const int ntask = int(std::min<long>(rows, 4L * num_threads()));
  parallel_run(ntask, [&](int task) {
    const long ra = rows * task / ntask, rb = rows * (task + 1) / ntask;
    std::vector<double> err(size_t(rb - ra) * B);
    for (long i1 = 0; i1 < n; i1 += B) {
      const long i2 = std::min(n, i1 + B);
      for (long i = i1; i < i2; i++) {
        if (i % gs == 0)
          for (long r = ra; r < rb; r++) grid.fit(r0 + r, i / gs, W.data() + r * n + i);
        const double d = U[i * n + i];
        for (long r = ra; r < rb; r++) {
          const double wi = W[r * n + i];
          const double q = grid.quant(r0 + r, i, wi);
          Q[r * n + i] = q;
          const double e = (wi - q) / d;
          err[(r - ra) * B + (i - i1)] = -e;
          if (e == 0) continue;
          sub_scaled(W.data() + r * n + i + 1, e, U + i * n + i + 1, i2 - i - 1);
        }
      }
      lazy_update(W.data() + ra * n, rb - ra, n, err.data(), B, U, i1, i2);
    }
  });
}

namespace {

// int4.ts's grid (gptq.ts int4Quantizer)
struct Int4Grid {
  uint8_t* codes;
  float* scales;
  uint16_t* scale_bits;
  uint8_t* zeros;
  long n, gs, G;
  void fit(long r, long g, const double* v) {
    double lo = INFINITY, hi = -INFINITY;
    for (long c = 0; c < gs; c++) {
      if (v[c] < lo) lo = v[c];
      if (v[c] > hi) hi = v[c];
    }
    const Grid gr = group_grid(lo, hi);
    const long k = r * G + g;
    scales[k] = float(gr.scale);
    scale_bits[k] = uint16_t(gr.bits);
    zeros[k] = uint8_t(gr.zero);
  }
  double quant(long r, long c, double wi) const {
    const long k = r * G + c / gs;
    const double s = scales[k];
    const int z = zeros[k];
    double qc = js_round(wi / s) + z;
    qc = qc < 0 ? 0 : qc > 15 ? 15 : qc;
    codes[r * n + c] = uint8_t(qc);
    return (qc - z) * s;
  }
};

// llama.cpp's nearest_int in float32 (q4k.ts nearestInt)
inline float nearest_f(float x) { return (x + 12582912.f) - 12582912.f; }
// Math.max(0, Math.min(15, v)): NaN stays NaN, −0 becomes +0
inline double clamp15_js(double v) { return std::isnan(v) ? v : v <= 0 ? 0.0 : std::min(15.0, v); }
// a code as a Uint8Array nibble store sees it (ToInt32: NaN → 0)
inline int nibble_of(double q) { return std::isnan(q) ? 0 : int(q) & 15; }

// gptq.ts q4kQuantizer: at a super-block's start its bytes fitted as q4k.ts quantizeQ4KBlock fits
// them (q4k_block, which also gives each sub-block's step d·sc and offset dmin·m); each weight
// then code clamp(nearest((w + offset)/step)) (0 where step is 0), value step·q − offset in float64
struct Q4kGrid {
  uint8_t* dst;
  std::vector<float> step, offset;  // [(r1 − r0) · nb · 8]: rows r0 … r1−1's sub-blocks
  long r0, nb;
  Q4kGrid(uint8_t* d, long r0, long r1, long n) : dst(d), step(size_t(r1 - r0) * (n / 256) * 8), offset(step.size()), r0(r0), nb(n / 256) {}
  void fit(long r, long g, const double* v) {
    float x[256];
    for (int i = 0; i < 256; i++) x[i] = float(v[i]);
    const long b = r * nb + g, k = ((r - r0) * nb + g) * 8;
    q4k_block(x, dst + b * 144, step.data() + k, offset.data() + k);
  }
  double quant(long r, long c, double w) {
    const long b = r * nb + c / 256, i = c % 256, k = ((r - r0) * nb + c / 256) * 8 + (i >> 5);
    const float d = step[size_t(k)], off = offset[size_t(k)];
    const double q = d == 0 ? 0.0 : clamp15_js(nearest_f(float(float(w) + off) / d));
    const int within = int(i & 63);
    uint8_t& byte = dst[b * 144 + 16 + (i >> 6) * 32 + (within & 31)];
    byte = within >= 32 ? uint8_t((byte & 0x0f) | (nibble_of(q) << 4)) : uint8_t((byte & 0xf0) | nibble_of(q));
    return double(d) * q - double(off);
  }
};

// gptq.ts q4_0Quantizer: per block of 32 the scale of round to nearest (q40_block_scale), codes
// clamp(trunc(w/d + 8.5)), value (q − 8)·f16(d)
struct Q40Grid {
  uint8_t* dst;
  std::vector<float> inv, dq;  // [(r1 − r0) · nb]: rows r0 … r1−1's blocks
  long r0, nb;
  Q40Grid(uint8_t* d, long r0, long r1, long n) : dst(d), inv(size_t(r1 - r0) * (n / 32)), dq(inv.size()), r0(r0), nb(n / 32) {}
  void fit(long r, long g, const double* v) {
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = float(v[j]);
    const long b = r * nb + g, k = (r - r0) * nb + g;
    const Q40Scale sc = q40_block_scale(x, dst + b * 18, isa() == Isa::avx512);
    inv[size_t(k)] = sc.id;
    dq[size_t(k)] = float(sc.dq);
  }
  double quant(long r, long c, double w) {
    const long b = r * nb + c / 32, j = c % 32, k = (r - r0) * nb + c / 32;
    const double q = clamp15_js(std::trunc(double(float(float(w) * inv[size_t(k)]) + 8.5f)));
    uint8_t& byte = dst[b * 18 + 2 + (j & 15)];
    byte = j < 16 ? uint8_t((byte & 0xf0) | nibble_of(q)) : uint8_t((byte & 0x0f) | (nibble_of(q) << 4));
    return (q - 8) * double(dq[size_t(k)]);
  }
};

}  // namespace

void gptq_int4(uint8_t* codes, float* scales, uint16_t* scale_bits, uint8_t* zeros, double* Q,
               const float* Wsrc, long r0, long r1, const double* U, const uint8_t* dead, long n, long gs) {
  Int4Grid grid{codes, scales, scale_bits, zeros, n, gs, n / gs};
  column_loop(grid, Q, Wsrc, r0, r1, U, dead, n, gs);
}

void gptq_q4k(uint8_t* dst, double* Q, const float* W, long r0, long r1, const double* U, const uint8_t* dead, long n) {
  Q4kGrid grid(dst, r0, r1, n);
  column_loop(grid, Q, W, r0, r1, U, dead, n, 256);
}

void gptq_q40(uint8_t* dst, double* Q, const float* W, long r0, long r1, const double* U, const uint8_t* dead, long n) {
  Q40Grid grid(dst, r0, r1, n);
  column_loop(grid, Q, W, r0, r1, U, dead, n, 32);
}

// ---- tr(E H Eᵀ): per row e H eᵀ from H's upper triangle (tasks own rows; rows summed in order) ----
// Per row r, as gptq.ts outputErrorSq: t[j] = Σ_{i<j} e[i]·H[i][j] over i ascending (one product,
// one sum), then Σ_j e[j]·(H[j][j]·e[j] + 2·t[j]) over j ascending. The reference skips
// e[i] = 0; here 0·H[i][j] = ±0 is added instead, which leaves every partial sum as it was (a sum
// that starts at +0 never becomes −0, and H is finite). With AVX-512, 4 rows × 32 columns of t
// stay in registers while i runs over a block of H's rows that stays in the cache for every row
// of the task (H read from memory once per 64 rows of E); the lanes with j ≤ i of the diagonal's
// blocks are masked.
namespace {

// e H eᵀ of one row, the reference's loops
double eh_row(const double* e, const double* H, long n, std::vector<double>& tmp) {
  tmp.assign(n, 0.0);
  for (long i = 0; i < n; i++)
    if (e[i] != 0) add_scaled(tmp.data() + i + 1, e[i], H + i * n + i + 1, n - i - 1);
  double s = 0;
  for (long j = 0; j < n; j++) s += e[j] * (H[j * n + j] * e[j] + 2 * tmp[j]);
  return s;
}

// tile4_512 where lane l of the tile is column col0 + l of H and only i < col0 + l adds
V4_AVX512 void tile4_512_upper(double* t, long ldt, const double* E, long lde, const double* H, long ldh, long i0, long i1, long w, long col0) {
  const long iu = std::min(i1, col0);  // rows above the tile's first column: every lane
  if (iu > i0) tile4_512(t, ldt, E, lde, H, ldh, i0, iu, w);
  const Mask4 m = mask4(w);
  Row4 a0 = load_row4(t, m), a1 = load_row4(t + ldt, m), a2 = load_row4(t + 2 * ldt, m), a3 = load_row4(t + 3 * ldt, m);
  for (long i = std::max(i0, col0); i < i1; i++) {
    // lanes l > i − col0 − 8v of vector v add
    const auto upper = [&](long k, __mmask8 mv) { return k < 0 ? mv : k >= 7 ? __mmask8(0) : __mmask8(mv & (0xffu << (k + 1))); };
    const long k = i - col0;
    const Mask4 mi = {upper(k, m.m0), upper(k - 8, m.m1), upper(k - 16, m.m2), upper(k - 24, m.m3)};
    const Row4 h = load_row4(H + i * ldh, mi);
    add_row4(a0, _mm512_set1_pd(E[i]), h, mi);
    add_row4(a1, _mm512_set1_pd(E[lde + i]), h, mi);
    add_row4(a2, _mm512_set1_pd(E[2 * lde + i]), h, mi);
    add_row4(a3, _mm512_set1_pd(E[3 * lde + i]), h, mi);
  }
  store_row4(t, m, a0);
  store_row4(t + ldt, m, a1);
  store_row4(t + 2 * ldt, m, a2);
  store_row4(t + 3 * ldt, m, a3);
}

}  // namespace

double gptq_output_error(const double* E, const double* H, long rows, long n) {
  std::vector<double> per(rows, 0.0);
  const bool wide = isa() == Isa::avx512;
  // rows sharing each pass over H: H (128 MB at n = 4096) comes from memory once per RB rows, so
  // as many as keep every thread busy
  const long RB = !wide ? 8 : rows >= 256 * num_threads() ? 256 : 64;
  const long nblk = cdiv(rows, RB);
  parallel_run(int(nblk), [&](int b) {
    const long ra = b * RB, rb = std::min(rows, ra + RB), r4 = wide ? ra + (rb - ra) / 4 * 4 : ra;
    std::vector<double> tmp, hp;
    if (r4 > ra) {
      // t is (r4 − ra) × JB. H's rows [ib, ie) of a 32-column strip are copied into hp, contiguous
      // (32 KB: it stays in the L1 cache while every row of the task adds its part, instead of
      // rows n apart, which evict each other)
      const long JB = 256, IB = 128;
      tmp.resize(size_t(r4 - ra) * JB);
      hp.resize(size_t(IB) * 32);
      for (long jb = 0; jb < n; jb += JB) {
        const long w = std::min(JB, n - jb);
        std::fill(tmp.begin(), tmp.end(), 0.0);
        for (long ib = 0; ib < jb + w; ib += IB)
          for (long c = 0; c < w; c += 32) {
            const long cw = std::min(32L, w - c), col0 = jb + c;
            const long ie = std::min(ib + IB, col0 + cw - 1);  // the last lane's column takes rows i < it
            if (ie <= ib) continue;
            for (long i = ib; i < ie; i++) std::memcpy(hp.data() + (i - ib) * 32, H + i * n + col0, sizeof(double) * cw);
            // rows and columns shifted by ib: the lanes' i < column tests are unchanged
            for (long r = ra; r < r4; r += 4)
              tile4_512_upper(tmp.data() + (r - ra) * JB + c, JB, E + r * n + ib, n, hp.data(), 32, 0, ie - ib, cw, col0 - ib);
          }
        for (long r = ra; r < r4; r++)
          for (long j = 0; j < w; j++) {
            const double e = E[r * n + jb + j];
            per[r] += e * (H[(jb + j) * n + jb + j] * e + 2 * tmp[(r - ra) * JB + j]);
          }
      }
    }
    for (long r = r4; r < rb; r++) per[r] = eh_row(E + r * n, H, n, tmp);
  });
  double s = 0;
  for (long r = 0; r < rows; r++) s += per[r];
  return s;
}

// ---- round to nearest on the grid, with the export's error sums (int4.ts quantizeRtn, rowErrorSums) ----
namespace {

// one group of row r: codes, recon error e[c] = |w − float((q − z)·s)| (dequantizeInt4's float32)
V4_INLINE void rtn_group_body(uint8_t* codes, double* e, const float* w, long gs, double s, int z) {
  for (long c = 0; c < gs; c++) {
    const double wi = w[c];
    double qc = js_round(wi / s) + z;
    qc = qc < 0 ? 0 : qc > 15 ? 15 : qc;
    codes[c] = uint8_t(qc);
    const float recon = float((qc - z) * double(float(s)));
    e[c] = std::fabs(wi - double(recon));
  }
}
// the same operations 8 weights at a time (a division, floor, compare, add each correctly rounded
// as the scalar ones)
V4_AVX512 void rtn_group_512(uint8_t* codes, double* e, const float* w, long gs, double s, int z) {
  const __m512d vs = _mm512_set1_pd(s), vz = _mm512_set1_pd(double(z)), sf = _mm512_set1_pd(double(float(s)));
  const __m512d half = _mm512_set1_pd(0.5), one = _mm512_set1_pd(1.0), lo = _mm512_setzero_pd(), hi = _mm512_set1_pd(15.0);
  long c = 0;
  for (; c + 8 <= gs; c += 8) {
    const __m512d wi = _mm512_cvtps_pd(_mm256_loadu_ps(w + c));
    const __m512d d = _mm512_div_pd(wi, vs);
    const __m512d f = _mm512_roundscale_pd(d, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __mmask8 up = _mm512_cmp_pd_mask(_mm512_sub_pd(d, f), half, _CMP_GE_OQ);
    __m512d q = _mm512_add_pd(_mm512_mask_add_pd(f, up, f, one), vz);
    q = _mm512_min_pd(_mm512_max_pd(q, lo), hi);
    _mm_storel_epi64((__m128i*)(codes + c), _mm256_cvtepi32_epi8(_mm512_cvttpd_epi32(q)));
    const __m512d recon = _mm512_cvtps_pd(_mm512_cvtpd_ps(_mm512_mul_pd(_mm512_sub_pd(q, vz), sf)));
    _mm512_storeu_pd(e + c, _mm512_abs_pd(_mm512_sub_pd(wi, recon)));
  }
  if (c < gs) rtn_group_body(codes + c, e + c, w + c, gs - c, s, z);
}
V4_AVX2 void rtn_group_256(uint8_t* codes, double* e, const float* w, long gs, double s, int z) { rtn_group_body(codes, e, w, gs, s, z); }
void rtn_group_any(uint8_t* codes, double* e, const float* w, long gs, double s, int z) { rtn_group_body(codes, e, w, gs, s, z); }

// the first c < n with w[c] not finite, or -1
long first_nonfinite_any(const float* w, long n) {
  for (long c = 0; c < n; c++)
    if (!std::isfinite(w[c])) return c;
  return -1;
}
V4_AVX512 long first_nonfinite_512(const float* w, long n) {
  const __m512i expo = _mm512_set1_epi32(0x7f800000);
  long c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512i x = _mm512_loadu_si512(w + c);
    if (_mm512_cmpeq_epi32_mask(_mm512_and_si512(x, expo), expo)) return c + first_nonfinite_any(w + c, 16);
  }
  const long t = first_nonfinite_any(w + c, n - c);
  return t < 0 ? -1 : c + t;
}
long first_nonfinite(const float* w, long n) { return isa() == Isa::avx512 ? first_nonfinite_512(w, n) : first_nonfinite_any(w, n); }

// min and max of w[0 … n) (finite). A zero's sign may differ from the reference's first-wins
// comparisons; group_grid gives the same grid for either (it reads them through min(lo, 0),
// max(hi, 0), differences and comparisons).
void min_max_any(const float* w, long n, double& lo, double& hi) {
  lo = INFINITY;
  hi = -INFINITY;
  for (long c = 0; c < n; c++) {
    const double x = w[c];
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
}
V4_AVX512 void min_max_512(const float* w, long n, double& lo, double& hi) {
  if (n < 16) return min_max_any(w, n, lo, hi);
  __m512 a = _mm512_loadu_ps(w), b = a;
  long c = 16;
  for (; c + 16 <= n; c += 16) {
    const __m512 x = _mm512_loadu_ps(w + c);
    a = _mm512_min_ps(a, x);
    b = _mm512_max_ps(b, x);
  }
  double l = _mm512_reduce_min_ps(a), h = _mm512_reduce_max_ps(b), tl, th;
  min_max_any(w + c, n - c, tl, th);
  lo = std::min(l, tl);
  hi = std::max(h, th);
}
void min_max(const float* w, long n, double& lo, double& hi) {
  if (isa() == Isa::avx512) return min_max_512(w, n, lo, hi);
  min_max_any(w, n, lo, hi);
}

// Σ|e|, Σe², max|e|, Σw² of one row (int4.ts rowErrorSums): column c adds into lane c mod 8 in
// column order, the lanes summed as ((0+1)+(2+3))+((4+5)+(6+7))
double lanes_total(const double* l) { return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])); }
void row_sums_any(double* sums, const double* e, const float* w, long n) {
  double la[8] = {}, lq[8] = {}, lw[8] = {}, mx = 0;
  for (long c = 0; c < n; c++) {
    const double x = w[c];
    if (e[c] > mx) mx = e[c];
    la[c & 7] += e[c];
    lq[c & 7] += e[c] * e[c];
    lw[c & 7] += x * x;
  }
  sums[0] = lanes_total(la);
  sums[1] = lanes_total(lq);
  sums[2] = mx;
  sums[3] = lanes_total(lw);
}
V4_AVX512 void row_sums_512(double* sums, const double* e, const float* w, long n) {
  __m512d a = _mm512_setzero_pd(), q = a, ww = a, mx = a;
  for (long c = 0; c < n; c += 8) {
    const __mmask8 m = n - c >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - c)) - 1);
    const __m512d ev = _mm512_maskz_loadu_pd(m, e + c), wv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, w + c));
    mx = _mm512_max_pd(mx, ev);
    a = _mm512_add_pd(a, ev);  // a masked-off lane adds +0: its sum, never −0, stays as it was
    q = _mm512_add_pd(q, _mm512_mul_pd(ev, ev));
    ww = _mm512_add_pd(ww, _mm512_mul_pd(wv, wv));
  }
  double l[8];
  _mm512_storeu_pd(l, a);
  sums[0] = lanes_total(l);
  _mm512_storeu_pd(l, q);
  sums[1] = lanes_total(l);
  sums[2] = _mm512_reduce_max_pd(mx);
  _mm512_storeu_pd(l, ww);
  sums[3] = lanes_total(l);
}

// row r of W: its grid and codes, its sums; the column of its first non-finite weight, or -1.
// e: n doubles of scratch.
long rtn_row(uint8_t* codes, float* scales, uint16_t* scale_bits, uint8_t* zeros, double* sums, const float* w, long n, long gs, double* e) {
  const long bad = first_nonfinite(w, n);
  if (bad >= 0) return bad;
  const Isa i = isa();
  for (long g = 0; g < n / gs; g++) {
    const float* wg = w + g * gs;
    double lo, hi;
    min_max(wg, gs, lo, hi);
    const Grid grid = group_grid(lo, hi);
    scales[g] = float(grid.scale);
    scale_bits[g] = uint16_t(grid.bits);
    zeros[g] = uint8_t(grid.zero);
    if (i == Isa::avx512) rtn_group_512(codes + g * gs, e + g * gs, wg, gs, grid.scale, grid.zero);
    else if (i == Isa::avx2) rtn_group_256(codes + g * gs, e + g * gs, wg, gs, grid.scale, grid.zero);
    else rtn_group_any(codes + g * gs, e + g * gs, wg, gs, grid.scale, grid.zero);
  }
  if (i == Isa::avx512) row_sums_512(sums, e, w, n);
  else row_sums_any(sums, e, w, n);
  return -1;
}

}  // namespace

long find_nonfinite(const float* x, long n) { return first_nonfinite(x, n); }

void row_error_sums(double* sums, const double* e, const float* w, long n) {
  if (isa() == Isa::avx512) row_sums_512(sums, e, w, n);
  else row_sums_any(sums, e, w, n);
}

long int4_rtn(uint8_t* codes, float* scales, uint16_t* scale_bits, uint8_t* zeros, double* sums, const float* W, long out, long n, long group) {
  const long G = n / group;
  const int ntask = int(std::min<long>(out, 8L * num_threads()));
  std::vector<long> bad(size_t(std::max(ntask, 1)), -1);
  parallel_run(ntask, [&](int task) {
    const long ra = out * task / ntask, rb = out * (task + 1) / ntask;
    std::vector<double> e(static_cast<size_t>(n));
    for (long r = ra; r < rb; r++) {
      const long c = rtn_row(codes + r * n, scales + r * G, scale_bits + r * G, zeros + r * G, sums + 4 * r, W + r * n, n, group, e.data());
      if (c >= 0) {
        bad[size_t(task)] = r * n + c;
        return;
      }
    }
  });
  for (long b : bad)
    if (b >= 0) return b;  // tasks own ascending row ranges: the first is the lowest index
  return -1;
}

void int4_pack_gptq(int32_t* qweight, int32_t* qzeros, uint16_t* scales16, const uint8_t* codes, const uint8_t* zeros, const uint16_t* scale_bits, long out, long n, long group) {
  const long G = n / group, words = n / 8;
  const int ntask = int(std::min<long>(words, 8L * num_threads()));
  parallel_run(ntask, [&](int task) {
    const long wa = words * task / ntask, wb = words * (task + 1) / ntask;
    // 64 output columns at a time: their rows' 8-code runs stay in the cache across the words
    for (long j0 = 0; j0 < out; j0 += 64) {
      const long j1 = std::min(out, j0 + 64);
      for (long i8 = wa; i8 < wb; i8++) {
        int32_t* dst = qweight + i8 * out;
        for (long j = j0; j < j1; j++) {
          const uint8_t* q = codes + j * n + 8 * i8;
          uint32_t word = 0;
          for (int k = 0; k < 8; k++) word |= uint32_t(q[k] & 15) << (4 * k);
          dst[j] = int32_t(word);
        }
      }
    }
  });
  for (long g = 0; g < G; g++) {
    for (long j8 = 0; j8 < out / 8; j8++) {
      uint32_t word = 0;
      for (int k = 0; k < 8; k++) word |= uint32_t((zeros[(8 * j8 + k) * G + g] - 1) & 15) << (4 * k);
      qzeros[g * (out / 8) + j8] = int32_t(word);
    }
    for (long j = 0; j < out; j++) scales16[g * out + j] = scale_bits[j * G + g];
  }
}

}  // namespace v4
