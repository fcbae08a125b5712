// ISA detection, the thread pool, cancellation and the dispatched vector helpers.
#include "common.h"
#include "vecmath.h"
#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <mutex>
#include <sys/syscall.h>
#include <unistd.h>
#include <thread>
#include <vector>

namespace v4 {

static Isa detect_isa() {
  __builtin_cpu_init();
  Isa best = Isa::scalar;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) best = Isa::avx2;  // V4_AVX2 code uses F16C
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = Isa::avx512;
  if (const char* e = std::getenv("V4TUNE_ISA")) {
    Isa cap = !std::strcmp(e, "scalar") ? Isa::scalar : !std::strcmp(e, "avx2") ? Isa::avx2 : Isa::avx512;
    best = std::min(best, cap);
  }
  return best;
}
static Isa g_cpu_isa = detect_isa();
static std::atomic<int> g_isa{int(g_cpu_isa)};
Isa isa() { return Isa(g_isa.load(std::memory_order_relaxed)); }
void set_isa(Isa i) { g_isa = int(std::min(i, g_cpu_isa)); }
const char* isa_name(Isa i) { return i == Isa::avx512 ? "avx512" : i == Isa::avx2 ? "avx2" : "scalar"; }
bool cpu_has_bf16() {
  __builtin_cpu_init();
  return g_cpu_isa == Isa::avx512 && __builtin_cpu_supports("avx512bf16");
}
static std::atomic<bool> g_bf16{[] {
  const char* e = std::getenv("V4TUNE_BF16");
  return e && std::strcmp(e, "1") == 0 && cpu_has_bf16();
}()};
bool bf16_mode() { return g_bf16.load(std::memory_order_relaxed) && isa() == Isa::avx512; }
void set_bf16_mode(bool on) { g_bf16 = on && cpu_has_bf16(); }

