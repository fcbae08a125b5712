// mHC pre/post and the Sinkhorn projection. Tokens are independent: every loop splits over T.
// The AVX-512 paths give the scalar path's bits: no product is fused into an FMA that the
// scalar code does not spell (ISO C++ mode: -ffp-contract=off; the pragma keeps it so inside
// the target attributes, where the scalar helpers get inlined).
#pragma GCC optimize("fp-contract=off")
#include "mhc.h"
#include "common.h"
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace v4 {

static inline float sigm(float v) { return 1.f / (1.f + std::exp(-v)); }

// The softmax rows that open the projection, and their backward: plain functions (built
// without FMA), so the scalar reference and the AVX-512 path below round them alike.
static void softmax_rows(float* C, const float* L, int n, float eps) {
  for (int i = 0; i < n; i++) {
    float m = -INFINITY, z = 0.f;
    for (int j = 0; j < n; j++) m = std::fmax(m, L[i * n + j]);
    for (int j = 0; j < n; j++) z += (C[i * n + j] = std::exp(L[i * n + j] - m));
    for (int j = 0; j < n; j++) C[i * n + j] = C[i * n + j] / z + eps;
  }
}
// dL += p ⊙ (g − Σ_row g·p) row by row, p the rows' softmax (n ≤ kMaxHc)
constexpr int kMaxHc = 16;
static void softmax_rows_backward(float* dL, const float* g, const float* L, int n) {
  for (int i = 0; i < n; i++) {
    float m = -INFINITY, z = 0.f, gp = 0.f, ps[kMaxHc];
    std::vector<float> ph(n > kMaxHc ? n : 0);
    float* p = n > kMaxHc ? ph.data() : ps;
    for (int j = 0; j < n; j++) m = std::fmax(m, L[i * n + j]);
    for (int j = 0; j < n; j++) z += (p[j] = std::exp(L[i * n + j] - m));
    for (int j = 0; j < n; j++) p[j] /= z, gp += g[i * n + j] * p[j];
    for (int j = 0; j < n; j++) dL[i * n + j] += p[j] * (g[i * n + j] - gp);
  }
}

// stages: softmax+eps, then 2·iters−1 normalisations (col, then row/col pairs); `trace`
// receives the input of each normalisation (n·n each) when not null.
static void sinkhorn_run(float* C, const float* L, int n, int iters, float eps, float* trace) {
  softmax_rows(C, L, n, eps);
  int stages = 2 * iters - 1;
  for (int st = 0; st < stages; st++) {
    bool cols = st % 2 == 0;
    if (trace) std::copy(C, C + n * n, trace + st * n * n);
    for (int a = 0; a < n; a++) {
      float s = 0.f;
      for (int b = 0; b < n; b++) s += cols ? C[b * n + a] : C[a * n + b];
      for (int b = 0; b < n; b++) (cols ? C[b * n + a] : C[a * n + b]) /= (s + eps);
    }
  }
}
void sinkhorn_forward(float* C, const float* L, int n, int iters, float eps) { sinkhorn_run(C, L, n, iters, eps, nullptr); }

// in the forward pass each normalisation was c_ab = a_ab / (S + eps), S the line sum; so
//   da_ab = (dc_ab − Σ_line dc·c) / (S + eps); the softmax rows give dL = p (dS − Σ_row dS·p)
void sinkhorn_backward(float* dL, const float* dC, const float* L, int n, int iters, float eps) {
  int stages = 2 * iters - 1;
  std::vector<float> trace(stages * n * n), C(n * n), g(dC, dC + n * n);
  sinkhorn_run(C.data(), L, n, iters, eps, trace.data());
  for (int st = stages - 1; st >= 0; st--) {
    bool cols = st % 2 == 0;
    const float* A = &trace[st * n * n];
    for (int a = 0; a < n; a++) {
      float S = 0.f, gc = 0.f;
      for (int b = 0; b < n; b++) S += cols ? A[b * n + a] : A[a * n + b];
      for (int b = 0; b < n; b++) {
        int ix = cols ? b * n + a : a * n + b;
        gc += g[ix] * A[ix] / (S + eps);
      }
      for (int b = 0; b < n; b++) {
        int ix = cols ? b * n + a : a * n + b;
        g[ix] = (g[ix] - gc) / (S + eps);
      }
    }
  }
  softmax_rows_backward(dL, g.data(), L, n);
}

// ---- four tokens' 4 × 4 projections at once (AVX-512; V4's hc is 4) ----
// Register b holds row b of the four matrices (lane 4t + a: token t's element (b, a)). A column
// stage sums the four registers lane by lane, which is the reference's sum over b in its order;
// a row stage first transposes each matrix inside its 128-bit lane, and then runs the same
// column step. Every add and divide is the reference's, in its order: the same bits, and a
// token's bits do not depend on the three beside it.
V4_AVX512 static inline void transpose4x4(__m512 (&r)[4]) {
  const __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpacklo_ps(r[2], r[3]);
  const __m512 t2 = _mm512_unpackhi_ps(r[0], r[1]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
  r[0] = _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0));
  r[1] = _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2));
  r[2] = _mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(1, 0, 1, 0));
  r[3] = _mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(3, 2, 3, 2));
}
// S + eps with S = ((((0 + r0) + r1) + r2) + r3), the reference's line sum
V4_AVX512 static inline __m512 line_sum4(const __m512 (&r)[4], __m512 veps) {
  __m512 s = _mm512_setzero_ps();
  for (int b = 0; b < 4; b++) s = _mm512_add_ps(s, r[b]);
  return _mm512_add_ps(s, veps);
}
// stage st's input is in rows-as-registers form for a column stage, transposed for a row stage
V4_AVX512 static void sinkhorn4_stages(__m512 (&r)[4], int stages, float eps, float* trace) {
  const __m512 veps = _mm512_set1_ps(eps);
  bool tr = false;
  for (int st = 0; st < stages; st++) {
    const bool cols = st % 2 == 0;
    if (cols == tr) transpose4x4(r), tr = !tr;
    if (trace)
      for (int b = 0; b < 4; b++) _mm512_storeu_ps(trace + (st * 4 + b) * 16, r[b]);
    const __m512 dn = line_sum4(r, veps);
    for (int b = 0; b < 4; b++) r[b] = _mm512_div_ps(r[b], dn);
  }
  if (tr) transpose4x4(r);
}
// Cs[t]: token t's 16 floats (after the softmax rows) <-> the four registers
V4_AVX512 static void load4(__m512 (&r)[4], const float* const Cs[4]) {
  alignas(64) float v[64];
  for (int t = 0; t < 4; t++)
    for (int b = 0; b < 4; b++)
      for (int a = 0; a < 4; a++) v[b * 16 + t * 4 + a] = Cs[t][b * 4 + a];
  for (int b = 0; b < 4; b++) r[b] = _mm512_load_ps(v + 16 * b);
}
V4_AVX512 static void store4(float* const Cs[4], int q, const __m512 (&r)[4]) {
  alignas(64) float v[64];
  for (int b = 0; b < 4; b++) _mm512_store_ps(v + 16 * b, r[b]);
  for (int t = 0; t < q; t++)
    for (int b = 0; b < 4; b++)
      for (int a = 0; a < 4; a++) Cs[t][b * 4 + a] = v[b * 16 + t * 4 + a];
}
// comb[t] = sinkhorn(L[t]) for t < q ≤ 4 (the other lanes repeat token q−1)
V4_AVX512 static void sinkhorn4_forward_512(float* const comb[4], const float* const L[4], int q, int iters, float eps) {
  float C[4][16];
  const float* Cs[4];
  for (int t = 0; t < 4; t++) softmax_rows(C[t], L[std::min(t, q - 1)], 4, eps), Cs[t] = C[t];
  __m512 r[4];
  load4(r, Cs);
  sinkhorn4_stages(r, 2 * iters - 1, eps, nullptr);
  store4(comb, q, r);
}
// dL[t] += the gradient through sinkhorn(L[t]) of dC[t], t < q ≤ 4: sinkhorn_backward's steps
V4_AVX512 static void sinkhorn4_backward_512(float* const dL[4], const float* const dC[4], const float* const L[4], int q,
                                             int iters, float eps, std::vector<float>& trace) {
  const int stages = 2 * iters - 1;
  trace.resize(size_t(stages) * 64);
  float C[4][16];
  const float* Cs[4];
  for (int t = 0; t < 4; t++) softmax_rows(C[t], L[std::min(t, q - 1)], 4, eps), Cs[t] = C[t];
  __m512 r[4], g[4];
  load4(r, Cs);
  sinkhorn4_stages(r, stages, eps, trace.data());
  const float* Gs[4];
  for (int t = 0; t < 4; t++) Gs[t] = dC[std::min(t, q - 1)];
  load4(g, Gs);
  const __m512 veps = _mm512_set1_ps(eps);
  bool tr = false;
  for (int st = stages - 1; st >= 0; st--) {
    const bool rows = st % 2 == 1;
    if (tr != rows) transpose4x4(g), tr = rows;
    __m512 A[4];
    for (int b = 0; b < 4; b++) A[b] = _mm512_loadu_ps(&trace[(size_t(st) * 4 + b) * 16]);
    const __m512 dn = line_sum4(A, veps);
    __m512 gc = _mm512_setzero_ps();
    for (int b = 0; b < 4; b++) gc = _mm512_add_ps(gc, _mm512_div_ps(_mm512_mul_ps(g[b], A[b]), dn));
    for (int b = 0; b < 4; b++) g[b] = _mm512_div_ps(_mm512_sub_ps(g[b], gc), dn);
  }
  if (tr) transpose4x4(g);
  float G[4][16];
  float* Gt[4] = {G[0], G[1], G[2], G[3]};
  store4(Gt, q, g);
  for (int t = 0; t < q; t++) softmax_rows_backward(dL[t], G[t], L[t], 4);
}

