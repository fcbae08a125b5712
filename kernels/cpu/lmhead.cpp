// Chunked LM head + cross-entropy (online softmax over vocabulary chunks).
#include "lmhead.h"
#include "common.h"
#include "gemm.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace v4 {

void lmhead_ce(float* loss, float* dh, const float* h, const WeightRef& W, const int* targets, const float* weights,
               long T, long chunk, int* top1) {
  long d = W.cols, V = W.rows;
  // only counted rows take part (every row when top1 is asked for: the counted ones first, so
  // that a counted row gets the bits it gets without top1)
  std::vector<long> rows;
  for (long t = 0; t < T; t++) {
    loss[t] = 0.f;
    if (weights[t] != 0.f) rows.push_back(t);
  }
  const long counted = long(rows.size());
  if (top1)
    for (long t = 0; t < T; t++)
      if (weights[t] == 0.f) rows.push_back(t);
  long R = long(rows.size());
  if (R == 0) return;
  std::vector<long> best(top1 ? R : 0, 0);
  // At most 2M logits (8 MB) per chunk, whatever the caller allows: the logits block stays in the
  // L3 cache from the first GEMM through the softmax to the second, and the second GEMM's inner
  // dimension (the chunk) stays long enough at 4096 rows (512 vocabulary entries) that acc is not
  // streamed through once per 128 entries (a 512K cap: 174 → 197 GFLOP/s fp32, 263 → 310 bf16 at
  // 4096 × 4096 rows; unchanged at 512)
  chunk = std::min(chunk, (1L << 21) / (counted > 0 ? counted : R));
  chunk = std::max<long>(128, (chunk / 128) * 128);
  // Buffers kept between calls (no fresh pages to fault in every step), borrowed for this call
  V4_SCRATCH_ONE(hr_keep)
  V4_SCRATCH_ONE(acc_keep)
  V4_SCRATCH_ONE(buf_keep)
  hr_keep.resize(R * d);
  acc_keep.resize(dh ? R * d : 0);
  buf_keep.resize(R * std::min(chunk, V));
  float *hr = hr_keep.data(), *acc = acc_keep.data(), *buf = buf_keep.data();
  std::vector<float> mx(R, -INFINITY), sum(R, 0.f), tl(R, 0.f);
  for (long i = 0; i < R; i++) std::memcpy(&hr[i * d], h + rows[i] * d, d * 4);
  for (long v0 = 0; v0 < V; v0 += chunk) {
    check_cancel();
    long vc = std::min(chunk, V - v0);
    WeightRef Wc = weight_rows(W, v0, vc);
    gemm(R, vc, d, 1.f, hr, d, 1, Wc, true, 0.f, buf, vc);
    parallel_run(int(cdiv(R, 16)), [&](int task) {
      for (long i = task * 16L; i < std::min(R, task * 16L + 16); i++) {
        float* l = &buf[i * vc];
        long tg = i < counted ? targets[rows[i]] : -1;
        if (tg >= v0 && tg < v0 + vc) tl[i] = l[tg - v0];
        const float cm = max_of(l, vc);
        // the first index of the largest logit: a later chunk takes over only when strictly larger
        if (top1 && (v0 == 0 || cm > mx[i])) {
          const float* at = std::find(l, l + vc, cm);  // not found: cm is NaN
          if (at != l + vc) best[i] = v0 + (at - l);
        }
        float m = std::fmax(mx[i], cm);
        float rescale = std::exp(mx[i] - m);  // 0 on the first chunk (mx = −inf)
        float s = exp_sub_sum(l, vc, m);
        sum[i] = sum[i] * rescale + s;
        mx[i] = m;
        // acc *= rescale, skipped where the running max held (rescale 1) and on the first
        // chunk, where the GEMM below overwrites acc (beta 0)
        if (dh && v0 > 0 && rescale != 1.f)
          for (long c = 0; c < d; c++) acc[i * d + c] *= rescale;
      }
    });
    if (dh) gemm(R, d, vc, 1.f, buf, vc, 1, Wc, false, v0 == 0 ? 0.f : 1.f, acc, d);  // acc += e^{l−m} W_c
  }
  if (top1) {
    for (long t = 0; t < T; t++) top1[t] = -1;
    for (long i = 0; i < R; i++) top1[rows[i]] = int(best[i]);
  }
  std::vector<float> wt(d);
  for (long i = 0; i < counted; i++) {
    long t = rows[i];
    loss[t] = mx[i] + std::log(sum[i]) - tl[i];
    if (dh) {
      decode_row(W, targets[t], 0, d, wt.data());
      float a = weights[t] / sum[i];
      for (long c = 0; c < d; c++) dh[t * d + c] += a * acc[i * d + c] - weights[t] * wt[c];
    }
  }
}

}  // namespace v4