// AMX-BF16 in the CPU, and the tile data state granted to this process by Linux (5.16+:
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) once, for every thread of the process)
bool cpu_has_amx() {
  static const bool ok = [] {
    __builtin_cpu_init();
    if (!cpu_has_bf16() || !__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
    return false;
#endif
  }();
  return ok;
}
static std::atomic<bool> g_amx{[] {
  const char* e = std::getenv("V4TUNE_AMX");
  return !(e && std::strcmp(e, "0") == 0);
}()};
bool amx_mode() { return bf16_mode() && g_amx.load(std::memory_order_relaxed) && cpu_has_amx(); }
void set_amx_mode(bool on) { g_amx = on; }

// ---- thread pool ----
// A job is (function, task count, generation). Workers claim task indices from one 64-bit
// word holding (generation << 32 | next index), so a worker that wakes late, after its job
// ended, fails the generation check and never runs a task of a job that is gone or of the
// next one. The caller returns once every task has finished (done == n), without waiting
// for sleeping workers to check in: on a loaded machine a worker may get its core only
// milliseconds later, and most ops last less than that. Nobody spins: on a shared machine a
// spinning thread takes the core from the one with work.
namespace {
struct Pool {
  std::mutex m;                      // guards job and the condition variables
  std::condition_variable cv_work, cv_done;
  std::vector<std::thread> workers;
  const std::function<void(int)>* job = nullptr;
  std::atomic<uint64_t> claim{0};    // generation << 32 | next task index
  std::atomic<int> ntasks{0};
  std::atomic<int> done{0};
  std::atomic<uint32_t> generation{0};
  bool stop = false;
  std::mutex run_mutex;              // one parallel_run at a time
  int size = 1;

  // Run tasks of generation gen while there are any.
  void drain(uint32_t gen, const std::function<void(int)>& f, int n) {
    for (;;) {
      uint64_t c = claim.load(std::memory_order_acquire);
      if (uint32_t(c >> 32) != gen || int(uint32_t(c)) >= n) return;
      if (!claim.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
      f(int(uint32_t(c)));
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {  // the last task: wake the caller if it sleeps
        std::lock_guard<std::mutex> lk(m);
        cv_done.notify_one();
      }
    }
  }
  void worker() {
    uint32_t seen = 0;
    for (;;) {
      const std::function<void(int)>* f;
      int n;
      uint32_t gen;
      {
        std::unique_lock<std::mutex> lk(m);
        cv_work.wait(lk, [&] { return stop || generation.load(std::memory_order_relaxed) != seen; });
        if (stop) return;
        gen = seen = generation.load(std::memory_order_relaxed);
        f = job;
        n = ntasks.load(std::memory_order_relaxed);
      }
      if (f) drain(gen, *f, n);  // f is only called for a claimed task of generation gen, whose caller is still waiting
    }
  }
  void resize(int n) {
    {
      std::lock_guard<std::mutex> lk(m);
      stop = true;
    }
    cv_work.notify_all();
    for (auto& t : workers) t.join();
    workers.clear();
    stop = false;
    size = std::max(1, n);
    for (int i = 1; i < size; i++) workers.emplace_back([this] { worker(); });
  }
  void run(int n, const std::function<void(int)>& f) {
    if (n <= 0) return;
    std::lock_guard<std::mutex> rl(run_mutex);
    if (workers.empty() || n == 1) {
      for (int i = 0; i < n; i++) f(i);
      return;
    }
    std::exception_ptr err;
    std::mutex err_m;
    std::function<void(int)> guarded = [&](int i) {
      try {
        f(i);
      } catch (...) {
        std::lock_guard<std::mutex> g(err_m);
        if (!err) err = std::current_exception();
      }
    };
    uint32_t gen;
    {
      std::lock_guard<std::mutex> lk(m);
      job = &guarded;
      ntasks.store(n, std::memory_order_relaxed);
      done.store(0, std::memory_order_relaxed);
      gen = generation.load(std::memory_order_relaxed) + 1;
      claim.store(uint64_t(gen) << 32, std::memory_order_release);
      generation.store(gen, std::memory_order_release);
    }
    cv_work.notify_all();
    drain(gen, guarded, n);
    if (done.load(std::memory_order_acquire) < n) {
      std::unique_lock<std::mutex> lk(m);
      cv_done.wait(lk, [&] { return done.load(std::memory_order_acquire) >= n; });
    }
    {
      std::lock_guard<std::mutex> lk(m);
      job = nullptr;
    }
    if (err) std::rethrow_exception(err);
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m);
      stop = true;
    }
    cv_work.notify_all();
    for (auto& t : workers) t.join();
  }
};
int default_threads() {
  if (const char* e = std::getenv("V4TUNE_THREADS")) {
    int n = std::atoi(e);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}
Pool& pool() {
  static Pool* p = [] {
    Pool* q = new Pool();  // leaked on purpose: joining threads during static destruction can hang
    q->resize(default_threads());
    return q;
  }();
  return *p;
}
}  // namespace

int num_threads() { return pool().size; }
void set_num_threads(int n) {
  Pool& p = pool();
  std::lock_guard<std::mutex> rl(p.run_mutex);
  p.resize(n > 0 ? n : default_threads());
}
void parallel_run(int ntasks, const std::function<void(int)>& f) { pool().run(ntasks, f); }

static std::atomic<bool> g_cancel{false};
void request_cancel() { g_cancel = true; }
void clear_cancel() { g_cancel = false; }
void check_cancel() {
  if (g_cancel.load(std::memory_order_relaxed)) throw Cancelled();
}

// ---- vector helpers ----
V4_AVX512 static float dot_512(const float* a, const float* b, long n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  long i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  if (i < n) {
    __mmask16 k = __mmask16((1u << (n - i)) - 1);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
V4_AVX2 static float dot_256(const float* a, const float* b, long n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  s0 = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  float s = _mm_cvtss_f32(h);
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}
static float dot_scalar(const float* a, const float* b, long n) {
  float s[4] = {0, 0, 0, 0};
  long i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; j++) s[j] += a[i + j] * b[i + j];
  float t = (s[0] + s[1]) + (s[2] + s[3]);
  for (; i < n; i++) t += a[i] * b[i];
  return t;
}
float dot(const float* a, const float* b, long n) {
  switch (isa()) {
    case Isa::avx512: return dot_512(a, b, n);
    case Isa::avx2: return dot_256(a, b, n);
    default: return dot_scalar(a, b, n);
  }
}

// dot_512's accumulation for four right-hand sides at once: each keeps its own s0 / s1 and its
// order, so every result is dot_512's bits; a is loaded once for the four
V4_AVX512 static void dot4_512(const float* a, const float* const* b, long n, float* out) {
  __m512 s0[4], s1[4];
  for (int j = 0; j < 4; j++) s0[j] = s1[j] = _mm512_setzero_ps();
  long i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16);
    for (int j = 0; j < 4; j++) {
      s0[j] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b[j] + i), s0[j]);
      s1[j] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b[j] + i + 16), s1[j]);
    }
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 a0 = _mm512_loadu_ps(a + i);
    for (int j = 0; j < 4; j++) s0[j] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b[j] + i), s0[j]);
  }
  if (i < n) {
    __mmask16 k = __mmask16((1u << (n - i)) - 1);
    const __m512 a0 = _mm512_maskz_loadu_ps(k, a + i);
    for (int j = 0; j < 4; j++) s1[j] = _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(k, b[j] + i), s1[j]);
  }
  for (int j = 0; j < 4; j++) out[j] = _mm512_reduce_add_ps(_mm512_add_ps(s0[j], s1[j]));
}
void dot4(const float* a, const float* const* b, long n, float* out) {
  if (isa() == Isa::avx512) return dot4_512(a, b, n, out);
  for (int j = 0; j < 4; j++) out[j] = dot(a, b[j], n);
}

