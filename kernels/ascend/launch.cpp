// The device build's one translation unit (kernels/ascend/CMakeLists.txt): the kernels, and a
// host launcher per kernel with the signature native/ascend_acl.h loads by name
// (aclrtlaunch_<kernel>: blockDim cores, in stream order, args and tiling in device memory).
#include "expert_lora.cpp"
#include "linear_lora.cpp"
#include "sinkhorn.cpp"

#define V4_LAUNCHER(kernel)                                                                        \
  extern "C" uint32_t aclrtlaunch_##kernel(uint32_t blockDim, void* stream, void* args, void* tiling) { \
    kernel<<<blockDim, nullptr, stream>>>(reinterpret_cast<GM_ADDR>(args), reinterpret_cast<GM_ADDR>(tiling)); \
    return 0;                                                                                      \
  }
V4_LAUNCHER(v4_routed_experts_forward)
V4_LAUNCHER(v4_routed_experts_backward)
V4_LAUNCHER(v4_linear_forward)
V4_LAUNCHER(v4_linear_backward)
V4_LAUNCHER(v4_sinkhorn_backward)
