// Sparse sink attention, forward and backward, as small GEMMs per query: the query's kv rows
// are gathered into a contiguous block Kt [nk, D], then S = scale·Q_t Ktᵀ [H, nk] and
// O_t = P Kt run on the packed GEMM (single-threaded inside a task; queries run in parallel).
// In bf16 mode kv is rounded to bf16 once per call and gathered as BF16 rows: the GEMM packs
// their bits straight into pairs — the bits it would round the fp32 rows to, at half the bytes
// gathered and without an fp32 panel per GEMM.
// The backward splits the queries into a fixed number of blocks, each with its own dkv
// accumulator, summed in block order: the result does not depend on the thread count.
#include "attention.h"
#include "common.h"
#include "gemm.h"
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace v4 {

namespace {

// kv as the per-query GEMMs read it: fp32, or (bf16 mode) its bf16 bits
struct KvRows {
  const float* f32;
  std::vector<uint16_t> b16;
  long D;
  KvRows(const float* kv, long M, long D) : f32(kv), D(D) {
    if (!bf16_mode()) return;
    b16.resize(size_t(M) * D);
    parallel_run(int(cdiv(M, 256)), [&](int task) {
      const long r0 = task * 256L, n = std::min(M - r0, 256L);
      round_to_bf16(kv + r0 * D, n * D, b16.data() + r0 * D);
    });
  }
  bool bf16() const { return !b16.empty(); }
};

// the kv rows query t sees, gathered: their count, their rows in js, Kt a weight over them
struct Gathered {
  std::vector<int> js;
  std::vector<float> f32;
  std::vector<uint16_t> b16;
  long gather(long t, const int* idx, long K, const KvRows& kv, WeightRef& Kt) {
    js.clear();
    for (long k = 0; k < K; k++)
      if (idx[t * K + k] >= 0) js.push_back(idx[t * K + k]);
    const long nk = long(js.size()), D = kv.D;
    if (kv.bf16()) {
      b16.resize(std::max(1L, nk) * D);
      for (long j = 0; j < nk; j++) std::copy_n(&kv.b16[size_t(js[j]) * D], D, &b16[j * D]);
      Kt = WeightRef{Fmt::bf16, b16.data(), nullptr, nk, D, D, 0};
    } else {
      f32.resize(std::max(1L, nk) * D);
      for (long j = 0; j < nk; j++) std::copy_n(kv.f32 + long(js[j]) * D, D, &f32[j * D]);
      Kt = f32_matrix(f32.data(), nk, D);
    }
    return nk;
  }
};

// y += +0 element by element (only a -0 changes: to +0)
void add_zero(float* y, long n) {
  for (long i = 0; i < n; i++) y[i] += 0.f;
}

}  // namespace

void attention_forward(float* o, float* lse, const float* q, const float* kv, const int* idx, const float* sink,
                       long T, long H, long D, long K, long M, float scale) {
  const KvRows rows(kv, M, D);
  parallel_run(int(cdiv(T, 4)), [&](int task) {
    check_cancel();
    Gathered g;
    WeightRef Kw;
    std::vector<float> S;
    for (long t = task * 4L; t < std::min(T, task * 4L + 4); t++) {
      long nk = g.gather(t, idx, K, rows, Kw);
      float* ot = o + t * H * D;
      if (nk == 0) {
        std::fill(ot, ot + H * D, 0.f);
        for (long h = 0; h < H; h++) lse[t * H + h] = sink[h];
        continue;
      }
      S.resize(H * nk);
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
  // each block's dkv accumulator, borrowed (kept between calls: no fresh pages to fault in each
  // time): rows come into being when first touched (zeroed, then dK added, as before), so rows a
  // block never sees are never touched at all
  static FloatShelf gkv_shelf;
  std::vector<std::unique_ptr<FloatScratch>> gkv(G);
  for (auto& b : gkv) b = std::make_unique<FloatScratch>(gkv_shelf);
  std::vector<std::vector<uint8_t>> touched(G);
  std::vector<std::vector<float>> gsink(G);
  const KvRows rows(kv, M, D);
  parallel_run(int(G), [&](int g) {
    (*gkv[g])->resize(size_t(M) * D);
    float* const acc_g = (*gkv[g])->data();
    touched[g].assign(M, 0);
    gsink[g].assign(H, 0.f);
    Gathered gk;
    WeightRef Kw;
    const std::vector<int>& js = gk.js;
    // SP [2H, nk]: rows 0..H scale·dS, rows H..2H P; QG [2H, D]: Q_t then dO_t, so that
    // dKt = scale·dSᵀ Q + Pᵀ dO is one GEMM with inner dimension 2H
    std::vector<float> SP, QG(2 * H * D), dK, Dt(H);
    for (long t = g * T / G; t < (g + 1) * T / G; t++) {
      if ((t & 15) == 0) check_cancel();
      long nk = gk.gather(t, idx, K, rows, Kw);
      const float* qt = q + t * H * D;
      const float* gt = dout + t * H * D;
      if (nk == 0) continue;  // O = 0: Dt = 0, no gradient
      SP.resize(2 * H * nk), dK.resize(nk * D);
      float *dS = SP.data(), *P = SP.data() + H * nk;
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
      for (long j = 0; j < nk; j++) {
        float* acc = acc_g + long(js[j]) * D;
        if (!touched[g][js[j]]) std::fill_n(acc, D, 0.f), touched[g][js[j]] = 1;
        axpy(acc, 1.f, &dK[j * D], D);
      }
    }
  });
  parallel_run(int(cdiv(M, 64)), [&](int task) {
    for (long r = task * 64L; r < std::min(M, task * 64L + 64); r++)
      for (long g = 0; g < G; g++) {
        if (touched[g][r]) axpy(dkv + r * D, 1.f, (*gkv[g])->data() + r * D, D);
        else add_zero(dkv + r * D, D);  // what adding a zeroed row did: -0 becomes +0
      }
  });
  if (dsink)
    for (long g = 0; g < G; g++)
      for (long h = 0; h < H; h++) dsink[h] += gsink[g][h];
  // a long sequence's accumulators (over 16 MB each: 8192 kv rows at D 512, 8 of them) are freed
  // rather than kept beside its activations until the next call
  if (size_t(M) * D * sizeof(float) > (size_t(16) << 20))
    for (auto& b : gkv) std::vector<float>().swap(**b);
}

}  // namespace v4
