// The slice of CANN's ACL runtime that the Ascend backend calls, as a table of function pointers
// filled at run time (dlopen of libascendcl.so and of the kernel library that
// kernels/ascend/CMakeLists.txt builds), so the addon compiles and loads without CANN. Tests fill
// the same table with a fake (host memory, the shim-built kernels) — test/backend/ascend/fake_acl.cc.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace v4ascend {

using aclError = int32_t;
using aclrtStream = void*;
using aclrtEvent = void*;
enum AclMemcpyKind : int32_t { kHostToHost = 0, kHostToDevice = 1, kDeviceToHost = 2, kDeviceToDevice = 3 };
constexpr int32_t kMallocHugeFirst = 0;  // ACL_MEM_MALLOC_HUGE_FIRST

// aclnn's opaque objects and the enum values v4tune passes (acl_base.h: ACL_FLOAT, ACL_FORMAT_ND)
using aclTensor = void;
using aclTensorList = void;
using aclOpExecutor = void;
constexpr int32_t kAclFloat = 0;
constexpr int32_t kAclFormatNd = 2;

// A kernel's launcher, as CANN's ascendc_library generates it (aclrtlaunch_<kernel>):
// the kernel runs on blockDim cores in stream order; args and tiling are device addresses.
using KernelLaunch = uint32_t (*)(uint32_t blockDim, aclrtStream stream, void* args, void* tiling);

struct AclApi {
  aclError (*aclInit)(const char* configPath);
  aclError (*aclrtGetDeviceCount)(uint32_t* count);
  aclError (*aclrtSetDevice)(int32_t deviceId);
  aclError (*aclrtResetDevice)(int32_t deviceId);
  aclError (*aclrtMalloc)(void** devPtr, size_t size, int32_t policy);
  aclError (*aclrtFree)(void* devPtr);
  aclError (*aclrtMemcpyAsync)(void* dst, size_t destMax, const void* src, size_t count, int32_t kind, aclrtStream stream);
  aclError (*aclrtMemsetAsync)(void* devPtr, size_t maxCount, int32_t value, size_t count, aclrtStream stream);
  aclError (*aclrtCreateStream)(aclrtStream* stream);
  aclError (*aclrtDestroyStream)(aclrtStream stream);
  aclError (*aclrtSynchronizeStream)(aclrtStream stream);
  aclError (*aclrtCreateEvent)(aclrtEvent* event);
  aclError (*aclrtDestroyEvent)(aclrtEvent event);
  aclError (*aclrtRecordEvent)(aclrtEvent event, aclrtStream stream);
  aclError (*aclrtStreamWaitEvent)(aclrtStream stream, aclrtEvent event);
  const char* (*aclGetRecentErrMsg)();
  // aclnn (libnnopbase.so, libopapi.so): null where this CANN lacks them (grouped matmul then
  // falls back to the project's kernels)
  aclTensor* (*aclCreateTensor)(const int64_t* viewDims, uint64_t viewDimsNum, int32_t dataType, const int64_t* stride,
                                int64_t offset, int32_t format, const int64_t* storageDims, uint64_t storageDimsNum,
                                void* tensorData);
  aclTensorList* (*aclCreateTensorList)(const aclTensor* const* value, uint64_t size);
  aclError (*aclDestroyTensorList)(const aclTensorList* list);
  aclError (*aclnnGroupedMatmulV4GetWorkspaceSize)(
      const aclTensorList* x, const aclTensorList* weight, const aclTensorList* biasOptional,
      const aclTensorList* scaleOptional, const aclTensorList* offsetOptional, const aclTensorList* antiquantScaleOptional,
      const aclTensorList* antiquantOffsetOptional, const aclTensorList* perTokenScaleOptional, const aclTensor* groupListOptional,
      const aclTensorList* activationInputOptional, const aclTensorList* activationQuantScaleOptional,
      const aclTensorList* activationQuantOffsetOptional, int64_t splitItem, int64_t groupType, int64_t groupListType,
      int64_t actType, aclTensorList* out, aclTensorList* activationFeatureOutOptional, aclTensorList* dynQuantScaleOutOptional,
      uint64_t* workspaceSize, aclOpExecutor** executor);
  aclError (*aclnnGroupedMatmulV4)(void* workspace, uint64_t workspaceSize, aclOpExecutor* executor, aclrtStream stream);
  // the project's kernels (kernels/ascend/)
  KernelLaunch routedExpertsForward, routedExpertsBackward, linearForward, linearBackward, sinkhornBackward;
};

// An ACL call that failed: the call, the code's name and what it means, and CANN's own message.
struct AclError : std::runtime_error {
  AclError(const std::string& m, int32_t c) : std::runtime_error(m), code(c) {}
  int32_t code;
};
// "ACL_ERROR_RT_MEMORY_ALLOCATION (207001): the device is out of memory" for every code CANN
// documents for the runtime and the ACL base; unknown codes say so with their number.
std::string acl_error_text(int32_t code);
// Throws AclError("<call> failed: <acl_error_text> [CANN: <recent message>]") when code != 0.
void acl_check(const AclApi& api, aclError code, const char* call);

// Fills api from libascendcl.so (the system's, or under ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME),
// libnnopbase.so and libopapi.so when present (aclnn), and the kernel library kernelLib.
// ok false: reason says in one line what is missing.
struct AclLoad {
  bool ok = false;
  std::string reason;
  AclApi api{};
};
AclLoad load_acl(const std::string& kernelLib);

}  // namespace v4ascend
