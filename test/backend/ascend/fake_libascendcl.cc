// A stand-in libascendcl.so for the backend test: the fake ACL runtime and aclnn grouped matmul
// (fake_acl.cc) and launchers of the shim-built kernels, exported under CANN's C names, so
// native/ascend_acl.cc finds and loads it with dlopen exactly as it loads the real runtime, aclnn
// (test/backend/ascend/harness.ts links it as libnnopbase.so and libopapi.so too) and the kernel library.
#include "fake_acl.h"

namespace {
const v4ascend::AclApi& api() {
  static const v4ascend::AclApi a = fake::make_api();
  return a;
}
}  // namespace

extern "C" {
int32_t aclInit(const char* c) { return api().aclInit(c); }
int32_t aclrtGetDeviceCount(uint32_t* n) { return api().aclrtGetDeviceCount(n); }
int32_t aclrtSetDevice(int32_t d) { return api().aclrtSetDevice(d); }
int32_t aclrtResetDevice(int32_t d) { return api().aclrtResetDevice(d); }
int32_t aclrtMalloc(void** p, size_t n, int32_t pol) { return api().aclrtMalloc(p, n, pol); }
int32_t aclrtFree(void* p) { return api().aclrtFree(p); }
int32_t aclrtMemcpyAsync(void* d, size_t m, const void* s, size_t n, int32_t k, void* st) { return api().aclrtMemcpyAsync(d, m, s, n, k, st); }
int32_t aclrtMemsetAsync(void* p, size_t m, int32_t v, size_t n, void* st) { return api().aclrtMemsetAsync(p, m, v, n, st); }
int32_t aclrtCreateStream(void** s) { return api().aclrtCreateStream(s); }
int32_t aclrtDestroyStream(void* s) { return api().aclrtDestroyStream(s); }
int32_t aclrtSynchronizeStream(void* s) { return api().aclrtSynchronizeStream(s); }
int32_t aclrtCreateEvent(void** e) { return api().aclrtCreateEvent(e); }
int32_t aclrtDestroyEvent(void* e) { return api().aclrtDestroyEvent(e); }
int32_t aclrtRecordEvent(void* e, void* s) { return api().aclrtRecordEvent(e, s); }
int32_t aclrtStreamWaitEvent(void* s, void* e) { return api().aclrtStreamWaitEvent(s, e); }
const char* aclGetRecentErrMsg() { return api().aclGetRecentErrMsg(); }
void* aclCreateTensor(const int64_t* d, uint64_t n, int32_t t, const int64_t* s, int64_t o, int32_t f, const int64_t* sd, uint64_t sn, void* p) {
  return api().aclCreateTensor(d, n, t, s, o, f, sd, sn, p);
}
void* aclCreateTensorList(const void* const* v, uint64_t n) { return api().aclCreateTensorList(v, n); }
int32_t aclDestroyTensorList(const void* l) { return api().aclDestroyTensorList(l); }
int32_t aclnnGroupedMatmulV4GetWorkspaceSize(const void* x, const void* w, const void* b, const void* sc, const void* of, const void* aqs,
                                             const void* aqo, const void* pts, const void* gl, const void* ai, const void* aqs2,
                                             const void* aqo2, int64_t si, int64_t gt, int64_t glt, int64_t at, void* out, void* afo,
                                             void* dqs, uint64_t* ws, void** ex) {
  return api().aclnnGroupedMatmulV4GetWorkspaceSize(x, w, b, sc, of, aqs, aqo, pts, gl, ai, aqs2, aqo2, si, gt, glt, at, out, afo, dqs, ws, ex);
}
int32_t aclnnGroupedMatmulV4(void* ws, uint64_t n, void* ex, void* s) { return api().aclnnGroupedMatmulV4(ws, n, ex, s); }
uint32_t aclrtlaunch_v4_routed_experts_forward(uint32_t b, void* s, void* a, void* t) { return api().routedExpertsForward(b, s, a, t); }
uint32_t aclrtlaunch_v4_routed_experts_backward(uint32_t b, void* s, void* a, void* t) { return api().routedExpertsBackward(b, s, a, t); }
uint32_t aclrtlaunch_v4_linear_forward(uint32_t b, void* s, void* a, void* t) { return api().linearForward(b, s, a, t); }
uint32_t aclrtlaunch_v4_linear_backward(uint32_t b, void* s, void* a, void* t) { return api().linearBackward(b, s, a, t); }
uint32_t aclrtlaunch_v4_sinkhorn_backward(uint32_t b, void* s, void* a, void* t) { return api().sinkhornBackward(b, s, a, t); }
}
