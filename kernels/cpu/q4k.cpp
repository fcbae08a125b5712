// llama.cpp's Q4_K rounded to nearest as src/export/q4k.ts quantizeQ4_K computes it (see q4k.h):
// float32 arithmetic, every operation of the reference in its order and rounded once (no FMA
// contraction: the pragma), so the bytes are the TypeScript reference's. The sub-block fit
// (makeQkx2Quants: 21 trial grids, each refit by weighted least squares) is most of the work; its
// sums run over a sub-block's 32 weights in order, so the AVX-512 path puts one sub-block in each
// of 16 lanes (two super-blocks at once) and runs the reference's loop in every lane.
#pragma GCC optimize("fp-contract=off")
#include "q4k.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <vector>
#include "common.h"
#include "gptq.h"

namespace v4 {

namespace {

constexpr int kBlock = 256, kSub = 32, kBytes = 144, kSteps = 20;
constexpr float kNmax = 15, kRmin = -1, kRdelta = 0.1f;

// q4k.ts nearestInt: round to nearest, ties to even, through 1.5·2²³
inline float nearest_int(float x) { return (x + 12582912.f) - 12582912.f; }
// Math.max(0, Math.min(hi, v)): NaN stays NaN, −0 becomes +0
inline float clamp_js(float v, float hi) {
  if (std::isnan(v)) return v;
  if (!(v > 0)) return 0.f;
  return v > hi ? hi : v;
}
// a value stored into a Uint8Array code (NaN → 0)
inline float code_of(float v) { return std::isnan(v) ? 0.f : v; }
// Math.min(a, v): NaN when v is
inline float js_min(float a, float v) { return std::isnan(v) ? v : std::min(a, v); }
// an integer-valued float as JavaScript's bit operators take it (NaN → 0)
inline int js_int(float v) { return std::isnan(v) ? 0 : int(v); }

struct Fit {
  float scale, min;  // min: the value subtracted (≥ 0 unless the fit says otherwise)
};

// makeQkx2Quants for one sub-block of 32 (codes into L as floats 0..15)
Fit make_qkx2(const float* x, const float* w, float* L) {
  float min = x[0], max = min, sumW = w[0], sumX = sumW * min;
  for (int i = 1; i < kSub; i++) {
    const float xi = x[i];
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    sumW = sumW + w[i];
    sumX = sumX + w[i] * xi;
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < kSub; i++) L[i] = 0;
    return {0.f, -min};
  }
  const float range = max - min;
  float iscale = kNmax / range, scale = 1.f / iscale, best = 0;
  for (int i = 0; i < kSub; i++) {
    L[i] = code_of(clamp_js(nearest_int(iscale * (x[i] - min)), kNmax));
    const float diff = ((scale * L[i]) + min) - x[i];
    best = best + w[i] * (diff * diff);
  }
  float Laux[kSub];
  for (int is = 0; is <= kSteps; is++) {
    iscale = ((kRmin + kRdelta * float(is)) + kNmax) / range;
    float sumL = 0, sumL2 = 0, sumXL = 0;
    for (int i = 0; i < kSub; i++) {
      const float l = clamp_js(nearest_int(iscale * (x[i] - min)), kNmax);
      Laux[i] = code_of(l);
      const float wl = w[i] * l;
      sumL = sumL + wl;
      sumL2 = sumL2 + wl * l;
      sumXL = sumXL + wl * x[i];
    }
    const float D = sumW * sumL2 - sumL * sumL;
    if (!(D > 0)) continue;
    float thisScale = (sumW * sumXL - sumX * sumL) / D;
    float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
    if (thisMin > 0) {
      thisMin = 0;
      thisScale = sumXL / sumL2;
    }
    float err = 0;
    for (int i = 0; i < kSub; i++) {
      const float diff = ((thisScale * Laux[i]) + thisMin) - x[i];
      err = err + w[i] * (diff * diff);
    }
    if (err < best) {
      std::memcpy(L, Laux, sizeof Laux);
      best = err;
      scale = thisScale;
      min = thisMin;
    }
  }
  return {scale, -min};
}

// the fit's weights of one sub-block: av_x + |x|, av_x its RMS
void fit_weights(const float* x, float* w) {
  float sumX2 = 0;
  for (int i = 0; i < kSub; i++) sumX2 = sumX2 + x[i] * x[i];
  const float avX = std::sqrt(sumX2 / float(kSub));
  for (int i = 0; i < kSub; i++) w[i] = avX + std::fabs(x[i]);
}

// the 8 sub-block fits of `nb` super-blocks (scalar): codes L (nb·256), scales and mins (nb·8)
void fits_any(const float* x, long nb, float* L, float* scales, float* mins) {
  float w[kSub];
  for (long s = 0; s < nb * 8; s++) {
    fit_weights(x + s * kSub, w);
    const Fit f = make_qkx2(x + s * kSub, w, L + s * kSub);
    scales[s] = f.scale;
    mins[s] = f.min;
  }
}

// the same, 16 sub-blocks (lanes) at a time: lane k runs make_qkx2 on sub-block k
V4_AVX512 void fits_512(const float* x, long nb, float* L, float* scales, float* mins) {
  const long subs = nb * 8;
  for (long s0 = 0; s0 < subs; s0 += 16) {
    const int live = int(std::min<long>(16, subs - s0));
    const __mmask16 m = __mmask16((1u << live) - 1);
    // xt[i] lane k = x of sub-block s0 + k, element i
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(kSub));
    __m512 X[kSub], W[kSub], Lb[kSub], La[kSub];
    const float* base = x + s0 * kSub;
    for (int i = 0; i < kSub; i++) X[i] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, base + i, 4);
    const __m512 zero = _mm512_setzero_ps(), nmax = _mm512_set1_ps(kNmax), magic = _mm512_set1_ps(12582912.f);
    const __m512 absMask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    auto nearest = [&](__m512 v) { return _mm512_sub_ps(_mm512_add_ps(v, magic), magic); };
    // clamp_js: max(min(v, 15), 0) gives +0 for −0; NaN lanes kept NaN (sums) or 0 (codes)
    auto clampv = [&](__m512 v, __m512& code) {
      const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      const __m512 c = _mm512_max_ps(_mm512_min_ps(v, nmax), zero);
      code = _mm512_mask_blend_ps(nan, c, zero);
      return _mm512_mask_blend_ps(nan, c, v);
    };
    __m512 sumX2 = zero;
    for (int i = 0; i < kSub; i++) sumX2 = _mm512_add_ps(sumX2, _mm512_mul_ps(X[i], X[i]));
    const __m512 avX = _mm512_sqrt_ps(_mm512_div_ps(sumX2, _mm512_set1_ps(float(kSub))));
    for (int i = 0; i < kSub; i++) W[i] = _mm512_add_ps(avX, _mm512_and_ps(X[i], absMask));
    __m512 mn = X[0], mx = X[0], sumW = W[0], sumX = _mm512_mul_ps(W[0], X[0]);
    for (int i = 1; i < kSub; i++) {
      mn = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(X[i], mn, _CMP_LT_OQ), mn, X[i]);
      mx = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(X[i], mx, _CMP_GT_OQ), mx, X[i]);
      sumW = _mm512_add_ps(sumW, W[i]);
      sumX = _mm512_add_ps(sumX, _mm512_mul_ps(W[i], X[i]));
    }
    mn = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mn, zero, _CMP_GT_OQ), mn, zero);
    const __mmask16 flat = _mm512_cmp_ps_mask(mx, mn, _CMP_EQ_OQ);
    const __m512 flatMin = mn;
    const __m512 range = _mm512_sub_ps(mx, mn);
    __m512 iscale = _mm512_div_ps(nmax, range);
    __m512 scale = _mm512_div_ps(_mm512_set1_ps(1.f), iscale), best = zero;
    for (int i = 0; i < kSub; i++) {
      clampv(nearest(_mm512_mul_ps(iscale, _mm512_sub_ps(X[i], mn))), Lb[i]);
      const __m512 diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(scale, Lb[i]), mn), X[i]);
      best = _mm512_add_ps(best, _mm512_mul_ps(W[i], _mm512_mul_ps(diff, diff)));
    }
    for (int is = 0; is <= kSteps; is++) {
      const __m512 it = _mm512_div_ps(_mm512_set1_ps((kRmin + kRdelta * float(is)) + kNmax), range);
      __m512 sumL = zero, sumL2 = zero, sumXL = zero;
      for (int i = 0; i < kSub; i++) {
        const __m512 l = clampv(nearest(_mm512_mul_ps(it, _mm512_sub_ps(X[i], mn))), La[i]);
        const __m512 wl = _mm512_mul_ps(W[i], l);
        sumL = _mm512_add_ps(sumL, wl);
        sumL2 = _mm512_add_ps(sumL2, _mm512_mul_ps(wl, l));
        sumXL = _mm512_add_ps(sumXL, _mm512_mul_ps(wl, X[i]));
      }
      const __m512 D = _mm512_sub_ps(_mm512_mul_ps(sumW, sumL2), _mm512_mul_ps(sumL, sumL));
      const __mmask16 ok = _mm512_cmp_ps_mask(D, zero, _CMP_GT_OQ);
      if (!ok) continue;
      __m512 ts = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sumW, sumXL), _mm512_mul_ps(sumX, sumL)), D);
      __m512 tm = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sumL2, sumX), _mm512_mul_ps(sumL, sumXL)), D);
      const __mmask16 pos = _mm512_cmp_ps_mask(tm, zero, _CMP_GT_OQ);
      tm = _mm512_mask_blend_ps(pos, tm, zero);
      ts = _mm512_mask_blend_ps(pos, ts, _mm512_div_ps(sumXL, sumL2));
      __m512 err = zero;
      for (int i = 0; i < kSub; i++) {
        const __m512 diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(ts, La[i]), tm), X[i]);
        err = _mm512_add_ps(err, _mm512_mul_ps(W[i], _mm512_mul_ps(diff, diff)));
      }
      const __mmask16 better = ok & _mm512_cmp_ps_mask(err, best, _CMP_LT_OQ);
      if (!better) continue;
      for (int i = 0; i < kSub; i++) Lb[i] = _mm512_mask_blend_ps(better, Lb[i], La[i]);
      best = _mm512_mask_blend_ps(better, best, err);
      scale = _mm512_mask_blend_ps(better, scale, ts);
      mn = _mm512_mask_blend_ps(better, mn, tm);
    }
    // flat sub-blocks: codes 0, scale 0, min the clamped minimum
    for (int i = 0; i < kSub; i++) Lb[i] = _mm512_mask_blend_ps(flat, Lb[i], zero);
    scale = _mm512_mask_blend_ps(flat, scale, zero);
    mn = _mm512_mask_blend_ps(flat, mn, flatMin);
    float lt[kSub][16], sc[16], mi[16];
    for (int i = 0; i < kSub; i++) _mm512_storeu_ps(lt[i], Lb[i]);
    _mm512_storeu_ps(sc, scale);
    _mm512_storeu_ps(mi, mn);
    for (int k = 0; k < live; k++) {
      for (int i = 0; i < kSub; i++) L[(s0 + k) * kSub + i] = lt[i][k];
      scales[s0 + k] = sc[k];
      mins[s0 + k] = -mi[k];
    }
  }
}

