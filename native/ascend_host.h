// The Ascend backend's host side: one device, its streams and memory, and the fused LoRA ops with
// the signatures of the CPU kernels (kernels/cpu/lora.h, mhc.h), run by the Ascend C kernels in
// kernels/ascend/ through an AclApi table (the real runtime, or the tests' fake).
//
// The linear ops take an F32 base through CANN's aclnn grouped matmul where it is loaded (FP8 / FP4
// bases, which it does not take, through the project's kernels). Every op: its inputs go up on the copy stream, the kernel waits for them (an event) on the
// compute stream, the results come down on the copy stream after the kernel (another event), and
// the op returns when they are on the host. Outputs accumulate (+=) into the host arrays, as the
// CPU kernels' do. Base weights stay on the device between ops, cached by their host address and
// a fingerprint of their bytes (a host buffer freed and reused for another weight is uploaded
// again; one rewritten in place between ops is not seen: base weights are frozen); everything else
// an op allocates is freed before it returns. Ops may come from any thread (each
// makes the device current on its thread) and run one at a time.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>
#include "ascend_acl.h"
#include "kernel_args.h"
#include "lora.h"

namespace v4ascend {

// Tiling that fits one 910B / A3 AI core (kernels/ascend/README.md gives the arithmetic).
Tiling default_tiling();
// Tokens per Sinkhorn chunk that fit the Unified Buffer for n × n matrices and iters rounds.
int32_t sinkhorn_tokens(int32_t n, int32_t iters, uint32_t ubBytes);

class Device {
 public:
  // deviceId: the NPU; blockDim: AI cores a kernel runs on.
  Device(const AclApi& api, int32_t deviceId, uint32_t blockDim);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  Tiling tiling = default_tiling();

  void routed_experts_forward(float* out, const float* x, long T, long d, long I, const int* idx, const int* off, const float* w,
                      const v4::Expert* experts, long E, float L);
  void routed_experts_backward(float* dx, float* dw, const v4::ExpertGrads* grads, const float* dout, const float* x, long T, long d,
                       long I, const int* idx, const int* off, const float* w, const v4::Expert* experts, long E, float L);
  void linear_forward(float* y, const float* x, const v4::WeightRef& W, const float* A, const float* B, long r, float s,
                      long T, long G);
  void linear_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const v4::WeightRef& W,
                       const float* A, const float* B, long r, float s, long T, long G);
  void sinkhorn_backward(float* dL, const float* dC, const float* L, long T, int n, int iters, float eps);

  // Device memory held now: cached base weights, and per-op buffers (0 between ops).
  size_t weight_bytes() const { return weightBytes_; }
  size_t op_bytes() const { return opBytes_; }
  // Free the cached base weights.
  void release_weights();
  // Whether CANN's aclnn grouped matmul was loaded (it takes the F32 base of the linear ops).
  bool grouped_matmul_available() const {
    return api_.aclCreateTensor && api_.aclCreateTensorList && api_.aclDestroyTensorList &&
           api_.aclnnGroupedMatmulV4GetWorkspaceSize && api_.aclnnGroupedMatmulV4;
  }

 private:
  friend class Op;
  void* alloc(size_t bytes, size_t& counter);
  void free(void* p, size_t bytes, size_t& counter) noexcept;
  // The device copy of a base weight (uploaded on first use); fills d.
  WeightDesc weight(const v4::WeightRef& W, const char* what);

  const AclApi& api_;
  int32_t device_;
  uint32_t blockDim_;
  aclrtStream copy_ = nullptr, compute_ = nullptr;
  aclrtEvent inputsReady_ = nullptr, kernelDone_ = nullptr;
  struct Cached {
    void* data;
    void* scale;
    size_t dataBytes, scaleBytes;
    uint64_t fingerprint;  // of the host bytes it was uploaded from (weight_fingerprint)
  };
  std::map<const void*, Cached> weights_;
  size_t weightBytes_ = 0, opBytes_ = 0;
  std::mutex busy_;  // one op at a time: the streams, events and weight cache are shared
};

}  // namespace v4ascend
