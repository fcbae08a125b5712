// Linear-with-LoRA and the grouped routed-expert kernel. Every matrix product goes through
// the packed GEMM, which reads the frozen base in its shipped format.
#include "lora.h"
#include "common.h"
#include "gemm.h"
#include "vecmath.h"
#include <cmath>
#include <cstring>
#include <vector>

namespace v4 {

void linear_lora_forward(float* y, const float* x, const WeightRef& W, const float* A, const float* B,
                         long r, float s, long T, long G) {
  const long inG = W.cols, outG = W.rows / G, ldx = G * inG, ldy = G * outG;
  std::vector<float> u(A && r ? T * r : 0);
  for (long g = 0; g < G; g++) {
    const float* xg = x + g * inG;
    float* yg = y + g * outG;
    gemm(T, outG, inG, 1.f, xg, ldx, 1, weight_rows(W, g * outG, outG), true, 0.f, yg, ldy);
    if (!A || r == 0) continue;
    gemm(T, r, inG, 1.f, xg, ldx, 1, f32_matrix(A, r, inG), true, 0.f, u.data(), r);  // u = x_g Aᵀ
    gemm(T, outG, r, s, u.data(), r, 1, f32_matrix(B + g * outG * r, outG, r), true, 1.f, yg, ldy);
  }
}

// in the forward pass this was: y_g = x_g W_gᵀ + s·u B_gᵀ with u = x_g Aᵀ; so now we have
//   dx_g += dy_g W_g + s·(dy_g B_g) A,   dB_g += s·dy_gᵀ u,   dA += s·(dy_g B_g)ᵀ x_g
void linear_lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const WeightRef& W,
                          const float* A, const float* B, long r, float s, long T, long G) {
  const long inG = W.cols, outG = W.rows / G, ldx = G * inG, ldy = G * outG;
  std::vector<float> g_(A && r ? T * r : 0), u(A && r ? T * r : 0);
  for (long g = 0; g < G; g++) {
    const float* xg = x + g * inG;
    const float* dyg = dy + g * outG;
    if (dx) gemm(T, inG, outG, 1.f, dyg, ldy, 1, weight_rows(W, g * outG, outG), false, 1.f, dx + g * inG, ldx);
    if (!A || r == 0) continue;
    const float* Bg = B + g * outG * r;
    gemm(T, r, outG, 1.f, dyg, ldy, 1, f32_matrix(Bg, outG, r), false, 0.f, g_.data(), r);  // dy_g B_g
    if (dx) gemm(T, inG, r, s, g_.data(), r, 1, f32_matrix(A, r, inG), false, 1.f, dx + g * inG, ldx);
    if (dA) gemm(r, inG, T, s, g_.data(), 1, r, f32_matrix(xg, T, inG, ldx), false, 1.f, dA, inG);
    if (dB) {
      gemm(T, r, inG, 1.f, xg, ldx, 1, f32_matrix(A, r, inG), true, 0.f, u.data(), r);
      gemm(outG, r, T, s, dyg, 1, ldy, f32_matrix(u.data(), T, r), false, 1.f, dB + g * outG * r, r);
    }
  }
}

static inline float sigmoidf(float v) { return 1.f / (1.f + std::exp(-v)); }

// Per-thread scratch that keeps its pages between calls (no zero-fill, no page faults):
// grow(v, n) returns room for n floats with unspecified contents.
static float* grow(std::vector<float>& v, long n) {
  if (long(v.size()) < n) v.resize(n);
  return v.data();
}

// f(p) for p in [0, n) across the pool (rows are independent: a token appears once per expert)
static void for_rows(long n, const std::function<void(long)>& f) {
  const long grain = 16;
  parallel_run(int(cdiv(n, grain)), [&](int t) {
    for (long p = t * grain; p < std::min(n, (t + 1) * grain); p++) f(p);
  });
}

