// Manifold-constrained hyper-connections: the pre mix (with the Sinkhorn-projected
// combination matrix), the post mix, and hc_head.
#pragma once

namespace v4 {

// X is (T, hc, d); fn is (nm, hc·d), base (nm), scale (3, or 1 for hc_head) with
//   nm = (2+hc)·hc when full (before a sublayer), nm = hc for hc_head
// x = X_t flattened, r = 1/sqrt(mean(x²) + norm_eps), m = (fn·x)·r
// pre = sigmoid(m[0:hc]·scale0 + base[0:hc]) + eps,  y = Σ_i pre_i X_i         (y is (T, d))
// full: post = 2·sigmoid(m[hc:2hc]·scale1 + base[hc:2hc])                      (post is (T, hc))
//       comb = sinkhorn(m[2hc:]·scale2 + base[2hc:] viewed (hc, hc))           (comb is (T, hc, hc))
// sinkhorn(L): softmax over each row, + eps; each column / (its sum + eps); then iters−1 times:
//       rows / (row sum + eps), columns / (column sum + eps)
// mix (T, nm) saves m for the backward.
void mhc_pre_forward(float* y, float* post, float* comb, float* mix, const float* X, const float* fn,
                     const float* scale, const float* base, long T, long hc, long d, bool full, int iters,
                     float eps, float norm_eps);
// dX (T, hc, d) accumulates; dpost (T, hc) and dcomb (T, hc, hc) may be null (no gradient).
void mhc_pre_backward(float* dX, const float* dy, const float* dpost, const float* dcomb, const float* mix,
                      const float* X, const float* fn, const float* scale, const float* base, long T, long hc,
                      long d, bool full, int iters, float eps, float norm_eps);

// F is (T, d) the sublayer output; out is (T, hc, d): out_j = post_j·F + Σ_i comb_ij·X_i
void mhc_post_forward(float* out, const float* F, const float* X, const float* post, const float* comb, long T,
                      long hc, long d);
// dF, dX, dpost, dcomb accumulate.
void mhc_post_backward(float* dF, float* dX, float* dpost, float* dcomb, const float* dout, const float* F,
                       const float* X, const float* post, const float* comb, long T, long hc, long d);

// The Sinkhorn projection alone (n × n), and its backward by replaying the saved iterates.
void sinkhorn_forward(float* C, const float* L, int n, int iters, float eps);
void sinkhorn_backward(float* dL, const float* dC, const float* L, int n, int iters, float eps);

}  // namespace v4
