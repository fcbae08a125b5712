// Linear-with-LoRA and the grouped routed-expert kernel. Every matrix product goes through
// the packed GEMM, which reads the frozen base in its shipped format.
#include "lora.h"
#include "common.h"
#include "gemm.h"
#include "vecmath.h"
#include <algorithm>
#include <cmath>
#include <functional>
#include <cstring>
#include <vector>

namespace v4 {

// one row of dropout_apply: o[c] (=|+=) v[c]·m(key, c) on [c0, C); returns where it stopped
V4_AVX512 static long dropout_row_512(float* o, const float* v, uint32_t key, long c0, long C, const Dropout& dr,
                                      bool accumulate) {
  const __m512i vkey = _mm512_set1_epi32(int(key)), k2 = _mm512_set1_epi32(int(0x85ebca77u));
  const __m512i m1 = _mm512_set1_epi32(int(0x85ebca6bu)), m2 = _mm512_set1_epi32(int(0xc2b2ae35u));
  const __m512i thr = _mm512_set1_epi32(int(dr.threshold)), sixteen = _mm512_set1_epi32(16);
  const __m512 scale = _mm512_set1_ps(dr.scale);
  __m512i col = _mm512_add_epi32(_mm512_set1_epi32(int(c0)), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  long c = c0;
  for (; c + 16 <= C; c += 16, col = _mm512_add_epi32(col, sixteen)) {
    __m512i h = _mm512_xor_si512(vkey, _mm512_mullo_epi32(col, k2));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    h = _mm512_mullo_epi32(h, m1);
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 13));
    h = _mm512_mullo_epi32(h, m2);
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    __mmask16 keep = _mm512_cmpge_epu32_mask(_mm512_srli_epi32(h, 8), thr);
    __m512 val = _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(v + c), scale);
    _mm512_storeu_ps(o + c, accumulate ? _mm512_add_ps(_mm512_loadu_ps(o + c), val) : val);
  }
  return c;
}

// rows [p0, p1) of dropout_apply
static void dropout_rows(float* out, long ldo, const float* in, long ldi, const int* rows, long row0, long p0, long p1, long C,
                         const Dropout& dr, bool accumulate) {
  for (long p = p0; p < p1; p++) {
    const uint32_t key = dropout_row_key(dr.seed, uint32_t(rows ? long(rows[p]) : row0 + p));
    float* o = out + p * ldo;
    const float* v = in + p * ldi;
    long c = isa() == Isa::avx512 ? dropout_row_512(o, v, key, 0, C, dr, accumulate) : 0;
    for (; c < C; c++) {
      float m = (dropout_hash(key, uint32_t(c)) >> 8) >= dr.threshold ? dr.scale : 0.f;
      o[c] = accumulate ? o[c] + v[c] * m : v[c] * m;
    }
  }
}

void dropout_apply(float* out, long ldo, const float* in, long ldi, const int* rows, long row0, long n, long C,
                   const Dropout& dr, bool accumulate) {
  const long grain = std::max(1L, 16384 / std::max(C, 1L));
  parallel_run(int(cdiv(n, grain)), [&](int t) {
    dropout_rows(out, ldo, in, ldi, rows, row0, t * grain, std::min(n, (t + 1) * grain), C, dr, accumulate);
  });
}