// dX[t] += c[k·4 + t] fn[k] for k in order (a zero c skipped), then dX[t] += e[t] X[t], for
// the t < q tokens: axpy's operations on every element in the same order, with the row of dX
// held in registers across the rows of fn instead of read and written once a row.
constexpr long kMaxRows = (2 + kMaxHc) * kMaxHc;
V4_AVX512 static void fn_t_dv_512(float* const dX[4], const float* const X[4], int q, const float* c, const float* e,
                                  const float* fn, long nm, long n) {
  unsigned live[kMaxRows];
  for (long k = 0; k < nm; k++) {
    live[k] = 0;
    for (int t = 0; t < q; t++) live[k] |= unsigned(c[k * 4 + t] != 0.f) << t;
  }
  for (long i = 0; i < n; i += 32) {
    const __mmask16 m0 = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __mmask16 m1 = n - i >= 32 ? __mmask16(0xffff) : n - i <= 16 ? __mmask16(0) : __mmask16((1u << (n - i - 16)) - 1);
    __m512 a0[4], a1[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) {
      a0[t] = t < q ? _mm512_maskz_loadu_ps(m0, dX[t] + i) : _mm512_setzero_ps();
      a1[t] = t < q ? _mm512_maskz_loadu_ps(m1, dX[t] + i + 16) : _mm512_setzero_ps();
    }
    for (long k = 0; k < nm; k++) {
      if (!live[k]) continue;
      const __m512 f0 = _mm512_maskz_loadu_ps(m0, fn + k * n + i), f1 = _mm512_maskz_loadu_ps(m1, fn + k * n + i + 16);
#pragma GCC unroll 4
      for (int t = 0; t < 4; t++) {
        if (!(live[k] >> t & 1)) continue;
        const __m512 v = _mm512_set1_ps(c[k * 4 + t]);
        a0[t] = _mm512_fmadd_ps(v, f0, a0[t]);
        a1[t] = _mm512_fmadd_ps(v, f1, a1[t]);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) {
      if (t >= q) continue;
      const __m512 v = _mm512_set1_ps(e[t]);
      _mm512_mask_storeu_ps(dX[t] + i, m0, _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m0, X[t] + i), a0[t]));
      _mm512_mask_storeu_ps(dX[t] + i + 16, m1, _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m1, X[t] + i + 16), a1[t]));
    }
  }
}