// h = x Wᵀ + s (x Aᵀ) Bᵀ for n rows; u (n, r) keeps x Aᵀ when wanted.
static void project(float* h, float* u, const float* xe, long n, const WeightRef& W, const float* A, const float* B,
                    long r, float s) {
  long in = W.cols, out = W.rows;
  gemm(n, out, in, 1.f, xe, in, 1, W, true, 0.f, h, out);
  if (!A || r == 0) return;
  gemm(n, r, in, 1.f, xe, in, 1, f32_matrix(A, r, in), true, 0.f, u, r);
  gemm(n, out, r, s, u, r, 1, f32_matrix(B, out, r), true, 1.f, h, out);
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

static void swiglu(float* act, const float* h1, const float* h3, long n, float L) {
  const long grain = 16384;
  parallel_run(int(cdiv(n, grain)), [&](int t) {
    long i = t * grain, end = std::min(n, (t + 1) * grain);
    if (isa() == Isa::avx512) i = swiglu_512(act, h1, h3, i, end, L);
    for (; i < end; i++) {
      float a = std::fmin(h1[i], L), b = std::fmax(-L, std::fmin(h3[i], L));
      act[i] = a * sigmoidf(a) * b;
    }
  });
}

void expert_forward(float* out, const float* x, long T, long d, long I, const int* idx, const int* off, const float* w,
                    const Expert* experts, long E, float L) {
  (void)T;
  thread_local std::vector<float> sx, s1, s3, su, sy;
  for (long e = 0; e < E; e++) {
    long p0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    check_cancel();
    const Expert& ex = experts[e];
    long rmax = std::max(ex.r1, std::max(ex.r2, ex.r3));
    float *xe = grow(sx, n * d), *h1 = grow(s1, n * I), *h3 = grow(s3, n * I), *u = grow(su, n * std::max(rmax, 1L)),
          *y = grow(sy, n * d);
    for_rows(n, [&](long p) { std::memcpy(&xe[p * d], x + long(idx[p0 + p]) * d, d * 4); });
    project(h1, u, xe, n, ex.w1, ex.a1, ex.b1, ex.r1, ex.s1);
    project(h3, u, xe, n, ex.w3, ex.a3, ex.b3, ex.r3, ex.s3);
    swiglu(h1, h1, h3, n * I, L);  // h1 now holds act
    project(y, u, h1, n, ex.w2, ex.a2, ex.b2, ex.r2, ex.s2);
    for_rows(n, [&](long p) { axpy(out + long(idx[p0 + p]) * d, w[p0 + p], &y[p * d], d); });
  }
}

// in the forward pass this was (per pair p of expert e, x = x[idx[p]], g = dout[idx[p]]):
//   out += w·y, y = act W2ᵀ + s (act A2ᵀ) B2ᵀ, act = silu(min(h1,L))·clamp(h3,-L,L)
// so (s standing for each projection's own scaling) with G = g W2 + s (g B2) A2 (the gradient of g·y with respect to act):
//   dw += g·y = G·act,  dact = w G,  dB2 += s (w g)ᵀ (act A2ᵀ),  dA2 += s (w g B2)ᵀ act
//   dh1 = dact · clamp(h3) · silu'(h1) where h1 <= L,  dh3 = dact · silu(min(h1,L)) where |h3| <= L
//   dx += dh1 W1 + s (dh1 B1) A1 + (same for 3),  dA1 += s (dh1 B1)ᵀ x,  dB1 += s dh1ᵀ (x A1ᵀ)
void expert_backward(float* dx, float* dw, const ExpertGrads* grads, const float* dout, const float* x, long T, long d,
                     long I, const int* idx, const int* off, const float* w, const Expert* experts, long E, float L) {
  (void)T;
  thread_local std::vector<float> sxe, sge, sh1, sh3, sact, sG, su1, su3, su2, sg2, sg1, sdx;
  for (long e = 0; e < E; e++) {
    long p0 = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    check_cancel();
    const Expert& ex = experts[e];
    const ExpertGrads& gr = grads[e];
    long r1 = ex.a1 ? ex.r1 : 0, r2 = ex.a2 ? ex.r2 : 0, r3 = ex.a3 ? ex.r3 : 0;
    float *xe = grow(sxe, n * d), *ge = grow(sge, n * d), *h1 = grow(sh1, n * I), *h3 = grow(sh3, n * I);
    float *act = grow(sact, n * I), *G = grow(sG, n * I), *dxe = grow(sdx, n * d);
    float *u1 = grow(su1, n * std::max(r1, 1L)), *u3 = grow(su3, n * std::max(r3, 1L)), *u2 = grow(su2, n * std::max(r2, 1L));
    float *g2 = grow(sg2, n * std::max(r2, 1L)), *g1 = grow(sg1, n * std::max(std::max(r1, r3), 1L));
    for_rows(n, [&](long p) {
      std::memcpy(&xe[p * d], x + long(idx[p0 + p]) * d, d * 4);
      std::memcpy(&ge[p * d], dout + long(idx[p0 + p]) * d, d * 4);
    });
    // recompute the forward up to act
    project(h1, u1, xe, n, ex.w1, ex.a1, ex.b1, r1, ex.s1);
    project(h3, u3, xe, n, ex.w3, ex.a3, ex.b3, r3, ex.s3);
    swiglu(act, h1, h3, n * I, L);
    // G = g W2 + s (g B2) A2
    gemm(n, I, d, 1.f, ge, d, 1, ex.w2, false, 0.f, G, I);
    if (r2) {
      gemm(n, r2, d, 1.f, ge, d, 1, f32_matrix(ex.b2, d, r2), false, 0.f, g2, r2);
      gemm(n, I, r2, ex.s2, g2, r2, 1, f32_matrix(ex.a2, r2, I), false, 1.f, G, I);
    }
    for_rows(n, [&](long p) {
      if (dw) dw[p0 + p] += dot(&G[p * I], &act[p * I], I);
      float wp = w[p0 + p];
      for (long i = 0; i < I; i++) G[p * I + i] *= wp;   // G is now dact
      for (long j = 0; j < d; j++) ge[p * d + j] *= wp;  // ge is now dy
      for (long j = 0; j < r2; j++) g2[p * r2 + j] *= wp;  // g2 is now dy B2
    });
    if (r2) {
      if (gr.db2) {
        gemm(n, r2, I, 1.f, act, I, 1, f32_matrix(ex.a2, r2, I), true, 0.f, u2, r2);
        gemm(d, r2, n, ex.s2, ge, 1, d, f32_matrix(u2, n, r2), false, 1.f, gr.db2, r2);
      }
      if (gr.da2) gemm(r2, I, n, ex.s2, g2, 1, r2, f32_matrix(act, n, I), false, 1.f, gr.da2, I);
    }
    // dh1, dh3 in place of h1, h3
    const long grain = 16384;
    parallel_run(int(cdiv(n * I, grain)), [&](int t) {
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
    gemm(n, d, I, 1.f, h1, I, 1, ex.w1, false, 0.f, dxe, d);
    gemm(n, d, I, 1.f, h3, I, 1, ex.w3, false, 1.f, dxe, d);
    struct Side { const float *a, *b; float *da, *db; long r; float s; float* h; float* u; };
    for (const Side& sd : {Side{ex.a1, ex.b1, gr.da1, gr.db1, r1, ex.s1, h1, u1},
                           Side{ex.a3, ex.b3, gr.da3, gr.db3, r3, ex.s3, h3, u3}}) {
      if (!sd.r) continue;
      gemm(n, sd.r, I, 1.f, sd.h, I, 1, f32_matrix(sd.b, I, sd.r), false, 0.f, g1, sd.r);  // dh B
      gemm(n, d, sd.r, sd.s, g1, sd.r, 1, f32_matrix(sd.a, sd.r, d), false, 1.f, dxe, d);
      if (sd.da) gemm(sd.r, d, n, sd.s, g1, 1, sd.r, f32_matrix(xe, n, d), false, 1.f, sd.da, d);
      if (sd.db) gemm(I, sd.r, n, sd.s, sd.h, 1, I, f32_matrix(sd.u, n, sd.r), false, 1.f, sd.db, sd.r);
    }
    if (dx) for_rows(n, [&](long p) { axpy(dx + long(idx[p0 + p]) * d, 1.f, &dxe[p * d], d); });
  }
}

}  // namespace v4
