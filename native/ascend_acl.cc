// ACL error codes → messages, and the run-time loading of libascendcl.so and the kernel library.
#include "ascend_acl.h"
#include <dlfcn.h>
#include <cstdlib>
#include <vector>

namespace v4ascend {

namespace {
struct Code {
  int32_t code;
  const char* name;
  const char* meaning;
};
// acl_base.h and rt_error_codes.h of CANN
const Code kCodes[] = {
    {0, "ACL_SUCCESS", "success"},
    {100000, "ACL_ERROR_INVALID_PARAM", "a parameter of the call is invalid"},
    {100001, "ACL_ERROR_UNINITIALIZE", "ACL is not initialised (aclInit was not called)"},
    {100002, "ACL_ERROR_REPEAT_INITIALIZE", "ACL is initialised twice"},
    {100003, "ACL_ERROR_INVALID_FILE", "a file is invalid or missing"},
    {100004, "ACL_ERROR_WRITE_FILE", "a file could not be written"},
    {100005, "ACL_ERROR_INVALID_FILE_SIZE", "a file has an invalid size"},
    {100006, "ACL_ERROR_PARSE_FILE", "a file could not be parsed"},
    {100007, "ACL_ERROR_FILE_MISSING_ATTR", "a file misses an attribute"},
    {100008, "ACL_ERROR_FILE_ATTR_INVALID", "a file has an invalid attribute"},
    {100009, "ACL_ERROR_INVALID_DUMP_CONFIG", "the dump configuration is invalid"},
    {100010, "ACL_ERROR_INVALID_PROFILING_CONFIG", "the profiling configuration is invalid"},
    {200000, "ACL_ERROR_BAD_ALLOC", "host memory allocation failed"},
    {200001, "ACL_ERROR_API_NOT_SUPPORT", "this API is not supported on this device"},
    {200002, "ACL_ERROR_INVALID_DEVICE", "the device is invalid"},
    {200003, "ACL_ERROR_MEMORY_ADDRESS_UNALIGNED", "a memory address is not aligned"},
    {200004, "ACL_ERROR_RESOURCE_NOT_MATCH", "resources do not match"},
    {200005, "ACL_ERROR_INVALID_RESOURCE_HANDLE", "a resource handle is invalid"},
    {200006, "ACL_ERROR_FEATURE_UNSUPPORTED", "the feature is not supported"},
    {300000, "ACL_ERROR_STORAGE_OVER_LIMIT", "storage is over its limit"},
    {500000, "ACL_ERROR_INTERNAL_ERROR", "ACL internal error"},
    {500001, "ACL_ERROR_FAILURE", "ACL failure"},
    {500002, "ACL_ERROR_GE_FAILURE", "graph engine failure"},
    {500003, "ACL_ERROR_RT_FAILURE", "runtime failure"},
    {500004, "ACL_ERROR_DRV_FAILURE", "driver failure"},
    {107000, "ACL_ERROR_RT_PARAM_INVALID", "a runtime parameter is invalid"},
    {107001, "ACL_ERROR_RT_INVALID_DEVICEID", "the device id does not exist (see npu-smi info)"},
    {107002, "ACL_ERROR_RT_CONTEXT_NULL", "no current context (aclrtSetDevice was not called on this thread)"},
    {107003, "ACL_ERROR_RT_STREAM_CONTEXT", "the stream is not in the current context"},
    {107008, "ACL_ERROR_RT_ADDR_UNALIGNED", "a memory address is not aligned"},
    {107016, "ACL_ERROR_RT_INVALID_MEMORY_TYPE", "the memory type is invalid"},
    {107017, "ACL_ERROR_RT_INVALID_HANDLE", "a handle is invalid"},
    {207000, "ACL_ERROR_RT_FEATURE_NOT_SUPPORT", "the runtime does not support this feature"},
    {207001, "ACL_ERROR_RT_MEMORY_ALLOCATION", "device memory allocation failed (the device is out of memory)"},
    {207002, "ACL_ERROR_RT_MEMORY_FREE", "device memory could not be freed (not allocated, or freed twice)"},
    {207003, "ACL_ERROR_RT_AICORE_OVER_FLOW", "an AI core computation overflowed"},
    {207004, "ACL_ERROR_RT_NO_DEVICE", "no Ascend device is visible"},
    {207005, "ACL_ERROR_RT_RESOURCE_ALLOC_FAIL", "a runtime resource could not be allocated"},
    {207006, "ACL_ERROR_RT_NO_PERMISSION", "no permission for the device (check the HwHiAiUser group)"},
    {207007, "ACL_ERROR_RT_NO_EVENT_RESOURCE", "no event resource is left"},
    {207008, "ACL_ERROR_RT_NO_STREAM_RESOURCE", "no stream resource is left"},
    {507000, "ACL_ERROR_RT_INTERNAL_ERROR", "runtime internal error"},
    {507001, "ACL_ERROR_RT_TS_ERROR", "task scheduler internal error"},
    {507002, "ACL_ERROR_RT_STREAM_TASK_FULL", "the stream's task queue is full"},
    {507003, "ACL_ERROR_RT_STREAM_TASK_EMPTY", "the stream has no task"},
    {507004, "ACL_ERROR_RT_STREAM_NOT_COMPLETE", "the stream did not complete"},
    {507006, "ACL_ERROR_RT_EVENT_NOT_COMPLETE", "the event did not complete"},
    {507008, "ACL_ERROR_RT_SOC_VERSION", "the kernels were built for another SoC version"},
    {507009, "ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT", "the task type is not supported"},
    {507010, "ACL_ERROR_RT_LOST_HEARTBEAT", "the task scheduler lost its heartbeat"},
    {507013, "ACL_ERROR_RT_SYS_DMA", "a DMA transfer failed"},
    {507014, "ACL_ERROR_RT_AICORE_TIMEOUT", "an AI core kernel timed out"},
    {507015, "ACL_ERROR_RT_AICORE_EXCEPTION", "an AI core kernel raised an exception"},
    {507016, "ACL_ERROR_RT_AICORE_TRAP_EXCEPTION", "an AI core kernel trapped"},
    {507027, "ACL_ERROR_RT_KERNEL_LOOKUP", "the kernel is not registered"},
    {507033, "ACL_ERROR_RT_DEV_SETUP_ERROR", "the device could not be set up"},
    {507899, "ACL_ERROR_RT_DRV_INTERNAL_ERROR", "driver internal error"},
    {161001, "ACLNN_ERR_PARAM_NULLPTR", "an aclnn operator got a null argument it needs"},
    {161002, "ACLNN_ERR_PARAM_INVALID", "an aclnn operator's arguments are invalid (shape, dtype or format)"},
    {361001, "ACLNN_ERR_RUNTIME_ERROR", "an aclnn operator failed in the runtime"},
    {561000, "ACLNN_ERR_INNER", "aclnn internal error"},
    {561001, "ACLNN_ERR_INNER_INFERSHAPE_ERROR", "aclnn could not infer an output shape"},
    {561003, "ACLNN_ERR_INNER_TILING_ERROR", "aclnn found no tiling for these shapes"},
    {561103, "ACLNN_ERR_INNER_FIND_KERNEL_ERROR", "aclnn has no kernel for these dtypes on this device"},
};
}  // namespace

std::string acl_error_text(int32_t code) {
  for (const Code& c : kCodes)
    if (c.code == code) return std::string(c.name) + " (" + std::to_string(code) + "): " + c.meaning;
  return "ACL error " + std::to_string(code) + " (not a code v4tune knows; see CANN's acl_base.h)";
}

void acl_check(const AclApi& api, aclError code, const char* call) {
  if (code == 0) return;
  std::string m = std::string(call) + " failed: " + acl_error_text(code);
  const char* recent = api.aclGetRecentErrMsg ? api.aclGetRecentErrMsg() : nullptr;
  if (recent && *recent) m += " [CANN: " + std::string(recent) + "]";
  throw AclError(m, code);
}

AclLoad load_acl(const std::string& kernelLib) {
  AclLoad r;
  // a CANN library by name: the system's, then under the toolkit folders
  auto open_lib = [](const char* name) -> void* {
    if (void* h = dlopen(name, RTLD_NOW | RTLD_GLOBAL)) return h;
    for (const char* env : {"ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"})
      if (const char* home = std::getenv(env))
        if (void* h = dlopen((std::string(home) + "/lib64/" + name).c_str(), RTLD_NOW | RTLD_GLOBAL)) return h;
    return nullptr;
  };
  void* acl = open_lib("libascendcl.so");
  if (!acl) {
    r.reason = "the CANN runtime (libascendcl.so) is not installed or not on the library path (source set_env.sh)";
    return r;
  }
  std::string missing;
  auto sym = [&](void* lib, const char* name) {
    void* p = dlsym(lib, name);
    if (!p) missing += (missing.empty() ? "" : ", ") + std::string(name);
    return p;
  };
#define V4_SYM(lib, field, name) r.api.field = reinterpret_cast<decltype(r.api.field)>(sym(lib, name))
  V4_SYM(acl, aclInit, "aclInit");
  V4_SYM(acl, aclrtGetDeviceCount, "aclrtGetDeviceCount");
  V4_SYM(acl, aclrtSetDevice, "aclrtSetDevice");
  V4_SYM(acl, aclrtResetDevice, "aclrtResetDevice");
  V4_SYM(acl, aclrtMalloc, "aclrtMalloc");
  V4_SYM(acl, aclrtFree, "aclrtFree");
  V4_SYM(acl, aclrtMemcpyAsync, "aclrtMemcpyAsync");
  V4_SYM(acl, aclrtMemsetAsync, "aclrtMemsetAsync");
  V4_SYM(acl, aclrtCreateStream, "aclrtCreateStream");
  V4_SYM(acl, aclrtDestroyStream, "aclrtDestroyStream");
  V4_SYM(acl, aclrtSynchronizeStream, "aclrtSynchronizeStream");
  V4_SYM(acl, aclrtCreateEvent, "aclrtCreateEvent");
  V4_SYM(acl, aclrtDestroyEvent, "aclrtDestroyEvent");
  V4_SYM(acl, aclrtRecordEvent, "aclrtRecordEvent");
  V4_SYM(acl, aclrtStreamWaitEvent, "aclrtStreamWaitEvent");
  V4_SYM(acl, aclGetRecentErrMsg, "aclGetRecentErrMsg");
  if (!missing.empty()) {
    r.reason = "libascendcl.so lacks " + missing + " (CANN too old?)";
    return r;
  }
  void* nnop = open_lib("libnnopbase.so");
  void* opapi = open_lib("libopapi.so");
  if (nnop && opapi) {
    r.api.aclCreateTensor = reinterpret_cast<decltype(r.api.aclCreateTensor)>(dlsym(nnop, "aclCreateTensor"));
    r.api.aclCreateTensorList = reinterpret_cast<decltype(r.api.aclCreateTensorList)>(dlsym(nnop, "aclCreateTensorList"));
    r.api.aclDestroyTensorList = reinterpret_cast<decltype(r.api.aclDestroyTensorList)>(dlsym(nnop, "aclDestroyTensorList"));
    r.api.aclnnGroupedMatmulV4GetWorkspaceSize =
        reinterpret_cast<decltype(r.api.aclnnGroupedMatmulV4GetWorkspaceSize)>(dlsym(opapi, "aclnnGroupedMatmulV4GetWorkspaceSize"));
    r.api.aclnnGroupedMatmulV4 = reinterpret_cast<decltype(r.api.aclnnGroupedMatmulV4)>(dlsym(opapi, "aclnnGroupedMatmulV4"));
  }
  void* k = dlopen(kernelLib.c_str(), RTLD_NOW);
  if (!k) {
    r.reason = "the v4tune Ascend kernels are not built (" + kernelLib + "; build them with cmake in kernels/ascend)";
    return r;
  }
  V4_SYM(k, routedExpertsForward, "aclrtlaunch_v4_routed_experts_forward");
  V4_SYM(k, routedExpertsBackward, "aclrtlaunch_v4_routed_experts_backward");
  V4_SYM(k, linearForward, "aclrtlaunch_v4_linear_forward");
  V4_SYM(k, linearBackward, "aclrtlaunch_v4_linear_backward");
  V4_SYM(k, sinkhornBackward, "aclrtlaunch_v4_sinkhorn_backward");
#undef V4_SYM
  if (!missing.empty()) {
    r.reason = kernelLib + " lacks " + missing;
    return r;
  }
  r.ok = true;
  return r;
}

}  // namespace v4ascend