void linear_lora_forward(float* y, const float* x, const WeightRef& W, const float* A, const float* B,
                         long r, float s, long T, long G, const Dropout& dr) {
  const long inG = W.cols, outG = W.rows / G, ldx = G * inG, ldy = G * outG;
  const bool drop = dr.on && A && r;
  std::vector<float> u(A && r ? T * r : 0), xd(drop ? T * ldx : 0);
  if (drop) dropout_apply(xd.data(), ldx, x, ldx, nullptr, dr.row0, T, ldx, dr, false);
  const float* xl = drop ? xd.data() : x;  // the LoRA path's input
  for (long g = 0; g < G; g++) {
    const float* xg = x + g * inG;
    float* yg = y + g * outG;
    gemm(T, outG, inG, 1.f, xg, ldx, 1, weight_rows(W, g * outG, outG), true, 0.f, yg, ldy);
    if (!A || r == 0) continue;
    gemm(T, r, inG, 1.f, xl + g * inG, ldx, 1, f32_matrix(A, r, inG), true, 0.f, u.data(), r);  // u = x̃_g Aᵀ
    gemm(T, outG, r, s, u.data(), r, 1, f32_matrix(B + g * outG * r, outG, r), true, 1.f, yg, ldy);
  }
}

// in the forward pass this was: y_g = x_g W_gᵀ + s·u B_gᵀ with u = x̃_g Aᵀ, x̃ = x ⊙ m; so now we have
//   dx_g += dy_g W_g + (s·(dy_g B_g) A) ⊙ m_g,   dB_g += s·dy_gᵀ u,   dA += s·(dy_g B_g)ᵀ x̃_g
void linear_lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const WeightRef& W,
                          const float* A, const float* B, long r, float s, long T, long G, const Dropout& dr) {
  const long inG = W.cols, outG = W.rows / G, ldx = G * inG, ldy = G * outG;
  const bool drop = dr.on && A && r;
  std::vector<float> g_(A && r ? T * r : 0), u(A && r ? T * r : 0), xd(drop ? T * ldx : 0), dxd(drop && dx ? T * ldx : 0);
  if (drop) dropout_apply(xd.data(), ldx, x, ldx, nullptr, dr.row0, T, ldx, dr, false);
  const float* xl = drop ? xd.data() : x;  // the LoRA path's input
  float* dxl = drop ? dxd.data() : dx;     // where the LoRA path's part of dx goes (masked below)
  for (long g = 0; g < G; g++) {
    const float* xg = xl + g * inG;
    const float* dyg = dy + g * outG;
    if (dx) gemm(T, inG, outG, 1.f, dyg, ldy, 1, weight_rows(W, g * outG, outG), false, 1.f, dx + g * inG, ldx);
    if (!A || r == 0) continue;
    const float* Bg = B + g * outG * r;
    gemm(T, r, outG, 1.f, dyg, ldy, 1, f32_matrix(Bg, outG, r), false, 0.f, g_.data(), r);  // dy_g B_g
    if (dx) gemm(T, inG, r, s, g_.data(), r, 1, f32_matrix(A, r, inG), false, drop ? 0.f : 1.f, dxl + g * inG, ldx);
    if (dA) gemm(r, inG, T, s, g_.data(), 1, r, f32_matrix(xg, T, inG, ldx), false, 1.f, dA, inG);
    if (dB) {
      gemm(T, r, inG, 1.f, xg, ldx, 1, f32_matrix(A, r, inG), true, 0.f, u.data(), r);
      gemm(outG, r, T, s, dyg, 1, ldy, f32_matrix(u.data(), T, r), false, 1.f, dB + g * outG * r, r);
    }
  }
  if (drop && dx) dropout_apply(dx, ldx, dxl, ldx, nullptr, dr.row0, T, ldx, dr, true);
}

static inline float sigmoidf(float v) { return 1.f / (1.f + std::exp(-v)); }

// Per-thread scratch that keeps its pages between calls (no zero-fill, no page faults):
// grow(v, n) returns room for n floats with unspecified contents.
static float* grow(std::vector<float>& v, long n) {
  if (long(v.size()) < n) v.resize(n);
  return v.data();
}

