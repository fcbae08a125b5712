// HcclResult codes → messages, the run-time loading of libhccl.so, and the communicator's collectives.
#include "ascend_hccl.h"
#include <dlfcn.h>
#include <algorithm>
#include <cstdlib>
#include <vector>

namespace v4ascend {

namespace {
struct Code {
  int32_t code;
  const char* name;
  const char* meaning;
};
// hccl_types.h of CANN (HcclResult)
const Code kCodes[] = {
    {0, "HCCL_SUCCESS", "success"},
    {1, "HCCL_E_PARA", "a parameter is invalid (a count, data type, root rank or rank id out of range)"},
    {2, "HCCL_E_PTR", "a pointer argument is null"},
    {3, "HCCL_E_MEMORY", "memory error (out of device memory, or a buffer HCCL cannot use)"},
    {4, "HCCL_E_INTERNAL", "HCCL internal error"},
    {5, "HCCL_E_NOT_SUPPORT", "not supported (this data type or operation on this device or CANN version)"},
    {6, "HCCL_E_NOT_FOUND", "a resource was not found (check the rank table's devices against npu-smi info)"},
    {7, "HCCL_E_UNAVAIL", "a resource is unavailable (the device or its NIC is in use or down)"},
    {8, "HCCL_E_SYSCALL", "a system call failed"},
    {9, "HCCL_E_TIMEOUT", "timed out waiting for the other ranks (a rank did not start, failed, or is stuck; HCCL_CONNECT_TIMEOUT and HCCL_EXEC_TIMEOUT set the limits)"},
    {10, "HCCL_E_OPEN_FILE_FAILURE", "a file could not be opened (the rank table in RANK_TABLE_FILE?)"},
    {11, "HCCL_E_TCP_CONNECT", "a TCP connection to another rank failed (check the rank table's server addresses and the firewall)"},
    {12, "HCCL_E_ROCE_CONNECT", "a RoCE connection to another rank failed (check the NPUs' network: hccn_tool)"},
    {13, "HCCL_E_TCP_TRANSFER", "a TCP transfer to another rank failed"},
    {14, "HCCL_E_ROCE_TRANSFER", "a RoCE transfer to another rank failed"},
    {15, "HCCL_E_RUNTIME", "a call into the ACL runtime failed"},
    {16, "HCCL_E_DRV", "a call into the NPU driver failed"},
    {17, "HCCL_E_PROFILING", "a call into the profiler failed"},
    {18, "HCCL_E_CCE", "a call into CCE failed"},
    {19, "HCCL_E_NETWORK", "a call into the network layer failed"},
    {20, "HCCL_E_AGAIN", "try again (the resource is busy)"},
    {21, "HCCL_E_REMOTE", "another rank reported an error (error CQE)"},
};
}  // namespace

std::string hccl_error_text(int32_t code) {
  for (const Code& c : kCodes)
    if (c.code == code) return std::string(c.name) + " (" + std::to_string(code) + "): " + c.meaning;
  return "HCCL error " + std::to_string(code) + " (not a code v4tune knows; see CANN's hccl_types.h)";
}

void hccl_check(const HcclApi& api, HcclResult code, const char* call) {
  if (code == 0) return;
  std::string m = std::string(call) + " failed: " + hccl_error_text(code);
  const char* own = api.HcclGetErrorString ? api.HcclGetErrorString(code) : nullptr;
  if (own && *own) m += " [HCCL: " + std::string(own) + "]";
  throw HcclError(m, code);
}

HcclLoad load_hccl() {
  HcclLoad r;
  void* h = nullptr;
  auto try_open = [&](const std::string& p) {
    if (!h && (h = dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL))) r.path = p;
  };
  try_open("libhccl.so");
  for (const char* env : {"ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"})
    if (const char* home = std::getenv(env)) try_open(std::string(home) + "/lib64/libhccl.so");
  if (!h) {
    const char* e = dlerror();
    r.reason = "HCCL (libhccl.so) is not installed or not on the library path (source set_env.sh)";
    if (e && std::string(e).find("No such file") == std::string::npos) r.reason += ": " + std::string(e);
    return r;
  }
  std::string missing;
  auto sym = [&](const char* name) {
    void* p = dlsym(h, name);
    if (!p) missing += (missing.empty() ? "" : ", ") + std::string(name);
    return p;
  };
#define V4_SYM(field) r.api.field = reinterpret_cast<decltype(r.api.field)>(sym(#field))
  V4_SYM(HcclCommInitClusterInfo);
  V4_SYM(HcclGetRankSize);
  V4_SYM(HcclGetRankId);
  V4_SYM(HcclAllReduce);
  V4_SYM(HcclAllGather);
  V4_SYM(HcclBroadcast);
  V4_SYM(HcclAlltoAllV);
  V4_SYM(HcclBarrier);
  V4_SYM(HcclCommDestroy);
#undef V4_SYM
  if (!missing.empty()) {
    r.reason = r.path + " lacks " + missing + " (CANN too old?)";
    return r;
  }
  r.api.HcclGetErrorString = reinterpret_cast<decltype(r.api.HcclGetErrorString)>(dlsym(h, "HcclGetErrorString"));
  r.ok = true;
  return r;
}

