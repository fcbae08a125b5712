// mHC pre/post and the Sinkhorn projection. Tokens are independent: every loop splits over T.
#include "mhc.h"
#include "common.h"
#include <cmath>
#include <vector>

namespace v4 {

static inline float sigm(float v) { return 1.f / (1.f + std::exp(-v)); }

// stages: softmax+eps, then 2·iters−1 normalisations (col, then row/col pairs); `trace`
// receives the input of each normalisation (n·n each) when not null.
static void sinkhorn_run(float* C, const float* L, int n, int iters, float eps, float* trace) {
  for (int i = 0; i < n; i++) {
    float m = -INFINITY, z = 0.f;
    for (int j = 0; j < n; j++) m = std::fmax(m, L[i * n + j]);
    for (int j = 0; j < n; j++) z += (C[i * n + j] = std::exp(L[i * n + j] - m));
    for (int j = 0; j < n; j++) C[i * n + j] = C[i * n + j] / z + eps;
  }
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
  for (int i = 0; i < n; i++) {
    float m = -INFINITY, z = 0.f, gp = 0.f;
    std::vector<float> p(n);
    for (int j = 0; j < n; j++) m = std::fmax(m, L[i * n + j]);
    for (int j = 0; j < n; j++) z += (p[j] = std::exp(L[i * n + j] - m));
    for (int j = 0; j < n; j++) p[j] /= z, gp += g[i * n + j] * p[j];
    for (int j = 0; j < n; j++) dL[i * n + j] += p[j] * (g[i * n + j] - gp);
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
    for (long t = t0; t < t1; t++) {
      const float* x = X + t * n;
      const float* m = mix + t * nm;
      float* yt = y + t * d;
      std::fill(yt, yt + d, 0.f);
      for (long i = 0; i < hc; i++) axpy(yt, sigm(m[i] * scale[0] + base[i]) + eps, x + i * d, d);
      if (!full) continue;
      for (long j = 0; j < hc; j++) post[t * hc + j] = 2.f * sigm(m[hc + j] * scale[1] + base[hc + j]);
      for (long k = 0; k < hc * hc; k++) L[k] = m[2 * hc + k] * scale[2] + base[2 * hc + k];
      sinkhorn_forward(comb + t * hc * hc, L.data(), int(hc), iters, eps);
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
    std::vector<float> dms(4 * nm), L(hc * hc), dL(hc * hc);
    float rs[4], drs[4];
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
        for (long k = 0; k < hc * hc; k++) L[k] = m[2 * hc + k] * scale[2] + base[2 * hc + k];
        std::fill(dL.begin(), dL.end(), 0.f);
        sinkhorn_backward(dL.data(), dcomb + t * hc * hc, L.data(), int(hc), iters, eps);
        for (long k = 0; k < hc * hc; k++) dm[2 * hc + k] = dL[k] * scale[2];
      }
      rs[t - t0] = 1.f / std::sqrt(dot(x, x, n) / float(n) + norm_eps);
      drs[t - t0] = 0.f;
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