// Where one expert's work runs: its GEMMs and loops across the pool (par), or all of it on the
// calling thread, inside a pool task that holds the whole expert. Both do the same arithmetic
// in the same order, so the result does not depend on which.
struct Exec {
  bool par;
  void gemm(long M, long N, long K, float alpha, const float* a, long sam, long sak, const WeightRef& W, bool transB,
            float beta, float* c, long ldc) const {
    (par ? v4::gemm : v4::gemm_serial)(M, N, K, alpha, a, sam, sak, W, transB, beta, c, ldc);
  }
  // f(t) for t in [0, n)
  void run(long n, const std::function<void(int)>& f) const {
    if (par) parallel_run(int(n), f);
    else
      for (long t = 0; t < n; t++) f(int(t));
  }
  // f(p) for p in [0, n) (rows are independent: a token appears once per expert)
  void rows(long n, const std::function<void(long)>& f) const {
    const long grain = 16;
    run(cdiv(n, grain), [&](int t) {
      for (long p = t * grain; p < std::min(n, (t + 1) * grain); p++) f(p);
    });
  }
  void dropout(float* out, long ldo, const float* in, long ldi, const int* rows, long n, long C, const Dropout& dr,
               bool accumulate) const {
    if (par) dropout_apply(out, ldo, in, ldi, rows, 0, n, C, dr, accumulate);
    else dropout_rows(out, ldo, in, ldi, rows, 0, 0, n, C, dr, accumulate);
  }
};

// h = x Wᵀ + s (x̃ Aᵀ) Bᵀ for n rows (xl: the LoRA path's input x̃); u (n, r) keeps x̃ Aᵀ.
static void project(const Exec& X, float* h, float* u, const float* xe, const float* xl, long n, const WeightRef& W,
                    const float* A, const float* B, long r, float s) {
  long in = W.cols, out = W.rows;
  X.gemm(n, out, in, 1.f, xe, in, 1, W, true, 0.f, h, out);
  if (!A || r == 0) return;
  X.gemm(n, r, in, 1.f, xl, in, 1, f32_matrix(A, r, in), true, 0.f, u, r);
  X.gemm(n, out, r, s, u, r, 1, f32_matrix(B, out, r), true, 1.f, h, out);
}

// The LoRA input of a projection with n rows of width C: v itself, or v ⊙ mask (rows: the
// tokens) in the scratch `buf` when its dropout is on.
static const float* lora_input(const Exec& X, std::vector<float>& buf, const float* v, const int* rows, long n, long C,
                               const Dropout& dr, bool adapted) {
  if (!adapted || !dr.on) return v;
  float* m = grow(buf, n * C);
  X.dropout(m, C, v, C, rows, n, C, dr, false);
  return m;
}

// act = silu(min(h1, L)) · clamp(h3, -L, L) on [i0, i1)
V4_AVX512 static long swiglu_512(float* act, const float* h1, const float* h3, long i0, long i1, float L) {
  const __m512 vl = _mm512_set1_ps(L), vnl = _mm512_set1_ps(-L);
  long i = i0;
  for (; i + 16 <= i1; i += 16) {
    __m512 a = _mm512_min_ps(_mm512_loadu_ps(h1 + i), vl);
    __m512 b = _mm512_max_ps(vnl, _mm512_min_ps(_mm512_loadu_ps(h3 + i), vl));
    _mm512_storeu_ps(act + i, _mm512_mul_ps(_mm512_mul_ps(a, sigmoid_512(a)), b));
  }
  return i;
}
// in place: h1 <- dh1 = dact·clamp(h3)·silu'(h1) where h1 <= L; h3 <- dh3 = dact·silu(min(h1, L)) where |h3| <= L
V4_AVX512 static long swiglu_backward_512(float* h1, float* h3, const float* G, long i0, long i1, float L) {
  const __m512 vl = _mm512_set1_ps(L), vnl = _mm512_set1_ps(-L), one = _mm512_set1_ps(1.f);
  long i = i0;
  for (; i + 16 <= i1; i += 16) {
    __m512 a = _mm512_loadu_ps(h1 + i), b = _mm512_loadu_ps(h3 + i), da = _mm512_loadu_ps(G + i);
    __m512 am = _mm512_min_ps(a, vl), bc = _mm512_max_ps(vnl, _mm512_min_ps(b, vl));
    __m512 sg = sigmoid_512(am);
    __m512 d1 = _mm512_mul_ps(_mm512_mul_ps(da, bc), _mm512_mul_ps(sg, _mm512_fmadd_ps(am, _mm512_sub_ps(one, sg), one)));
    __m512 d3 = _mm512_mul_ps(_mm512_mul_ps(da, am), sg);
    __mmask16 k1 = _mm512_cmp_ps_mask(a, vl, _CMP_LE_OQ);
    __mmask16 k3 = _mm512_cmp_ps_mask(b, vl, _CMP_LE_OQ) & _mm512_cmp_ps_mask(b, vnl, _CMP_GE_OQ);
    _mm512_storeu_ps(h1 + i, _mm512_maskz_mov_ps(k1, d1));
    _mm512_storeu_ps(h3 + i, _mm512_maskz_mov_ps(k3, d3));
  }
  return i;
}