// finish_block's per-weight step for one sub-block, 16 lanes at a time, every operation the
// scalar loop's: the code min(15, max(0, nearest((x + offset) / step))) with NaN → 0 (kept from
// the fit when step is 0), then float(double(step)·double(code) − double(offset))
V4_AVX512 static void finish_sub_512(const float* x, float* L, float* recon, float step, float offset) {
  const __m512 vs = _mm512_set1_ps(step), vo = _mm512_set1_ps(offset), magic = _mm512_set1_ps(12582912.f);
  const __m512d ds = _mm512_set1_pd(double(step)), dof = _mm512_set1_pd(double(offset));
  for (int i = 0; i < kSub; i += 16) {
    __m512 code = _mm512_loadu_ps(L + i);
    if (step != 0) {
      const __m512 v = _mm512_div_ps(_mm512_add_ps(_mm512_loadu_ps(x + i), vo), vs);
      const __m512 n = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
      // n > 0 is false for NaN and ±0: those give 0, as clamp_js then code_of do
      code = _mm512_maskz_min_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_GT_OQ), n, _mm512_set1_ps(15.f));
      _mm512_storeu_ps(L + i, code);
    }
    const __m512d lo = _mm512_sub_pd(_mm512_mul_pd(ds, _mm512_cvtps_pd(_mm512_castps512_ps256(code))), dof);
    const __m512d hi = _mm512_sub_pd(_mm512_mul_pd(ds, _mm512_cvtps_pd(_mm512_extractf32x8_ps(code, 1))), dof);
    _mm512_storeu_ps(recon + i, _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1));
  }
}

