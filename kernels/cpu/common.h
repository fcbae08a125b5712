// Shared pieces of the CPU kernels: instruction-set dispatch, the persistent thread pool,
// cooperative cancellation, and small vector helpers (dot, axpy) dispatched at run time.
// Kernels are compiled with baseline flags; the AVX2 / AVX-512 paths carry per-function
// target attributes and are chosen once at start-up, so one binary runs on any x86-64.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>

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
void axpy(float* y, float a, const float* x, long n);       // y += a x
float max_of(const float* x, long n);                        // max x[i] (−inf when n = 0)
float exp_sub_sum(float* x, long n, float m);                // x[i] = e^(x[i] − m); returns Σ x[i]

inline long cdiv(long a, long b) { return (a + b - 1) / b; }

}  // namespace v4