static void swiglu(const Exec& X, float* act, const float* h1, const float* h3, long n, float L) {
  const long grain = 16384;
  X.run(cdiv(n, grain), [&](int t) {
    long i = t * grain, end = std::min(n, (t + 1) * grain);
    if (isa() == Isa::avx512) i = swiglu_512(act, h1, h3, i, end, L);
    for (; i < end; i++) {
      float a = std::fmin(h1[i], L), b = std::fmax(-L, std::fmin(h3[i], L));
      act[i] = a * sigmoidf(a) * b;
    }
  });
}

// The experts run in waves: contiguous ranges [e0, e1) whose pairs' output rows (pairs × d
// floats) fit in kWaveFloats. A wave with at least two busy experts a thread runs one expert per
// pool task with serial GEMMs: no hand-off and wait per GEMM, and each core packs its own
// expert's weight. Each pair's result goes to a (pairs, d) buffer, added into the token's row
// after the wave in pair order. Other waves (few experts, or one expert whose pairs alone exceed
// the budget) run their experts one after another, each GEMM across the pool, adding in pair
// order too. Waves follow the expert order, so every token's row gets its pairs in increasing
// pair order whichever way each wave runs: the same bits as one after another throughout.
// Measured at V4-Flash's width (96 rows an expert, bench/kernels.mjs, three interleaved pairs of
// runs on 2 cores) against every GEMM across the pool: forward 0.52–0.60 → 0.56–0.61 of the FMA
// peak, backward 0.44–0.48 → 0.49–0.56, bf16 forward 371–413 → 443–547 GFLOP/s; in the 2-layer
// flash step at 512 tokens the routed experts take 2.87–3.25 → 2.58–2.72 s in fp32, and the
// step's peak RSS is 110–125 MB higher (the wave buffers, at most 64 MB each way).
static const long kWaveFloats = 16L << 20;

// the end of the wave that starts at expert e0: at least e0 + 1, then while the pairs fit
static long wave_end(const int* off, long E, long e0, long d) {
  long e1 = e0 + 1;
  while (e1 < E && long(off[e1 + 1] - off[e0]) * d <= kWaveFloats) e1++;
  return e1;
}

// whether the wave [e0, e1) runs one expert per pool task
static bool wave_per_task(const int* off, long e0, long e1) {
  long busy = 0;
  for (long e = e0; e < e1; e++) busy += off[e + 1] > off[e];
  return busy >= 2L * num_threads();
}

// The experts of [e0, e1) in order of decreasing pair count (a per-task wave starts the longest first).
static std::vector<long> by_size(const int* off, long e0, long e1) {
  std::vector<long> order;
  for (long e = e0; e < e1; e++)
    if (off[e + 1] > off[e]) order.push_back(e);
  std::stable_sort(order.begin(), order.end(), [&](long a, long b) { return off[a + 1] - off[a] > off[b + 1] - off[b]; });
  return order;
}