// one super-block from its sub-block fits: d, dmin, the 6-bit scales, the codes on the final grid
// (into dst), and the dequantised values (recon: q4k.ts dequantizeQ4_K's float32 values)
void finish_block(const float* x, float* L, const float* scales, const float* mins, uint8_t* dst, float* recon, bool wide,
                  float* steps = nullptr, float* offsets = nullptr) {
  float maxScale = 0, maxMin = 0;
  for (int j = 0; j < 8; j++) {
    if (scales[j] > maxScale) maxScale = scales[j];
    if (mins[j] > maxMin) maxMin = mins[j];
  }
  std::memset(dst, 0, kBytes);
  const float invScale = maxScale > 0 ? 63.f / maxScale : 0.f, invMin = maxMin > 0 ? 63.f / maxMin : 0.f;
  uint8_t* q = dst + 4;
  for (int j = 0; j < 8; j++) {
    const int ls = js_int(js_min(63.f, nearest_int(invScale * scales[j]))), lm = js_int(js_min(63.f, nearest_int(invMin * mins[j])));
    if (j < 4) {
      q[j] = uint8_t(q[j] | ls);
      q[j + 4] = uint8_t(q[j + 4] | lm);
    } else {
      q[j + 4] = uint8_t((ls & 0xf) | ((lm & 0xf) << 4));
      q[j - 4] = uint8_t(q[j - 4] | (uint32_t(ls >> 4) << 6));
      q[j] = uint8_t(q[j] | (uint32_t(lm >> 4) << 6));
    }
  }
  const int hd = f16_encode(maxScale / 63.f), hm = f16_encode(maxMin / 63.f);
  dst[0] = uint8_t(hd & 0xff);
  dst[1] = uint8_t(hd >> 8);
  dst[2] = uint8_t(hm & 0xff);
  dst[3] = uint8_t(hm >> 8);
  const double d = f16_decode(hd), dmin = f16_decode(hm);
  for (int j = 0; j < 8; j++) {
    int sc, m;
    if (j < 4) {
      sc = q[j] & 63;
      m = q[j + 4] & 63;
    } else {
      sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
      m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
    const float step = float(d * sc), offset = float(dmin * m);
    if (steps) steps[j] = step, offsets[j] = offset;
    if (wide) {
      finish_sub_512(x + kSub * j, L + kSub * j, recon + kSub * j, step, offset);
      continue;
    }
    for (int i = kSub * j; i < kSub * (j + 1); i++) {
      if (step != 0) L[i] = code_of(clamp_js(nearest_int((x[i] + offset) / step), 15.f));
      recon[i] = float(double(step) * double(L[i]) - double(offset));
    }
  }
  for (int i = 0; i < kBlock; i++) {
    const int within = i & 63, byte = 16 + (i >> 6) * 32 + (within & 31);
    dst[byte] = uint8_t(dst[byte] | (within >= 32 ? int(L[i]) << 4 : int(L[i])));
  }
}

}  // namespace

