// Softmax pooling per channel over each entry's rows. Each (row, channel) feeds exactly one
// entry, so both passes split over entries without write conflicts.
#include "compressor.h"
#include "common.h"
#include <cmath>
#include <vector>

namespace v4 {

long compressor_entries(const int* segs, long nseg, long ratio) {
  long s = 0;
  for (long i = 0; i < nseg; i++) s += segs[i] / ratio;
  return s;
}

// entry e: its segment start row and its window index inside the segment
struct Entry {
  long start, win;
};
static std::vector<Entry> entries(const int* segs, long nseg, long ratio) {
  std::vector<Entry> es;
  long start = 0;
  for (long i = 0; i < nseg; i++) {
    for (long w = 0; w < segs[i] / ratio; w++) es.push_back({start, w});
    start += segs[i];
  }
  return es;
}

// the rows pooled by entry e, as (row, channel offset, ape row) triples; calls f(row, off, pos)
template <class F>
static void pooled_rows(const Entry& e, long ratio, long hd, bool overlap, F f) {
  if (overlap && e.win > 0)
    for (long k = 0; k < ratio; k++) f(e.start + (e.win - 1) * ratio + k, 0L, k);
  for (long k = 0; k < ratio; k++) f(e.start + e.win * ratio + k, overlap ? hd : 0L, k);
}

void compressor_forward(float* out, const float* a, const float* z, const float* ape, const int* segs, long nseg,
                        long ratio, long hd, bool overlap) {
  const long W = overlap ? 2 * hd : hd;
  std::vector<Entry> es = entries(segs, nseg, ratio);
  parallel_run(int(es.size()), [&](int i) {
    std::vector<float> m(hd, -INFINITY), s(hd, 0.f), acc(hd, 0.f);
    pooled_rows(es[i], ratio, hd, overlap, [&](long t, long off, long pos) {
      for (long c = 0; c < hd; c++) m[c] = std::fmax(m[c], z[t * W + off + c] + ape[pos * W + off + c]);
    });
    pooled_rows(es[i], ratio, hd, overlap, [&](long t, long off, long pos) {
      for (long c = 0; c < hd; c++) {
        float e = std::exp(z[t * W + off + c] + ape[pos * W + off + c] - m[c]);
        s[c] += e;
        acc[c] += e * a[t * W + off + c];
      }
    });
    for (long c = 0; c < hd; c++) out[i * hd + c] = acc[c] / s[c];
  });
}

// in the forward pass this was: out = Σ_t p_t a_t with p = softmax_t(z'); so
//   da_t += p_t dout,  dz_t += p_t (a_t − out) dout
void compressor_backward(float* da, float* dz, const float* dout, const float* a, const float* z, const float* ape,
                         const int* segs, long nseg, long ratio, long hd, bool overlap) {
  const long W = overlap ? 2 * hd : hd;
  std::vector<Entry> es = entries(segs, nseg, ratio);
  parallel_run(int(es.size()), [&](int i) {
    std::vector<float> m(hd, -INFINITY), s(hd, 0.f), o(hd, 0.f);
    pooled_rows(es[i], ratio, hd, overlap, [&](long t, long off, long pos) {
      for (long c = 0; c < hd; c++) m[c] = std::fmax(m[c], z[t * W + off + c] + ape[pos * W + off + c]);
    });
    pooled_rows(es[i], ratio, hd, overlap, [&](long t, long off, long pos) {
      for (long c = 0; c < hd; c++) {
        float e = std::exp(z[t * W + off + c] + ape[pos * W + off + c] - m[c]);
        s[c] += e;
        o[c] += e * a[t * W + off + c];
      }
    });
    for (long c = 0; c < hd; c++) o[c] /= s[c];
    const float* g = dout + i * hd;
    pooled_rows(es[i], ratio, hd, overlap, [&](long t, long off, long pos) {
      for (long c = 0; c < hd; c++) {
        float p = std::exp(z[t * W + off + c] + ape[pos * W + off + c] - m[c]) / s[c];
        if (da) da[t * W + off + c] += p * g[c];
        if (dz) dz[t * W + off + c] += p * (a[t * W + off + c] - o[c]) * g[c];
      }
    });
  });
}

}  // namespace v4