// dst[idx[p]] += a_p · src[p] for p in [0, P), in increasing p (a_p = w[p], or 1 when w is null),
// split over column blocks so each element is summed by one task in pair order.
static void scatter_add(float* dst, const float* src, const int* idx, const float* w, long P, long d) {
  const long cb = 128;
  parallel_run(int(cdiv(d, cb)), [&](int t) {
    const long c0 = t * cb, c1 = std::min(d, c0 + cb);
    for (long p = 0; p < P; p++) axpy(dst + long(idx[p]) * d + c0, w ? w[p] : 1.f, src + p * d + c0, c1 - c0);
  });
}

// The experts wave by wave (above): one(X, rows, e) writes expert e's pair rows (its n pairs ×
// d) to `rows`; they are added into dst (when not null) at the pairs' tokens, scaled by wts (1
// where null), in pair order. perTask false keeps every wave one expert after another.
static void run_waves(float* dst, const float* wts, const int* idx, const int* off, long E, long d, bool perTask,
                      std::vector<float>& buf, const std::function<void(const Exec&, float*, long)>& one) {
  const Exec X{true};
  for (long e0 = 0, e1; e0 < E; e0 = e1) {
    e1 = wave_end(off, E, e0, d);
    check_cancel();
    if (perTask && wave_per_task(off, e0, e1)) {
      const long q0 = off[e0], q1 = off[e1];
      float* rows = grow(buf, (q1 - q0) * d);
      const std::vector<long> order = by_size(off, e0, e1);
      parallel_run(int(order.size()), [&](int t) {
        check_cancel();
        one(Exec{false}, rows + (off[order[t]] - q0) * d, order[t]);
      });
      if (dst) scatter_add(dst, rows, idx + q0, wts ? wts + q0 : nullptr, q1 - q0, d);
      continue;
    }
    for (long e = e0; e < e1; e++) {
      const long p0 = off[e], n = off[e + 1] - off[e];
      if (n == 0) continue;
      check_cancel();
      float* rows = grow(buf, n * d);
      one(X, rows, e);
      if (dst) X.rows(n, [&](long p) { axpy(dst + long(idx[p0 + p]) * d, wts ? wts[p0 + p] : 1.f, &rows[p * d], d); });
    }
  }
}

// One expert's forward: y (n, d) = expert_e(x[rows]); h1k / h3k, when not null, keep h1 and h3.
static void routed_experts_forward_one(const Exec& X, float* y, const float* x, long d, long I, const int* rows, long n, const Expert& ex,
                               float L, float* h1k = nullptr, float* h3k = nullptr) {
  V4_SCRATCH_ONE(sx)
  V4_SCRATCH_ONE(s1)
  V4_SCRATCH_ONE(s3)
  V4_SCRATCH_ONE(su)
  V4_SCRATCH_ONE(sd1)
  V4_SCRATCH_ONE(sd3)
  V4_SCRATCH_ONE(sd2)
  V4_SCRATCH_ONE(sact)
  long rmax = std::max(ex.r1, std::max(ex.r2, ex.r3));
  float *xe = grow(sx, n * d), *u = grow(su, n * std::max(rmax, 1L));
  float *h1 = h1k ? h1k : grow(s1, n * I), *h3 = h3k ? h3k : grow(s3, n * I);
  float* act = h1k ? grow(sact, n * I) : h1;  // in place of h1 unless h1 is kept
  X.rows(n, [&](long p) { std::memcpy(&xe[p * d], x + long(rows[p]) * d, d * 4); });
  project(X, h1, u, xe, lora_input(X, sd1, xe, rows, n, d, ex.d1, ex.a1 && ex.r1), n, ex.w1, ex.a1, ex.b1, ex.r1, ex.s1);
  project(X, h3, u, xe, lora_input(X, sd3, xe, rows, n, d, ex.d3, ex.a3 && ex.r3), n, ex.w3, ex.a3, ex.b3, ex.r3, ex.s3);
  swiglu(X, act, h1, h3, n * I, L);
  project(X, y, u, act, lora_input(X, sd2, act, rows, n, I, ex.d2, ex.a2 && ex.r2), n, ex.w2, ex.a2, ex.b2, ex.r2, ex.s2);
}