// The row loop of every block type: rows split across the pool, each checked for non-finite
// weights, then row(x, r, e) writes row r's blocks and its errors |x − x̂| (n doubles), then the
// row's error sums (gptq.h row_error_sums). make_row() gives each task its own row functor (and
// scratch). Returns the first non-finite weight's row-major index, or -1.
template <class MakeRow>
static long rows_rtn(double* sums, const float* W, long rows, long n, const MakeRow& make_row) {
  const int ntask = int(std::min<long>(rows, 8L * num_threads()));
  std::vector<long> bad(size_t(std::max(ntask, 1)), -1);
  parallel_run(ntask, [&](int task) {
    std::vector<double> e(static_cast<size_t>(n));
    auto row = make_row();
    for (long r = task * rows / ntask; r < (task + 1) * rows / ntask; r++) {
      const float* x = W + r * n;
      const long c = find_nonfinite(x, n);
      if (c >= 0) {
        bad[size_t(task)] = r * n + c;
        return;
      }
      row(x, r, e.data());
      row_error_sums(sums + 4 * r, e.data(), x, n);
    }
  });
  for (long b : bad)
    if (b >= 0) return b;
  return -1;
}

void q4k_block(const float* x, uint8_t* dst, float* step, float* offset) {
  float L[kBlock], sc[8], mi[8], recon[kBlock];
  const bool wide = isa() == Isa::avx512;
  if (wide) fits_512(x, 1, L, sc, mi);
  else fits_any(x, 1, L, sc, mi);
  finish_block(x, L, sc, mi, dst, recon, wide, step, offset);
}

