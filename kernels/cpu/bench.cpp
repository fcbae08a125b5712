// The FMA peak loop behind bench/kernels.mjs: 16 independent accumulator chains per thread
// (enough to cover FMA latency × issue width on current cores), registers only.
#include "bench.h"
#include "common.h"
#include <immintrin.h>
#include <chrono>
#include <thread>
#include <vector>

namespace v4 {

V4_AVX512 static float chains_512(long iters) {
  __m512 acc[16];
  for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}
V4_AVX2 static float chains_256(long iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  float t[8], s = 0;
  for (int i = 0; i < 12; i++) {
    _mm256_storeu_ps(t, acc[i]);
    for (float v : t) s += v;
  }
  return s;
}

double fma_peak_gflops(int threads, double seconds) {
  const Isa i = isa();
  const long flops_per_iter = i == Isa::avx512 ? 16 * 16 * 2 : i == Isa::avx2 ? 12 * 8 * 2 : 2;
  auto run = [&](long iters) {
    volatile float sink = 0;
    if (i == Isa::avx512) sink = chains_512(iters);
    else if (i == Isa::avx2) sink = chains_256(iters);
    else {
      float s = 0;
      for (long k = 0; k < iters; k++) s = s * 0.999999f + 1e-7f;
      sink = s;
    }
    (void)sink;
  };
  // calibrate on one thread, then run all threads for the target time
  long iters = 1 << 16;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    run(iters);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 0.05) {
      iters = long(iters * seconds / dt);
      break;
    }
    iters *= 4;
  }
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; t++) ts.emplace_back([&] { run(iters); });
  for (auto& t : ts) t.join();
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(iters) * flops_per_iter * threads / dt / 1e9;
}

}  // namespace v4