void routed_experts_forward(float* out, const float* x, long T, long d, long I, const int* idx, const int* off, const float* w,
                    const Expert* experts, long E, float L, float* h13) {
  (void)T;
  const long P = off[E];
  // pair p's kept h1 and h3 (null when not kept)
  auto k1 = [&](long p) { return h13 ? h13 + p * I : nullptr; };
  auto k3 = [&](long p) { return h13 ? h13 + (P + p) * I : nullptr; };
  V4_SCRATCH_ONE(sy)
  run_waves(out, w, idx, off, E, d, true, sy, [&](const Exec& X, float* y, long e) {
    const long p0 = off[e];
    routed_experts_forward_one(X, y, x, d, I, idx + p0, off[e + 1] - p0, experts[e], L, k1(p0), k3(p0));
  });
}

// in the forward pass this was (per pair p of expert e, x = x[idx[p]], g = dout[idx[p]]):
//   out += w·y, y = act W2ᵀ + s (act A2ᵀ) B2ᵀ, act = silu(min(h1,L))·clamp(h3,-L,L)
// so (s standing for each projection's own scaling, mk for dropout k's mask, x̃k = x ⊙ mk, ãct = act ⊙ m2)
// with G = g W2 + (s (g B2) A2) ⊙ m2 (the gradient of g·y with respect to act):
//   dw += g·y = G·act,  dact = w G,  dB2 += s (w g)ᵀ (ãct A2ᵀ),  dA2 += s (w g B2)ᵀ ãct
//   dh1 = dact · clamp(h3) · silu'(h1) where h1 <= L,  dh3 = dact · silu(min(h1,L)) where |h3| <= L
//   dx += dh1 W1 + (s (dh1 B1) A1) ⊙ m1 + (same for 3),  dA1 += s (dh1 B1)ᵀ x̃1,  dB1 += s dh1ᵀ (x̃1 A1ᵀ)
// One expert's backward: dxe (n, d) = this expert's part of dx at its rows (overwritten); dw
// (n) and the expert's LoRA gradients accumulate.
static void routed_experts_backward_one(const Exec& X, float* dxe, float* dw, const ExpertGrads& gr, const float* dout,
                                const float* x, long d, long I, const int* rows, long n, const float* w, const Expert& ex,
                                float L, const float* h1k = nullptr, const float* h3k = nullptr) {
  V4_SCRATCH_ONE(sxe)
  V4_SCRATCH_ONE(sge)
  V4_SCRATCH_ONE(sh1)
  V4_SCRATCH_ONE(sh3)
  V4_SCRATCH_ONE(sact)
  V4_SCRATCH_ONE(sG)
  V4_SCRATCH_ONE(su1)
  V4_SCRATCH_ONE(su3)
  V4_SCRATCH_ONE(su2)
  V4_SCRATCH_ONE(sg2)
  V4_SCRATCH_ONE(sg1)
  V4_SCRATCH_ONE(sd1)
  V4_SCRATCH_ONE(sd3)
  V4_SCRATCH_ONE(sd2)
  V4_SCRATCH_ONE(sdl)
  long r1 = ex.a1 ? ex.r1 : 0, r2 = ex.a2 ? ex.r2 : 0, r3 = ex.a3 ? ex.r3 : 0;
  float *xe = grow(sxe, n * d), *ge = grow(sge, n * d), *h1 = grow(sh1, n * I), *h3 = grow(sh3, n * I);
  float *act = grow(sact, n * I), *G = grow(sG, n * I);
  float *u1 = grow(su1, n * std::max(r1, 1L)), *u3 = grow(su3, n * std::max(r3, 1L)), *u2 = grow(su2, n * std::max(r2, 1L));
  float *g2 = grow(sg2, n * std::max(r2, 1L)), *g1 = grow(sg1, n * std::max(std::max(r1, r3), 1L));
  X.rows(n, [&](long p) {
    std::memcpy(&xe[p * d], x + long(rows[p]) * d, d * 4);
    std::memcpy(&ge[p * d], dout + long(rows[p]) * d, d * 4);
  });
  // h1 and h3 as the forward kept them (copied: they are overwritten below), or recomputed; the
  // LoRA inputs masked as the forward masked them, and u = x̃ Aᵀ for dB
  const float* x1 = lora_input(X, sd1, xe, rows, n, d, ex.d1, r1);
  const float* x3 = lora_input(X, sd3, xe, rows, n, d, ex.d3, r3);
  if (h1k) {
    X.rows(n, [&](long p) {
      std::memcpy(&h1[p * I], h1k + p * I, I * 4);
      std::memcpy(&h3[p * I], h3k + p * I, I * 4);
    });
    if (r1) X.gemm(n, r1, d, 1.f, x1, d, 1, f32_matrix(ex.a1, r1, d), true, 0.f, u1, r1);
    if (r3) X.gemm(n, r3, d, 1.f, x3, d, 1, f32_matrix(ex.a3, r3, d), true, 0.f, u3, r3);
  } else {
    project(X, h1, u1, xe, x1, n, ex.w1, ex.a1, ex.b1, r1, ex.s1);
    project(X, h3, u3, xe, x3, n, ex.w3, ex.a3, ex.b3, r3, ex.s3);
  }
  swiglu(X, act, h1, h3, n * I, L);
  const float* act2 = lora_input(X, sd2, act, rows, n, I, ex.d2, r2);
  // G = g W2 + (s (g B2) A2) ⊙ m2
  X.gemm(n, I, d, 1.f, ge, d, 1, ex.w2, false, 0.f, G, I);
  if (r2) {
    X.gemm(n, r2, d, 1.f, ge, d, 1, f32_matrix(ex.b2, d, r2), false, 0.f, g2, r2);
    if (ex.d2.on) {
      float* Gl = grow(sdl, n * I);
      X.gemm(n, I, r2, ex.s2, g2, r2, 1, f32_matrix(ex.a2, r2, I), false, 0.f, Gl, I);
      X.dropout(G, I, Gl, I, rows, n, I, ex.d2, true);
    } else {
      X.gemm(n, I, r2, ex.s2, g2, r2, 1, f32_matrix(ex.a2, r2, I), false, 1.f, G, I);
    }
  }
  X.rows(n, [&](long p) {
    if (dw) dw[p] += dot(&G[p * I], &act[p * I], I);
    float wp = w[p];
    for (long i = 0; i < I; i++) G[p * I + i] *= wp;   // G is now dact
    for (long j = 0; j < d; j++) ge[p * d + j] *= wp;  // ge is now dy
    for (long j = 0; j < r2; j++) g2[p * r2 + j] *= wp;  // g2 is now dy B2
  });
  if (r2) {
    if (gr.db2) {
      X.gemm(n, r2, I, 1.f, act2, I, 1, f32_matrix(ex.a2, r2, I), true, 0.f, u2, r2);
      X.gemm(d, r2, n, ex.s2, ge, 1, d, f32_matrix(u2, n, r2), false, 1.f, gr.db2, r2);
    }
    if (gr.da2) X.gemm(r2, I, n, ex.s2, g2, 1, r2, f32_matrix(act2, n, I), false, 1.f, gr.da2, I);
  }
  // dh1, dh3 in place of h1, h3
  const long grain = 16384;
  X.run(cdiv(n * I, grain), [&](int t) {
    long i = t * grain, end = std::min(n * I, (t + 1) * grain);
    if (isa() == Isa::avx512) i = swiglu_backward_512(h1, h3, G, i, end, L);
    for (; i < end; i++) {
      float a = h1[i], b = h3[i], da = G[i];
      float am = std::fmin(a, L), bc = std::fmax(-L, std::fmin(b, L));
      float sg = sigmoidf(am);
      h1[i] = a <= L ? da * bc * sg * (1.f + am * (1.f - sg)) : 0.f;
      h3[i] = (b >= -L && b <= L) ? da * am * sg : 0.f;
    }
  });
  X.gemm(n, d, I, 1.f, h1, I, 1, ex.w1, false, 0.f, dxe, d);
  X.gemm(n, d, I, 1.f, h3, I, 1, ex.w3, false, 1.f, dxe, d);
  struct Side { const float *a, *b; float *da, *db; long r; float s; float* h; float* u; const float* x; const Dropout& dr; };
  for (const Side& sd : {Side{ex.a1, ex.b1, gr.da1, gr.db1, r1, ex.s1, h1, u1, x1, ex.d1},
                         Side{ex.a3, ex.b3, gr.da3, gr.db3, r3, ex.s3, h3, u3, x3, ex.d3}}) {
    if (!sd.r) continue;
    X.gemm(n, sd.r, I, 1.f, sd.h, I, 1, f32_matrix(sd.b, I, sd.r), false, 0.f, g1, sd.r);  // dh B
    if (sd.dr.on) {
      float* dxl = grow(sdl, n * d);
      X.gemm(n, d, sd.r, sd.s, g1, sd.r, 1, f32_matrix(sd.a, sd.r, d), false, 0.f, dxl, d);
      X.dropout(dxe, d, dxl, d, rows, n, d, sd.dr, true);
    } else {
      X.gemm(n, d, sd.r, sd.s, g1, sd.r, 1, f32_matrix(sd.a, sd.r, d), false, 1.f, dxe, d);
    }
    if (sd.da) X.gemm(sd.r, d, n, sd.s, g1, 1, sd.r, f32_matrix(sd.x, n, d), false, 1.f, sd.da, d);
    if (sd.db) X.gemm(I, sd.r, n, sd.s, sd.h, 1, I, f32_matrix(sd.u, n, sd.r), false, 1.f, sd.db, sd.r);
  }
}