long q4k_rtn(uint8_t* dst, double* sums, const float* W, long rows, long n) {
  const long nb = n / kBlock;
  const bool wide = isa() == Isa::avx512;
  return rows_rtn(sums, W, rows, n, [&] {
    const size_t fits = size_t(nb) * 8;
    return [=, L = std::vector<float>(size_t(n)), sc = std::vector<float>(fits), mi = std::vector<float>(fits),
            recon = std::vector<float>(size_t(n))](const float* x, long r, double* e) mutable {
      if (wide) fits_512(x, nb, L.data(), sc.data(), mi.data());
      else fits_any(x, nb, L.data(), sc.data(), mi.data());
      for (long b = 0; b < nb; b++)
        finish_block(x + b * kBlock, L.data() + b * kBlock, sc.data() + b * 8, mi.data() + b * 8, dst + (r * nb + b) * kBytes, recon.data() + b * kBlock, wide);
      for (long c = 0; c < n; c++) e[c] = std::fabs(double(x[c]) - double(recon[size_t(c)]));
    };
  });
}

// JavaScript's ToInt32 (what `|`, `<<` and `&` see), as its 32 bits: NaN and ±Infinity become 0,
// anything else its truncation modulo 2^32 (a block of subnormal weights makes 1/d overflow, so
// the codes' inputs can be ±Infinity or NaN there)
static uint32_t js_int32(double t) {
  if (t > -2147483649.0 && t < 2147483648.0) return uint32_t(int32_t(t));  // in int32 range: the truncation itself
  if (!std::isfinite(t)) return 0;
  double m = std::fmod(std::trunc(t), 4294967296.0);
  if (m < 0) m += 4294967296.0;
  return uint32_t(m);
}
// Q4_0's Math.min(15, Math.trunc(v)) (Math.min keeps a NaN, which ToInt32 then makes 0)
static uint32_t js_code(float v) { return std::isnan(v) ? 0 : js_int32(std::min(15.0, std::trunc(double(v)))); }

