// Sparse sink attention, forward and backward. The forward splits over queries. The backward
// splits over fixed head groups (independent of the thread count), each with its own dkv
// accumulator, summed in group order: the result does not depend on the thread count.
#include "attention.h"
#include "common.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace v4 {


void attention_forward(float* o, float* lse, const float* q, const float* kv, const int* idx, const float* sink,
                       long T, long H, long D, long K, float scale) {
  parallel_run(int(cdiv(T, 8)), [&](int task) {
    check_cancel();
    std::vector<float> s;
    for (long t = task * 8L; t < std::min(T, task * 8L + 8); t++) {
      const int* it = idx + t * K;
      s.resize(K);
      auto key = [&](long j) { return kv + long(it[j]) * D; };
      for (long h = 0; h < H; h++) {
        const float* qh = q + (t * H + h) * D;
        float m = sink[h];
        for (long j = 0; j < K; j++)
          if (it[j] >= 0) m = std::fmax(m, s[j] = scale * dot(qh, key(j), D));
        float z = std::exp(sink[h] - m);
        for (long j = 0; j < K; j++)
          if (it[j] >= 0) z += (s[j] = std::exp(s[j] - m));
        float* oh = o + (t * H + h) * D;
        std::fill(oh, oh + D, 0.f);
        for (long j = 0; j < K; j++)
          if (it[j] >= 0) axpy(oh, s[j] / z, key(j), D);
        lse[t * H + h] = m + std::log(z);
      }
    }
  });
}

// in the forward pass this was: o = Σ_j p_j kv_j with p = softmax(s, sink); so, with Dt = dout·o,
//   dp_j = dout·kv_j,  ds_j = p_j (dp_j − Dt),  dsink −= p_sink·Dt
//   dq += scale Σ_j ds_j kv_j,  dkv_j += scale ds_j q + p_j dout   (kv is key and value)
void attention_backward(float* dq, float* dkv, float* dsink, const float* dout, const float* o, const float* lse,
                        const float* q, const float* kv, const int* idx, const float* sink, long T, long H, long D,
                        long K, long M, float scale) {
  const long G = std::min<long>(H, 8);  // head groups, fixed
  std::vector<std::vector<float>> gkv(G);
  parallel_run(int(G), [&](int g) {
    gkv[g].assign(M * D, 0.f);
    for (long t = 0; t < T; t++) {
      if ((t & 63) == 0) check_cancel();
      const int* it = idx + t * K;
      for (long h = g; h < H; h += G) {
        const float* qh = q + (t * H + h) * D;
        const float* gh = dout + (t * H + h) * D;
        float* dqh = dq + (t * H + h) * D;
        float l = lse[t * H + h];
        float Dt = dot(gh, o + (t * H + h) * D, D);
        if (dsink) dsink[h] -= std::exp(sink[h] - l) * Dt;
        for (long j = 0; j < K; j++) {
          if (it[j] < 0) continue;
          const float* kj = kv + long(it[j]) * D;
          float pj = std::exp(scale * dot(qh, kj, D) - l);
          float ds = pj * (dot(gh, kj, D) - Dt);
          axpy(dqh, scale * ds, kj, D);
          float* dk = &gkv[g][long(it[j]) * D];
          axpy(dk, scale * ds, qh, D);
          axpy(dk, pj, gh, D);
        }
      }
    }
  });
  parallel_run(int(cdiv(M, 64)), [&](int task) {
    for (long r = task * 64L; r < std::min(M, task * 64L + 64); r++)
      for (long g = 0; g < G; g++) axpy(dkv + r * D, 1.f, &gkv[g][r * D], D);
  });
}

}  // namespace v4
