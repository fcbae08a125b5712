// Sparse sink attention, forward and backward, as small GEMMs per query: the query's kv rows
// are gathered into a contiguous block Kt [nk, D], then S = scale·Q_t Ktᵀ [H, nk] and
// O_t = P Kt run on the packed GEMM (single-threaded inside a task; queries run in parallel).
// The backward splits the queries into a fixed number of blocks, each with its own dkv
// accumulator, summed in block order: the result does not depend on the thread count.
#include "attention.h"
#include "common.h"
#include "gemm.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace v4 {

// gathers the kv rows query t sees into Kt; returns their count and their rows in js
static long gather_keys(long t, const int* idx, long K, const float* kv, long D, std::vector<int>& js, std::vector<float>& Kt) {
  js.clear();
  for (long k = 0; k < K; k++)
    if (idx[t * K + k] >= 0) js.push_back(idx[t * K + k]);
  long nk = long(js.size());
  Kt.resize(std::max(1L, nk) * D);
  for (long j = 0; j < nk; j++) std::copy(kv + long(js[j]) * D, kv + long(js[j]) * D + D, &Kt[j * D]);
  return nk;
}

void attention_forward(float* o, float* lse, const float* q, const float* kv, const int* idx, const float* sink,
                       long T, long H, long D, long K, float scale) {
  parallel_run(int(cdiv(T, 4)), [&](int task) {
    check_cancel();
    std::vector<int> js;
    std::vector<float> Kt, S;
    for (long t = task * 4L; t < std::min(T, task * 4L + 4); t++) {
      long nk = gather_keys(t, idx, K, kv, D, js, Kt);
      float* ot = o + t * H * D;
      if (nk == 0) {
        std::fill(ot, ot + H * D, 0.f);
        for (long h = 0; h < H; h++) lse[t * H + h] = sink[h];
        continue;
      }
      S.resize(H * nk);
      const WeightRef Kw = f32_matrix(Kt.data(), nk, D);
      gemm_serial(H, nk, D, scale, q + t * H * D, D, 1, Kw, true, 0.f, S.data(), nk);  // S = scale·Q Ktᵀ
      for (long h = 0; h < H; h++) {
        float* s = &S[h * nk];
        float m = std::fmax(sink[h], max_of(s, nk));
        float z = exp_sub_sum(s, nk, m) + std::exp(sink[h] - m);
        for (long j = 0; j < nk; j++) s[j] /= z;  // p = e^s / (Σe^s + e^sink)
        lse[t * H + h] = m + std::log(z);
      }
      gemm_serial(H, D, nk, 1.f, S.data(), nk, 1, Kw, false, 0.f, ot, D);  // O = P Kt
    }
  });
}

// in the forward pass this was: O = P Kt with P = softmax(scale·Q Ktᵀ, sink); so, with
// Dt = dO·O = Σ_j P_j (dO·Kt_j) = Σ_j P_j dP_j (the sink carries no value; taken from P and dP, so
// the forward's O need not be kept):
//   dP = dO Ktᵀ,  dS = P ∘ (dP − Dt),  dsink −= p_sink·Dt
//   dQ += scale·dS Kt,  dKt = scale·dSᵀ Q + Pᵀ dO   (kv is key and value), scattered to its rows
void attention_backward(float* dq, float* dkv, float* dsink, const float* dout, const float* lse,
                        const float* q, const float* kv, const int* idx, const float* sink, long T, long H, long D,
                        long K, long M, float scale) {
  const long G = std::max(1L, std::min<long>(T, 8));  // query blocks, fixed
  std::vector<std::vector<float>> gkv(G), gsink(G);
  parallel_run(int(G), [&](int g) {
    gkv[g].assign(M * D, 0.f);
    gsink[g].assign(H, 0.f);
    std::vector<int> js;
    // SP [2H, nk]: rows 0..H scale·dS, rows H..2H P; QG [2H, D]: Q_t then dO_t, so that
    // dKt = scale·dSᵀ Q + Pᵀ dO is one GEMM with inner dimension 2H
    std::vector<float> Kt, SP, QG(2 * H * D), dK, Dt(H);
    for (long t = g * T / G; t < (g + 1) * T / G; t++) {
      if ((t & 15) == 0) check_cancel();
      long nk = gather_keys(t, idx, K, kv, D, js, Kt);
      const float* qt = q + t * H * D;
      const float* gt = dout + t * H * D;
      if (nk == 0) continue;  // O = 0: Dt = 0, no gradient
      SP.resize(2 * H * nk), dK.resize(nk * D);
      float *dS = SP.data(), *P = SP.data() + H * nk;
      const WeightRef Kw = f32_matrix(Kt.data(), nk, D);
      gemm_serial(H, nk, D, scale, qt, D, 1, Kw, true, 0.f, P, nk);
      for (long h = 0; h < H; h++) exp_sub_sum(&P[h * nk], nk, lse[t * H + h]);  // P = e^{s − lse}
      gemm_serial(H, nk, D, 1.f, gt, D, 1, Kw, true, 0.f, dS, nk);              // dP = dO Ktᵀ
      for (long h = 0; h < H; h++) {
        Dt[h] = dot(&P[h * nk], &dS[h * nk], nk);
        gsink[g][h] -= std::exp(sink[h] - lse[t * H + h]) * Dt[h];
        for (long j = 0; j < nk; j++) dS[h * nk + j] = scale * (P[h * nk + j] * (dS[h * nk + j] - Dt[h]));  // scale·dS
      }
      gemm_serial(H, D, nk, 1.f, dS, nk, 1, Kw, false, 1.f, dq + t * H * D, D);  // dQ += scale·dS Kt
      std::copy(qt, qt + H * D, QG.data());
      std::copy(gt, gt + H * D, QG.data() + H * D);
      gemm_serial(nk, D, 2 * H, 1.f, SP.data(), 1, nk, f32_matrix(QG.data(), 2 * H, D), false, 0.f, dK.data(), D);
      for (long j = 0; j < nk; j++) axpy(&gkv[g][long(js[j]) * D], 1.f, &dK[j * D], D);
    }
  });
  parallel_run(int(cdiv(M, 64)), [&](int task) {
    for (long r = task * 64L; r < std::min(M, task * 64L + 64); r++)
      for (long g = 0; g < G; g++) axpy(dkv + r * D, 1.f, &gkv[g][r * D], D);
  });
  if (dsink)
    for (long g = 0; g < G; g++)
      for (long h = 0; h < H; h++) dsink[h] += gsink[g][h];
}

}  // namespace v4
