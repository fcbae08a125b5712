// Indexer scores for a chunk of queries come from one GEMM against the chunk's visible entry
// range; the weighted ReLU sum and the selection then run per query.
#include "indexer.h"
#include "common.h"
#include "gemm.h"
#include <algorithm>
#include <numeric>
#include <vector>

namespace v4 {

void indexer_topk(int* idx, const float* q, const float* k, const float* w, const int* kStart, const int* kCount,
                  long T, long M, long nh, long hd, long K) {
  (void)M;
  const long CH = 32;
  std::vector<float> buf;
  for (long t0 = 0; t0 < T; t0 += CH) {
    check_cancel();
    long n = std::min(CH, T - t0), lo = -1, hi = -1;
    for (long t = t0; t < t0 + n; t++) {
      if (kCount[t] <= 0) continue;
      lo = lo < 0 ? kStart[t] : std::min<long>(lo, kStart[t]);
      hi = std::max<long>(hi, kStart[t] + kCount[t]);
    }
    long R = hi - lo;
    if (lo >= 0) {
      buf.resize(n * nh * R);
      gemm(n * nh, R, hd, 1.f, q + t0 * nh * hd, hd, 1, f32_matrix(k + lo * hd, R, hd), true, 0.f, buf.data(), R);
    }
    parallel_run(int(n), [&](int i) {
      long t = t0 + i, c = std::max(0, kCount[t]), take = std::min(K, c);
      int* out = idx + t * K;
      std::fill(out, out + K, -1);
      if (take == 0) return;
      std::vector<float> sc(c, 0.f);
      for (long h = 0; h < nh; h++) {
        const float* row = &buf[(i * nh + h) * R + (kStart[t] - lo)];
        float wh = w[t * nh + h];
        for (long s = 0; s < c; s++) sc[s] += wh * std::max(0.f, row[s]);
      }
      std::vector<int> cand(c);
      std::iota(cand.begin(), cand.end(), 0);
      if (take < c)
        std::partial_sort(cand.begin(), cand.begin() + take, cand.end(),
                          [&](int a, int b) { return sc[a] > sc[b] || (sc[a] == sc[b] && a < b); });
      for (long j = 0; j < take; j++) out[j] = kStart[t] + cand[j];
    });
  }
}

}  // namespace v4