// Whether no two experts share a gradient buffer (then experts may run at the same time).
static bool grads_disjoint(const ExpertGrads* grads, long E) {
  std::vector<const float*> ps;
  for (long e = 0; e < E; e++)
    for (const float* q : {grads[e].da1, grads[e].db1, grads[e].da2, grads[e].db2, grads[e].da3, grads[e].db3})
      if (q) ps.push_back(q);
  std::sort(ps.begin(), ps.end());
  return std::adjacent_find(ps.begin(), ps.end()) == ps.end();
}

void routed_experts_backward(float* dx, float* dw, const ExpertGrads* grads, const float* dout, const float* x, long T, long d,
                     long I, const int* idx, const int* off, const float* w, const Expert* experts, long E, float L,
                     const float* h13) {
  (void)T;
  const long P = off[E];
  auto k1 = [&](long p) -> const float* { return h13 ? h13 + p * I : nullptr; };
  auto k3 = [&](long p) -> const float* { return h13 ? h13 + (P + p) * I : nullptr; };
  // experts run at the same time only where no two share a gradient buffer
  V4_SCRATCH_ONE(sdx)
  run_waves(dx, nullptr, idx, off, E, d, grads_disjoint(grads, E), sdx, [&](const Exec& X, float* dxe, long e) {
    const long p0 = off[e];
    routed_experts_backward_one(X, dxe, dw ? dw + p0 : nullptr, grads[e], dout, x, d, I, idx + p0, off[e + 1] - p0, w + p0, experts[e], L,
                                k1(p0), k3(p0));
  });
}

}  // namespace v4