V4_AVX512 static void axpy_512(float* y, float a, const float* x, long n) {
  __m512 va = _mm512_set1_ps(a);
  long i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    __mmask16 k = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
  }
}
V4_AVX2 static void axpy_256(float* y, float a, const float* x, long n) {
  __m256 va = _mm256_set1_ps(a);
  long i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] = std::fma(a, x[i], y[i]);
}
static void axpy_scalar(float* y, float a, const float* x, long n) {
  for (long i = 0; i < n; i++) y[i] = std::fma(a, x[i], y[i]);
}
void axpy(float* y, float a, const float* x, long n) {
  switch (isa()) {
    case Isa::avx512: return axpy_512(y, a, x, n);
    case Isa::avx2: return axpy_256(y, a, x, n);
    default: return axpy_scalar(y, a, x, n);
  }
}
V4_AVX512 static float max_512(const float* x, long n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  long i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
  float r = _mm512_reduce_max_ps(m);
  for (; i < n; i++) r = std::fmax(r, x[i]);
  return r;
}
float max_of(const float* x, long n) {
  if (isa() == Isa::avx512) return max_512(x, n);
  float r = -INFINITY;
  for (long i = 0; i < n; i++) r = std::fmax(r, x[i]);
  return r;
}

V4_AVX512 static float exp_sub_sum_512(float* x, long n, float m) {
  __m512 vm = _mm512_set1_ps(m), s = _mm512_setzero_ps();
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 e = exp_512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(x + i, e);
    s = _mm512_add_ps(s, e);
  }
  if (i < n) {
    __mmask16 k = __mmask16((1u << (n - i)) - 1);
    __m512 e = exp_512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
    _mm512_mask_storeu_ps(x + i, k, e);
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(k, e));
  }
  return _mm512_reduce_add_ps(s);
}
float exp_sub_sum(float* x, long n, float m) {
  if (isa() == Isa::avx512) return exp_sub_sum_512(x, n, m);
  float s = 0.f;
  for (long i = 0; i < n; i++) s += (x[i] = std::exp(x[i] - m));
  return s;
}

}  // namespace v4