void mhc_pre_forward(float* y, float* post, float* comb, float* mix, const float* X, const float* fn,
                     const float* scale, const float* base, long T, long hc, long d, bool full, int iters,
                     float eps, float norm_eps) {
  const long nm = full ? (2 + hc) * hc : hc, n = hc * d;
  parallel_run(int(cdiv(T, 4)), [&](int task) {
    std::vector<float> L(hc * hc);
    // the mixes m = (fn·x)·r of the task's four tokens: each row of fn (n floats) read once for
    // the four (dot4: dot's bits), not once a token (fn is nm·n floats, 1.5 MB at flash width)
    const long t0 = task * 4L, t1 = std::min(T, t0 + 4);
    const float* xs[4];
    float r[4], v[4];
    for (long q = 0; q < 4; q++) xs[q] = X + std::min(t0 + q, t1 - 1) * n;
    for (long q = 0; q < t1 - t0; q++) r[q] = 1.f / std::sqrt(dot(xs[q], xs[q], n) / float(n) + norm_eps);
    for (long k = 0; k < nm; k++) {
      dot4(fn + k * n, xs, n, v);
      for (long q = 0; q < t1 - t0; q++) mix[(t0 + q) * nm + k] = v[q] * r[q];
    }
    // hc = 4 on AVX-512: the task's four projections run together (sinkhorn4_forward_512)
    const bool quad = full && hc == 4 && isa() == Isa::avx512;
    float Lq[4][16];
    for (long t = t0; t < t1; t++) {
      const float* x = X + t * n;
      const float* m = mix + t * nm;
      float* yt = y + t * d;
      std::fill(yt, yt + d, 0.f);
      for (long i = 0; i < hc; i++) axpy(yt, sigm(m[i] * scale[0] + base[i]) + eps, x + i * d, d);
      if (!full) continue;
      for (long j = 0; j < hc; j++) post[t * hc + j] = 2.f * sigm(m[hc + j] * scale[1] + base[hc + j]);
      float* Lt = quad ? Lq[t - t0] : L.data();
      for (long k = 0; k < hc * hc; k++) Lt[k] = m[2 * hc + k] * scale[2] + base[2 * hc + k];
      if (!quad) sinkhorn_forward(comb + t * hc * hc, Lt, int(hc), iters, eps);
    }
    if (quad) {
      float* cs[4];
      const float* ls[4];
      for (long q = 0; q < 4; q++) cs[q] = comb + std::min(t0 + q, t1 - 1) * 16, ls[q] = Lq[q];
      sinkhorn4_forward_512(cs, ls, int(t1 - t0), iters, eps);
    }
  });
}