// The 32-weight block types: block(xb, dst, e) writes one block's bytes and its 32 errors
template <class Block>
static long blocks32_rtn(uint8_t* dst, double* sums, const float* W, long rows, long n, long bytes, const Block& block) {
  const long nb = n / 32;
  return rows_rtn(sums, W, rows, n, [&] {
    return [&](const float* x, long r, double* e) {
      for (long b = 0; b < nb; b++) block(x + b * 32, dst + (r * nb + b) * bytes, e + b * 32);
    };
  });
}

// A block's 32 errors |x − x̂| with x̂ = float(double(code + bias)·dq), from its codes as int32
// (two registers of 16): the scalar loops' operations, 8 doubles at a time
V4_AVX512 static void block_errors_512(double* e, const float* xb, const __m512i (&codes)[2], int bias, double dq) {
  const __m512d vdq = _mm512_set1_pd(dq), vb = _mm512_set1_pd(double(bias));
  for (int h = 0; h < 2; h++)
    for (int q = 0; q < 2; q++) {
      const __m256i c = q ? _mm512_extracti64x4_epi64(codes[h], 1) : _mm512_castsi512_si256(codes[h]);
      const __m512d xh = _mm512_cvtps_pd(_mm256_loadu_ps(xb + 16 * h + 8 * q));
      const __m512d rec = _mm512_cvtps_pd(_mm512_cvtpd_ps(_mm512_mul_pd(_mm512_add_pd(_mm512_cvtepi32_pd(c), vb), vdq)));
      _mm512_storeu_pd(e + 16 * h + 8 * q, _mm512_abs_pd(_mm512_sub_pd(xh, rec)));
    }
}

// max |x| over a block of 32 (max is exact: any order gives the scalar loop's value)
V4_AVX512 static float amax32_512(const float* xb) {
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb)), _mm512_abs_ps(_mm512_loadu_ps(xb + 16))));
}

// Q4_0's codes min(15, trunc(x·id + 8.5)), packed two to a byte, and the errors, for a block
// whose id is finite; false (nothing written) if a code would be negative, which the scalar
// loop's ToInt32 arithmetic then handles
V4_AVX512 static bool q40_codes_512(const float* xb, float id, double dq, uint8_t* bytes, double* e) {
  __m512i codes[2];
  for (int h = 0; h < 2; h++) {
    const __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * h), _mm512_set1_ps(id)), _mm512_set1_ps(8.5f));
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    if (_mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_LT_OQ)) return false;
    codes[h] = _mm512_cvttps_epi32(_mm512_min_ps(t, _mm512_set1_ps(15.f)));
  }
  _mm_storeu_si128((__m128i*)bytes, _mm512_cvtepi32_epi8(_mm512_or_si512(codes[0], _mm512_slli_epi32(codes[1], 4))));
  block_errors_512(e, xb, codes, -8, dq);
  return true;
}

// Q8_0's codes sign(v)·floor(|v| + 0.5), v = x·id (floor(a + 0.5) = trunc(a) + (a − trunc(a) ≥ ½),
// exact in float32), as int8, and the errors, for a block whose id is finite; false if a code
// would leave −127 … 127 (the scalar loop's ToInt32 wraps it)
V4_AVX512 static bool q80_codes_512(const float* xb, float id, double dq, uint8_t* bytes, double* e) {
  __m512i codes[2];
  for (int h = 0; h < 2; h++) {
    const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xb + 16 * h), _mm512_set1_ps(id));
    const __m512 a = _mm512_abs_ps(v), t = _mm512_roundscale_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_mask_add_ps(t, _mm512_cmp_ps_mask(_mm512_sub_ps(a, t), _mm512_set1_ps(0.5f), _CMP_GE_OQ), t, _mm512_set1_ps(1.f));
    if (_mm512_cmp_ps_mask(r, _mm512_set1_ps(127.f), _CMP_GT_OQ)) return false;
    const __m512i mag = _mm512_cvttps_epi32(r);
    codes[h] = _mm512_mask_sub_epi32(mag, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_si512(), mag);
  }
  _mm_storeu_si128((__m128i*)bytes, _mm512_cvtepi32_epi8(codes[0]));
  _mm_storeu_si128((__m128i*)(bytes + 16), _mm512_cvtepi32_epi8(codes[1]));
  block_errors_512(e, xb, codes, 0, dq);
  return true;
}

