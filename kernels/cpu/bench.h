// Measured fp32 FMA peak: independent register-only FMA chains, no memory traffic.
#pragma once
namespace v4 {
// GFLOP/s (an FMA counts 2) over `threads` threads running for about `seconds`, at the
// dispatched instruction set's vector width.
double fma_peak_gflops(int threads, double seconds);
}