// in the forward pass this was: y = Σ_i pre_i X_i, pre/post/comb = f(m·scale + base), m = (fn·x)·r;
// so dpre_i = dy·X_i, dX_i += pre_i dy; dm from the sigmoids and the Sinkhorn backward; then with
// v = fn·x: dv = dm·r, dr = Σ dm·v, and r = (mean(x²)+eps)^-½ gives dx += fnᵀdv − dr·r³·x/n.
void mhc_pre_backward(float* dX, const float* dy, const float* dpost, const float* dcomb, const float* mix,
                      const float* X, const float* fn, const float* scale, const float* base, long T, long hc,
                      long d, bool full, int iters, float eps, float norm_eps) {
  const long nm = full ? (2 + hc) * hc : hc, n = hc * d;
  parallel_run(int(cdiv(T, 4)), [&](int task) {
    // per token as written below; the fnᵀdv step runs row by row of fn over the task's four
    // tokens (each token's updates in the same order), so a row is read once for the four
    const long t0 = task * 4L, t1 = std::min(T, t0 + 4);
    const bool quad = full && dcomb && hc == 4 && isa() == Isa::avx512;
    std::vector<float> dms(4 * nm), L(hc * hc), dL(hc * hc);
    float rs[4], drs[4], Lq[4][16], dLq[4][16];
    for (long t = t0; t < t1; t++) {
      const float* x = X + t * n;
      const float* m = mix + t * nm;
      const float* g = dy + t * d;
      float* dx = dX + t * n;
      float* dm = dms.data() + (t - t0) * nm;
      std::fill(dm, dm + nm, 0.f);
      for (long i = 0; i < hc; i++) {
        float sg = sigm(m[i] * scale[0] + base[i]);
        axpy(dx + i * d, sg + eps, g, d);
        dm[i] = dot(g, x + i * d, d) * sg * (1.f - sg) * scale[0];
      }
      if (full && dpost)
        for (long j = 0; j < hc; j++) {
          float sg = sigm(m[hc + j] * scale[1] + base[hc + j]);
          dm[hc + j] = dpost[t * hc + j] * 2.f * sg * (1.f - sg) * scale[1];
        }
      if (full && dcomb) {
        float* Lt = quad ? Lq[t - t0] : L.data();
        float* dLt = quad ? dLq[t - t0] : dL.data();
        for (long k = 0; k < hc * hc; k++) Lt[k] = m[2 * hc + k] * scale[2] + base[2 * hc + k];
        std::fill(dLt, dLt + hc * hc, 0.f);
        if (!quad) {
          sinkhorn_backward(dLt, dcomb + t * hc * hc, Lt, int(hc), iters, eps);
          for (long k = 0; k < hc * hc; k++) dm[2 * hc + k] = dLt[k] * scale[2];
        }
      }
      rs[t - t0] = 1.f / std::sqrt(dot(x, x, n) / float(n) + norm_eps);
      drs[t - t0] = 0.f;
    }
    if (quad) {
      thread_local std::vector<float> trace;
      float* dls[4];
      const float *gs[4], *ls[4];
      for (long q = 0; q < 4; q++) dls[q] = dLq[q], ls[q] = Lq[q], gs[q] = dcomb + std::min(t0 + q, t1 - 1) * 16;
      sinkhorn4_backward_512(dls, gs, ls, int(t1 - t0), iters, eps, trace);
      for (long t = t0; t < t1; t++)
        for (long k = 0; k < 16; k++) dms[(t - t0) * nm + 2 * hc + k] = dLq[t - t0][k] * scale[2];
    }
    if (isa() == Isa::avx512 && nm <= kMaxRows) {
      // the same updates, dX's row held in registers across the nm rows of fn (fn_t_dv_512)
      float c[kMaxRows * 4] = {}, e[4] = {};
      float* dxs[4];
      const float* xs[4];
      for (long t = t0; t < t0 + 4; t++) {
        const long q = t - t0, tt = std::min(t, t1 - 1);
        dxs[q] = dX + tt * n, xs[q] = X + tt * n;
        if (t >= t1) continue;
        const float r = rs[q];
        for (long k = 0; k < nm; k++) {
          const float dmk = dms[q * nm + k];
          if (dmk == 0.f) continue;
          drs[q] += dmk * mix[t * nm + k] / r;
          c[k * 4 + q] = dmk * r;
        }
        e[q] = -drs[q] * r * r * r / float(n);
      }
      fn_t_dv_512(dxs, xs, int(t1 - t0), c, e, fn, nm, n);
      return;
    }
    for (long k = 0; k < nm; k++)
      for (long t = t0; t < t1; t++) {
        const float dmk = dms[(t - t0) * nm + k], r = rs[t - t0];
        if (dmk == 0.f) continue;
        drs[t - t0] += dmk * mix[t * nm + k] / r;  // m = v·r, so v = m / r
        axpy(dX + t * n, dmk * r, fn + k * n, n);
      }
    for (long t = t0; t < t1; t++) {
      const float r = rs[t - t0];
      axpy(dX + t * n, -drs[t - t0] * r * r * r / float(n), X + t * n, n);
    }
  });
}

