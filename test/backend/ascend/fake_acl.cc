// The fake ACL runtime (fake_acl.h).
#include "fake_acl.h"
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>

extern "C" void v4_routed_experts_forward(GM_ADDR args, GM_ADDR tiling);
extern "C" void v4_routed_experts_backward(GM_ADDR args, GM_ADDR tiling);
extern "C" void v4_linear_forward(GM_ADDR args, GM_ADDR tiling);
extern "C" void v4_linear_backward(GM_ADDR args, GM_ADDR tiling);
extern "C" void v4_sinkhorn_backward(GM_ADDR args, GM_ADDR tiling);

namespace fake {
namespace {

using v4ascend::aclError;
using v4ascend::aclOpExecutor;
using v4ascend::aclTensor;
using v4ascend::aclTensorList;
struct Task {
  std::function<aclError()> run;
};
struct Stream {
  std::deque<Task> q;
  uint64_t enqueued = 0, ran = 0;
};
struct Event {
  Stream* s = nullptr;
  uint64_t at = 0;  // the record is task number `at` of s (1-based); 0: never recorded
};
struct State {
  Options opt;
  bool init = false;
  int32_t device = -1;
  std::map<uintptr_t, size_t> live;
  std::map<Stream*, std::unique_ptr<Stream>> streams;
  std::map<Event*, std::unique_ptr<Event>> events;
  std::map<std::string, std::pair<int32_t, std::string>> injected;
  std::string recent;
  std::vector<std::string> log;
};
State& st() {
  static State s;
  return s;
}
aclError fail(aclError code, const std::string& msg) {
  st().recent = msg;
  return code;
}
bool injected(const char* call, aclError& code) {
  auto it = st().injected.find(call);
  if (it == st().injected.end()) return false;
  code = it->second.first;
  st().recent = it->second.second;
  st().injected.erase(it);
  return true;
}
#define V4_INJECT(name)                 \
  do {                                  \
    aclError c_;                        \
    if (injected(name, c_)) return c_;  \
  } while (0)

// the allocation holding [p, p+n), or false
bool device_range(const void* p, size_t n) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = st().live.upper_bound(a);
  if (it == st().live.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}
bool pending_work() {
  for (auto& kv : st().streams)
    if (!kv.second->q.empty()) return true;
  return false;
}
// Run s's tasks up to and including task number upto (its count of enqueued tasks: all).
aclError drain(Stream* s, uint64_t upto) {
  while (s->ran < upto && !s->q.empty()) {
    Task t = std::move(s->q.front());
    s->q.pop_front();
    s->ran++;
    aclError e = t.run();
    if (e) {
      s->ran += s->q.size();
      s->q.clear();
      return e;
    }
  }
  return 0;
}
aclError enqueue(void* stream, std::function<aclError()> f) {
  auto it = st().streams.find(static_cast<Stream*>(stream));
  if (it == st().streams.end()) return fail(107017, "fake ACL: unknown stream");
  it->second->q.push_back(Task{std::move(f)});
  it->second->enqueued++;
  return 0;
}

aclError aclInit(const char*) {
  V4_INJECT("aclInit");
  st().init = true;
  return 0;
}
aclError aclrtGetDeviceCount(uint32_t* n) {
  V4_INJECT("aclrtGetDeviceCount");
  *n = st().opt.deviceCount;
  return 0;
}
aclError aclrtSetDevice(int32_t id) {
  V4_INJECT("aclrtSetDevice");
  if (!st().init) return fail(100001, "fake ACL: aclInit was not called");
  if (id < 0 || uint32_t(id) >= st().opt.deviceCount) return fail(107001, "fake ACL: device " + std::to_string(id) + " does not exist");
  st().device = id;
  return 0;
}
aclError aclrtResetDevice(int32_t) {
  st().device = -1;
  return 0;
}
aclError aclrtMalloc(void** p, size_t n, int32_t) {
  V4_INJECT("aclrtMalloc");
  if (st().device < 0) return fail(107002, "fake ACL: no device set");
  void* q = std::aligned_alloc(64, (n + 63) / 64 * 64);
  if (!q) return fail(207001, "fake ACL: host allocation failed");
  std::memset(q, 0xFF, n);
  st().live[reinterpret_cast<uintptr_t>(q)] = n;
  *p = q;
  return 0;
}
aclError aclrtFree(void* p) {
  V4_INJECT("aclrtFree");
  auto it = st().live.find(reinterpret_cast<uintptr_t>(p));
  if (it == st().live.end()) return fail(207002, "fake ACL: free of memory that is not allocated");
  if (pending_work()) return fail(207002, "fake ACL: free while work is queued on a stream");
  st().live.erase(it);
  std::free(p);
  return 0;
}
aclError aclrtMemcpyAsync(void* dst, size_t destMax, const void* src, size_t n, int32_t kind, void* stream) {
  V4_INJECT("aclrtMemcpyAsync");
  if (n > destMax) return fail(107000, "fake ACL: copy larger than its destination");
  if (kind == v4ascend::kHostToDevice && !device_range(dst, n)) return fail(107000, "fake ACL: upload to memory that is not the device's");
  if (kind == v4ascend::kDeviceToHost && !device_range(src, n)) return fail(107000, "fake ACL: download from memory that is not the device's");
  return enqueue(stream, [=] {
    if ((kind == v4ascend::kHostToDevice && !device_range(dst, n)) || (kind == v4ascend::kDeviceToHost && !device_range(src, n)))
      return fail(507899, "fake ACL: a queued copy touches freed device memory");
    std::memcpy(dst, src, n);
    st().log.push_back(kind == v4ascend::kHostToDevice ? "h2d" : "d2h");
    return aclError(0);
  });
}
aclError aclrtMemsetAsync(void* p, size_t maxN, int32_t v, size_t n, void* stream) {
  V4_INJECT("aclrtMemsetAsync");
  if (n > maxN || !device_range(p, n)) return fail(107000, "fake ACL: memset outside device memory");
  return enqueue(stream, [=] {
    std::memset(p, v, n);
    st().log.push_back("memset");
    return aclError(0);
  });
}
aclError aclrtCreateStream(void** s) {
  V4_INJECT("aclrtCreateStream");
  auto u = std::make_unique<Stream>();
  *s = u.get();
  st().streams[u.get()] = std::move(u);
  return 0;
}
aclError aclrtDestroyStream(void* s) {
  auto it = st().streams.find(static_cast<Stream*>(s));
  if (it == st().streams.end()) return fail(107017, "fake ACL: unknown stream");
  drain(it->second.get(), it->second->enqueued);
  st().streams.erase(it);
  return 0;
}
aclError aclrtSynchronizeStream(void* s) {
  V4_INJECT("aclrtSynchronizeStream");
  auto it = st().streams.find(static_cast<Stream*>(s));
  if (it == st().streams.end()) return fail(107017, "fake ACL: unknown stream");
  return drain(it->second.get(), it->second->enqueued);
}
aclError aclrtCreateEvent(void** e) {
  V4_INJECT("aclrtCreateEvent");
  auto u = std::make_unique<Event>();
  *e = u.get();
  st().events[u.get()] = std::move(u);
  return 0;
}
aclError aclrtDestroyEvent(void* e) {
  st().events.erase(static_cast<Event*>(e));
  return 0;
}
aclError aclrtRecordEvent(void* e, void* s) {
  V4_INJECT("aclrtRecordEvent");
  auto ev = st().events.find(static_cast<Event*>(e));
  auto sm = st().streams.find(static_cast<Stream*>(s));
  if (ev == st().events.end() || sm == st().streams.end()) return fail(107017, "fake ACL: unknown event or stream");
  aclError r = enqueue(s, [] {
    st().log.push_back("record");
    return aclError(0);
  });
  ev->second->s = sm->second.get();
  ev->second->at = sm->second->enqueued;
  return r;
}
// s waits: when it reaches this task, the event's stream runs up to the record first
aclError aclrtStreamWaitEvent(void* s, void* e) {
  V4_INJECT("aclrtStreamWaitEvent");
  auto ev = st().events.find(static_cast<Event*>(e));
  if (ev == st().events.end()) return fail(107017, "fake ACL: unknown event");
  Stream* src = ev->second->s;
  uint64_t at = ev->second->at;
  return enqueue(s, [src, at] {
    st().log.push_back("wait");
    if (!src || !st().streams.count(src)) return aclError(0);
    return drain(src, at);
  });
}
const char* aclGetRecentErrMsg() {
  static std::string out;
  out = st().recent;
  st().recent.clear();
  return out.c_str();
}

// ---- aclnn: tensors, lists, and the grouped matmul in its multi-tensor mode ----
struct Tensor {
  int64_t rows, cols, s0, s1, offset;
  float* data;
};
struct Exec {
  std::vector<Tensor> x, w, out;
};
size_t liveTensors = 0;
aclTensor* aclCreateTensor(const int64_t* dims, uint64_t ndims, int32_t dtype, const int64_t* strides, int64_t offset, int32_t format,
                           const int64_t*, uint64_t, void* data) {
  if (ndims != 2 || dtype != v4ascend::kAclFloat || format != v4ascend::kAclFormatNd) return nullptr;
  liveTensors++;
  return new Tensor{dims[0], dims[1], strides[0], strides[1], offset, static_cast<float*>(data)};
}
aclTensorList* aclCreateTensorList(const aclTensor* const* ts, uint64_t n) {
  auto* l = new std::vector<Tensor*>();
  for (uint64_t i = 0; i < n; i++) l->push_back(static_cast<Tensor*>(const_cast<aclTensor*>(ts[i])));
  return l;
}
aclError aclDestroyTensorList(const aclTensorList* l) {
  auto* v = static_cast<std::vector<Tensor*>*>(const_cast<aclTensorList*>(l));
  for (Tensor* t : *v) delete t, liveTensors--;
  delete v;
  return 0;
}
aclError aclnnGroupedMatmulV4GetWorkspaceSize(const aclTensorList* x, const aclTensorList* w, const aclTensorList* bias,
                                              const aclTensorList* scale, const aclTensorList* off, const aclTensorList* aqs,
                                              const aclTensorList* aqo, const aclTensorList* pts, const aclTensor* groupList,
                                              const aclTensorList* ai, const aclTensorList* aqs2, const aclTensorList* aqo2,
                                              int64_t splitItem, int64_t groupType, int64_t, int64_t actType, aclTensorList* out,
                                              aclTensorList*, aclTensorList*, uint64_t* wsBytes, aclOpExecutor** exec) {
  V4_INJECT("aclnnGroupedMatmulV4GetWorkspaceSize");
  if (!x || !w || !out || !wsBytes || !exec) return fail(161001, "fake aclnn: a required argument is null");
  if (bias || scale || off || aqs || aqo || pts || groupList || ai || aqs2 || aqo2 || splitItem != 0 || groupType != -1 || actType != 0)
    return fail(161002, "fake aclnn: only the multi-tensor float matmul without bias, quantisation or activation is modelled");
  auto get = [](const aclTensorList* l) { return *static_cast<const std::vector<Tensor*>*>(l); };
  auto e = std::make_unique<Exec>();
  for (Tensor* t : get(x)) e->x.push_back(*t);
  for (Tensor* t : get(w)) e->w.push_back(*t);
  for (Tensor* t : get(out)) e->out.push_back(*t);
  if (e->x.size() != e->w.size() || e->x.size() != e->out.size()) return fail(161002, "fake aclnn: x, weight and out lists differ in length");
  for (size_t g = 0; g < e->x.size(); g++)
    if (e->x[g].cols != e->w[g].rows || e->out[g].rows != e->x[g].rows || e->out[g].cols != e->w[g].cols)
      return fail(161002, "fake aclnn: group " + std::to_string(g) + " shapes do not chain (x [M,K] · weight [K,N] = out [M,N])");
  *wsBytes = 4096;  // a workspace, so that the host's handling of one is exercised
  *exec = e.release();
  return 0;
}
aclError aclnnGroupedMatmulV4(void* ws, uint64_t wsBytes, aclOpExecutor* exec, void* stream) {
  V4_INJECT("aclnnGroupedMatmulV4");
  if (wsBytes && !device_range(ws, wsBytes)) return fail(161002, "fake aclnn: the workspace is not device memory");
  std::shared_ptr<Exec> e(static_cast<Exec*>(exec));
  return enqueue(stream, [e] {
    auto at = [](const Tensor& t, int64_t i, int64_t j) -> float& { return t.data[t.offset + i * t.s0 + j * t.s1]; };
    for (size_t g = 0; g < e->x.size(); g++) {
      const Tensor &x = e->x[g], &w = e->w[g], &o = e->out[g];
      if (!device_range(x.data, 4) || !device_range(w.data, 4) || !device_range(o.data, 4))
        return fail(507899, "fake aclnn: a grouped-matmul operand is not device memory");
      for (int64_t i = 0; i < x.rows; i++)
        for (int64_t j = 0; j < w.cols; j++) {
          double acc = 0;
          for (int64_t k = 0; k < x.cols; k++) acc += double(at(x, i, k)) * at(w, k, j);
          at(o, i, j) = float(acc);
        }
    }
    st().log.push_back("gmm");
    return aclError(0);
  });
}

template <void (*K)(GM_ADDR, GM_ADDR)>
uint32_t launch(uint32_t blockDim, void* stream, void* args, void* tiling, const char* name) {
  aclError c;
  if (injected(name, c)) return uint32_t(c);
  return uint32_t(enqueue(stream, [=] {
    st().log.push_back(std::string("kernel ") + name);
    try {
      AscendC::shim::launch(*st().opt.chip, blockDim, [&] { K(static_cast<GM_ADDR>(args), static_cast<GM_ADDR>(tiling)); });
    } catch (const AscendC::ShimError& e) {
      return fail(507015, e.what());
    }
    return aclError(0);
  }));
}
uint32_t launch_ef(uint32_t b, void* s, void* a, void* t) { return launch<v4_routed_experts_forward>(b, s, a, t, "v4_routed_experts_forward"); }
uint32_t launch_eb(uint32_t b, void* s, void* a, void* t) { return launch<v4_routed_experts_backward>(b, s, a, t, "v4_routed_experts_backward"); }
uint32_t launch_lf(uint32_t b, void* s, void* a, void* t) { return launch<v4_linear_forward>(b, s, a, t, "v4_linear_forward"); }
uint32_t launch_lb(uint32_t b, void* s, void* a, void* t) { return launch<v4_linear_backward>(b, s, a, t, "v4_linear_backward"); }
uint32_t launch_sb(uint32_t b, void* s, void* a, void* t) { return launch<v4_sinkhorn_backward>(b, s, a, t, "v4_sinkhorn_backward"); }

}  // namespace

v4ascend::AclApi make_api(const Options& o) {
  st().opt = o;
  v4ascend::AclApi a{};
  a.aclInit = aclInit, a.aclrtGetDeviceCount = aclrtGetDeviceCount;
  a.aclrtSetDevice = aclrtSetDevice, a.aclrtResetDevice = aclrtResetDevice;
  a.aclrtMalloc = aclrtMalloc, a.aclrtFree = aclrtFree, a.aclrtMemcpyAsync = aclrtMemcpyAsync, a.aclrtMemsetAsync = aclrtMemsetAsync;
  a.aclrtCreateStream = aclrtCreateStream, a.aclrtDestroyStream = aclrtDestroyStream, a.aclrtSynchronizeStream = aclrtSynchronizeStream;
  a.aclrtCreateEvent = aclrtCreateEvent, a.aclrtDestroyEvent = aclrtDestroyEvent, a.aclrtRecordEvent = aclrtRecordEvent;
  a.aclrtStreamWaitEvent = aclrtStreamWaitEvent, a.aclGetRecentErrMsg = aclGetRecentErrMsg;
  a.routedExpertsForward = launch_ef, a.routedExpertsBackward = launch_eb, a.linearForward = launch_lf, a.linearBackward = launch_lb;
  a.sinkhornBackward = launch_sb;
  if (o.groupedMatmul) {
    a.aclCreateTensor = aclCreateTensor, a.aclCreateTensorList = aclCreateTensorList, a.aclDestroyTensorList = aclDestroyTensorList;
    a.aclnnGroupedMatmulV4GetWorkspaceSize = aclnnGroupedMatmulV4GetWorkspaceSize, a.aclnnGroupedMatmulV4 = aclnnGroupedMatmulV4;
  }
  return a;
}
size_t live_tensors() { return liveTensors; }
void inject(const std::string& call, int32_t code, const std::string& msg) { st().injected[call] = {code, msg}; }
size_t live_allocations() { return st().live.size(); }
size_t live_bytes() {
  size_t n = 0;
  for (auto& kv : st().live) n += kv.second;
  return n;
}
size_t live_streams() { return st().streams.size(); }
size_t live_events() { return st().events.size(); }
const std::vector<std::string>& log() { return st().log; }
void clear_log() { st().log.clear(); }

}  // namespace fake