HcclWorld::HcclWorld(const AclApi& acl, const HcclApi& hccl, int32_t device, const std::string& rankTable, uint32_t rank)
    : acl_(acl), hccl_(hccl), device_(device) {
  const aclError init = acl_.aclInit(nullptr);
  if (init != 100002) acl_check(acl_, init, "aclInit");  // 100002: already initialised in this process
  acl_check(acl_, acl_.aclrtSetDevice(device_), "aclrtSetDevice");
  hccl_check(hccl_, hccl_.HcclCommInitClusterInfo(rankTable.c_str(), rank, &comm_), "HcclCommInitClusterInfo");
  try {
    hccl_check(hccl_, hccl_.HcclGetRankSize(comm_, &size_), "HcclGetRankSize");
    hccl_check(hccl_, hccl_.HcclGetRankId(comm_, &rank_), "HcclGetRankId");
    acl_check(acl_, acl_.aclrtCreateStream(&stream_), "aclrtCreateStream");
  } catch (...) {
    hccl_.HcclCommDestroy(comm_);
    throw;
  }
}

HcclWorld::~HcclWorld() {
  for (void* b : buf_)
    if (b) acl_.aclrtFree(b);
  if (stream_) acl_.aclrtDestroyStream(stream_);
  hccl_.HcclCommDestroy(comm_);
}

// A device buffer of at least `bytes` (slot 0: what goes up, slot 1: what comes down)
void* HcclWorld::staging(int slot, size_t bytes) {
  bytes = std::max<size_t>(bytes, 32);
  if (cap_[slot] < bytes) {
    if (buf_[slot]) acl_.aclrtFree(buf_[slot]);
    buf_[slot] = nullptr;
    cap_[slot] = 0;
    acl_check(acl_, acl_.aclrtMalloc(&buf_[slot], bytes, kMallocHugeFirst), "aclrtMalloc");
    cap_[slot] = bytes;
  }
  return buf_[slot];
}
void HcclWorld::up(void* dev, const void* host, size_t bytes) {
  if (bytes) acl_check(acl_, acl_.aclrtMemcpyAsync(dev, bytes, host, bytes, kHostToDevice, stream_), "aclrtMemcpyAsync (to the NPU)");
}
void HcclWorld::down(void* host, const void* dev, size_t bytes) {
  if (bytes) acl_check(acl_, acl_.aclrtMemcpyAsync(host, bytes, dev, bytes, kDeviceToHost, stream_), "aclrtMemcpyAsync (to the host)");
}
void HcclWorld::finish() { acl_check(acl_, acl_.aclrtSynchronizeStream(stream_), "aclrtSynchronizeStream"); }

void HcclWorld::allreduce_sum(void* host, uint64_t count, int32_t dataType, size_t elemBytes) {
  std::lock_guard<std::mutex> lock(busy_);
  acl_check(acl_, acl_.aclrtSetDevice(device_), "aclrtSetDevice");  // this thread's context
  const size_t bytes = count * elemBytes;
  void* send = staging(0, bytes);
  void* recv = staging(1, bytes);
  up(send, host, bytes);
  hccl_check(hccl_, hccl_.HcclAllReduce(send, recv, count, dataType, kHcclReduceSum, comm_, stream_), "HcclAllReduce");
  down(host, recv, bytes);
  finish();
}

void HcclWorld::allgather(const void* send, void* recv, uint64_t count, int32_t dataType, size_t elemBytes) {
  std::lock_guard<std::mutex> lock(busy_);
  acl_check(acl_, acl_.aclrtSetDevice(device_), "aclrtSetDevice");
  const size_t bytes = count * elemBytes;
  void* dsend = staging(0, bytes);
  void* drecv = staging(1, bytes * size_);
  up(dsend, send, bytes);
  hccl_check(hccl_, hccl_.HcclAllGather(dsend, drecv, count, dataType, comm_, stream_), "HcclAllGather");
  down(recv, drecv, bytes * size_);
  finish();
}

void HcclWorld::broadcast(void* host, uint64_t count, int32_t dataType, size_t elemBytes, uint32_t root) {
  std::lock_guard<std::mutex> lock(busy_);
  acl_check(acl_, acl_.aclrtSetDevice(device_), "aclrtSetDevice");
  const size_t bytes = count * elemBytes;
  void* buf = staging(0, bytes);
  if (rank_ == root) up(buf, host, bytes);
  hccl_check(hccl_, hccl_.HcclBroadcast(buf, count, dataType, root, comm_, stream_), "HcclBroadcast");
  if (rank_ != root) down(host, buf, bytes);
  finish();
}

void HcclWorld::alltoallv(const void* send, const int32_t* sendCounts, void* recv, const int32_t* recvCounts,
                          int32_t dataType, size_t elemBytes) {
  std::lock_guard<std::mutex> lock(busy_);
  acl_check(acl_, acl_.aclrtSetDevice(device_), "aclrtSetDevice");
  std::vector<uint64_t> sc(size_), sd(size_), rc(size_), rd(size_);
  uint64_t st = 0, rt = 0;
  for (uint32_t q = 0; q < size_; q++) {
    sc[q] = uint64_t(sendCounts[q]);
    sd[q] = st;
    st += sc[q];
    rc[q] = uint64_t(recvCounts[q]);
    rd[q] = rt;
    rt += rc[q];
  }
  void* dsend = staging(0, st * elemBytes);
  void* drecv = staging(1, rt * elemBytes);
  up(dsend, send, st * elemBytes);
  hccl_check(hccl_, hccl_.HcclAlltoAllV(dsend, sc.data(), sd.data(), dataType, drecv, rc.data(), rd.data(), dataType, comm_, stream_),
             "HcclAlltoAllV");
  down(recv, drecv, rt * elemBytes);
  finish();
}

void HcclWorld::barrier() {
  std::lock_guard<std::mutex> lock(busy_);
  acl_check(acl_, acl_.aclrtSetDevice(device_), "aclrtSetDevice");
  hccl_check(hccl_, hccl_.HcclBarrier(comm_, stream_), "HcclBarrier");
  finish();
}

}  // namespace v4ascend