void mhc_post_forward(float* out, const float* F, const float* X, const float* post, const float* comb, long T,
                      long hc, long d) {
  parallel_run(int(cdiv(T, 8)), [&](int task) {
    for (long t = task * 8L; t < std::min(T, task * 8L + 8); t++)
      for (long j = 0; j < hc; j++) {
        float* o = out + (t * hc + j) * d;
        for (long c = 0; c < d; c++) o[c] = post[t * hc + j] * F[t * d + c];
        for (long i = 0; i < hc; i++) axpy(o, comb[(t * hc + i) * hc + j], X + (t * hc + i) * d, d);
      }
  });
}

// in the forward pass this was: out_j = post_j F + Σ_i comb_ij X_i; so
//   dF += Σ_j post_j dout_j,  dpost_j += dout_j·F,  dcomb_ij += dout_j·X_i,  dX_i += Σ_j comb_ij dout_j
void mhc_post_backward(float* dF, float* dX, float* dpost, float* dcomb, const float* dout, const float* F,
                       const float* X, const float* post, const float* comb, long T, long hc, long d) {
  parallel_run(int(cdiv(T, 8)), [&](int task) {
    for (long t = task * 8L; t < std::min(T, task * 8L + 8); t++)
      for (long j = 0; j < hc; j++) {
        const float* g = dout + (t * hc + j) * d;
        if (dF) axpy(dF + t * d, post[t * hc + j], g, d);
        if (dpost) dpost[t * hc + j] += dot(g, F + t * d, d);
        for (long i = 0; i < hc; i++) {
          if (dcomb) dcomb[(t * hc + i) * hc + j] += dot(g, X + (t * hc + i) * d, d);
          if (dX) axpy(dX + (t * hc + i) * d, comb[(t * hc + i) * hc + j], g, d);
        }
      }
  });
}

}  // namespace v4
