// Shared pieces of the CPU kernels: instruction-set dispatch, the persistent thread pool,
// cooperative cancellation, and small vector helpers (dot, axpy) dispatched at run time.
// Kernels are compiled with baseline flags; the AVX2 / AVX-512 paths carry per-function
// target attributes and are chosen once at start-up, so one binary runs on any x86-64.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#define V4_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define V4_AVX2 __attribute__((target("avx2,fma,f16c")))
#define V4_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

namespace v4 {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

// The widest instruction set this CPU supports (V4TUNE_ISA=scalar|avx2|avx512 caps it).
Isa isa();
const char* isa_name(Isa i);
bool cpu_has_bf16();
void set_isa(Isa i);  // cap the dispatch (tests compare paths); clamped to what the CPU has

// bf16 dot products in the GEMM (opt-in speed mode): inputs rounded to bf16, fp32 accumulate.
bool bf16_mode();
void set_bf16_mode(bool on);

// AMX tiles for bf16 mode's GEMM (CPUs with AMX-BF16 whose kernel grants the tile state;
// V4TUNE_AMX=0 at start, or set_amx_mode(false), keeps the AVX512-BF16 dot products).
bool cpu_has_amx();
bool amx_mode();  // bf16 mode is on and runs on AMX tiles
void set_amx_mode(bool on);

// ---- thread pool ----
// A persistent pool sized to the cores (V4TUNE_THREADS overrides). run(n, f) calls f(i) for
// i in [0, n) across the pool (the calling thread helps) and returns when all are done.
// Results never depend on which thread ran a task: every kernel partitions its work so that
// each output element is written by one task with a fixed reduction order.
int num_threads();
void set_num_threads(int n);
void parallel_run(int ntasks, const std::function<void(int)>& f);

// ---- cancellation ----
// Long kernels poll this between units of work; a cancelled kernel throws Cancelled.
struct Cancelled : std::runtime_error { Cancelled() : std::runtime_error("v4tune: kernel cancelled") {} };
void request_cancel();
void clear_cancel();
void check_cancel();

// ---- vector helpers (dispatched) ----
float dot(const float* a, const float* b, long n);          // Σ a[i] b[i]
// out[j] = dot(a, b[j], n) for j < 4, bit for bit, with a read once for the four
void dot4(const float* a, const float* const* b, long n, float* out);
void axpy(float* y, float a, const float* x, long n);       // y += a x
float max_of(const float* x, long n);                        // max x[i] (−inf when n = 0)
float exp_sub_sum(float* x, long n, float m);                // x[i] = e^(x[i] − m); returns Σ x[i]

inline long cdiv(long a, long b) { return (a + b - 1) / b; }

// ---- scratch kept between calls ----
// The reusable buffers of one call site, shared by every thread: a call borrows one for its
// length and puts it back, so a buffer keeps its pages from call to call (no zero-fill, no page
// faults) and there are only as many as calls run at once. thread_local buffers would be kept
// once per thread that ever ran the call, and node's libuv pool runs addon jobs on four threads:
// at 4096 tokens that held the shared expert's and the GEMM's row-sized scratch four times over.
// A buffer over kShelfKeepBytes is freed when put back: buffers that large scale with the
// sequence (rows × width) and kept they would sit idle beside the activations of a long one
// (at flash width the largest, the GEMM's packed A for wq_b's input gradient, is 512 MB at 4096
// tokens: kept, as everything up to 4096 tokens; at 16384 tokens the routed experts' and most
// row-sized buffers are freed and faulted in again, about 2 % of the step).
constexpr size_t kShelfKeepBytes = size_t(512) << 20;
template <class T>
size_t shelf_bytes(const std::vector<T>& v) { return v.capacity() * sizeof(T); }
template <class Buf>
class Shelf {
 public:
  Buf take() {
    std::lock_guard<std::mutex> lock(m_);
    if (free_.empty()) return Buf{};
    Buf b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void give(Buf&& b) {
    if (shelf_bytes(b) > kShelfKeepBytes) return;  // freed with b
    std::lock_guard<std::mutex> lock(m_);
    free_.push_back(std::move(b));
  }

 private:
  std::mutex m_;
  std::vector<Buf> free_;
};

// A buffer borrowed from a shelf for the life of this object.
template <class Buf>
class Borrowed {
 public:
  explicit Borrowed(Shelf<Buf>& s) : shelf_(s), buf_(s.take()) {}
  ~Borrowed() { shelf_.give(std::move(buf_)); }
  Borrowed(const Borrowed&) = delete;
  Borrowed& operator=(const Borrowed&) = delete;
  Buf& operator*() { return buf_; }
  Buf* operator->() { return &buf_; }

 private:
  Shelf<Buf>& shelf_;
  Buf buf_;
};
using FloatShelf = Shelf<std::vector<float>>;
using FloatScratch = Borrowed<std::vector<float>>;
using DoubleShelf = Shelf<std::vector<double>>;
using DoubleScratch = Borrowed<std::vector<double>>;
// `V4_SCRATCH_ONE(a)` declares std::vector<float>& a: a buffer borrowed from this line's own
// shelf until the end of the enclosing scope.
#define V4_SCRATCH_ONE(name) \
  static ::v4::FloatShelf name##_shelf; \
  ::v4::FloatScratch name##_lease(name##_shelf); \
  std::vector<float>& name = *name##_lease;

}  // namespace v4