// Q4_0 (gguf.ts quantizeQ4_0, llama.cpp's quantize_row_q4_0_ref): per block of 32, m = the value
// of largest magnitude, d = m / −8, id = 1/d, q = min(15, trunc(x·id + 8.5)), all in float32 and
// rounded once each; the dequantised value (q − 8)·f16(d) as gguf.ts dequantizeQ4_0 rounds it
Q40Scale q40_block_scale(const float* xb, uint8_t* p, bool wide) {
  float amax = 0.f, mx = 0.f;
  if (wide) {  // the first weight of the largest magnitude, as the scalar loop's strict < keeps it
    amax = amax32_512(xb);
    for (int j = 0; j < 32 && amax > 0.f; j++)
      if (std::fabs(xb[j]) == amax) {
        mx = xb[j];
        break;
      }
  } else {
    for (int j = 0; j < 32; j++)
      if (amax < std::fabs(xb[j])) amax = std::fabs(xb[j]), mx = xb[j];
  }
  const float d = mx / -8.f;
  const int h = f16_encode(double(d));
  p[0] = uint8_t(h & 0xff);
  p[1] = uint8_t(h >> 8);
  return {d != 0.f ? 1.f / d : 0.f, f16_decode(h)};
}

long q40_rtn(uint8_t* dst, double* sums, const float* W, long rows, long n) {
  const bool wide = isa() == Isa::avx512;
  return blocks32_rtn(dst, sums, W, rows, n, 18, [wide](const float* xb, uint8_t* p, double* e) {
    const Q40Scale sc = q40_block_scale(xb, p, wide);
    const float id = sc.id;
    const double dq = sc.dq;
    if (wide && std::isfinite(id) && q40_codes_512(xb, id, dq, p + 2, e)) return;
    uint32_t q[32];
    for (int j = 0; j < 32; j++) q[j] = js_code(xb[j] * id + 8.5f);
    for (int j = 0; j < 16; j++) p[2 + j] = uint8_t(q[j] | (q[j + 16] << 4));
    // dequantizeQ4_0 reads the codes back from the bytes' nibbles
    for (int j = 0; j < 32; j++) {
      const int code = j < 16 ? p[2 + j] & 15 : p[2 + j - 16] >> 4;
      e[j] = std::fabs(double(xb[j]) - double(float(double(code - 8) * dq)));
    }
  });
}

// Q8_0 (ggml-quants.ts quantizeQ8_0): per block of 32, d = amax / 127, id = 1/d, q = roundf(x·id)
// as an int8, in float32; the dequantised value q·f16(d) as dequantizeQ8_0 rounds it
long q80_rtn(uint8_t* dst, double* sums, const float* W, long rows, long n) {
  const bool wide = isa() == Isa::avx512;
  return blocks32_rtn(dst, sums, W, rows, n, 34, [wide](const float* xb, uint8_t* p, double* e) {
    float amax = 0.f;
    if (wide) amax = amax32_512(xb);
    else
      for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    const int h = f16_encode(double(d));
    const double dq = f16_decode(h);
    p[0] = uint8_t(h & 0xff);
    p[1] = uint8_t(h >> 8);
    if (wide && std::isfinite(id) && q80_codes_512(xb, id, dq, p + 2, e)) return;
    for (int j = 0; j < 32; j++) {
      const float v = xb[j] * id;
      // Math.sign(v) · Math.round(|v|): half away from zero; ±0 and NaN give 0
      const double q = std::isnan(v) || v == 0.f ? 0.0 : std::copysign(std::floor(double(std::fabs(v)) + 0.5), double(v));
      p[2 + j] = uint8_t(js_int32(q) & 0xff);
      e[j] = std::fabs(double(xb[j]) - double(float(double(int8_t(p[2 + j])) * dq)));
    }
  });
}

}  // namespace v4
