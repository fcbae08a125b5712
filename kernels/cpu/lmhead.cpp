// Chunked LM head + cross-entropy (online softmax over vocabulary chunks).
#include "lmhead.h"
#include "common.h"
#include "gemm.h"
#include <cmath>
#include <cstring>
#include <vector>

namespace v4 {

void lmhead_ce(float* loss, float* dh, const float* h, const WeightRef& W, const int* targets, const float* weights,
               long T, long chunk) {
  long d = W.cols, V = W.rows;
  chunk = std::max<long>(128, (chunk / 128) * 128);
  // only counted rows take part
  std::vector<long> rows;
  for (long t = 0; t < T; t++) {
    loss[t] = 0.f;
    if (weights[t] != 0.f) rows.push_back(t);
  }
  long R = long(rows.size());
  if (R == 0) return;
  std::vector<float> hr(R * d), acc(dh ? R * d : 0), buf(R * std::min(chunk, V));
  std::vector<float> mx(R, -INFINITY), sum(R, 0.f), tl(R, 0.f);
  for (long i = 0; i < R; i++) std::memcpy(&hr[i * d], h + rows[i] * d, d * 4);
  for (long v0 = 0; v0 < V; v0 += chunk) {
    check_cancel();
    long vc = std::min(chunk, V - v0);
    WeightRef Wc = weight_rows(W, v0, vc);
    gemm(R, vc, d, 1.f, hr.data(), d, 1, Wc, true, 0.f, buf.data(), vc);
    parallel_run(int(cdiv(R, 16)), [&](int task) {
      for (long i = task * 16L; i < std::min(R, task * 16L + 16); i++) {
        float* l = &buf[i * vc];
        long tg = targets[rows[i]];
        if (tg >= v0 && tg < v0 + vc) tl[i] = l[tg - v0];
        float m = std::fmax(mx[i], max_of(l, vc));
        float rescale = std::exp(mx[i] - m);  // 0 on the first chunk (mx = −inf)
        float s = exp_sub_sum(l, vc, m);
        sum[i] = sum[i] * rescale + s;
        mx[i] = m;
        if (dh)
          for (long c = 0; c < d; c++) acc[i * d + c] *= rescale;
      }
    });
    if (dh) gemm(R, d, vc, 1.f, buf.data(), vc, 1, Wc, false, 1.f, acc.data(), d);  // acc += e^{l−m} W_c
  }
  std::vector<float> wt(d);
  for (long i = 0; i < R; i++) {
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
