// Stream order of the HCCL host code, in one process on the fake ACL table (fake_acl.cc) and the
// fake HCCL (hccl_fake.cc, linked in): HcclWorld's collective uploads, runs and downloads on one
// stream and waits for it; and the fake shows the orderings that would be wrong on a device —
// an upload on another stream without an event (the collective sees the NaN fill), and a result
// read before the stream is synchronised (the host buffer is untouched). Usage:
// hccl_order <rank table of 1 rank>; prints one JSON line per check.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include "ascend_hccl.h"
#include "fake_acl.h"

extern "C" {
int32_t HcclCommInitClusterInfo(const char*, uint32_t, void**);
int32_t HcclGetRankSize(void*, uint32_t*);
int32_t HcclGetRankId(void*, uint32_t*);
int32_t HcclAllReduce(void*, void*, uint64_t, int32_t, int32_t, void*, void*);
int32_t HcclAllGather(void*, void*, uint64_t, int32_t, void*, void*);
int32_t HcclBroadcast(void*, uint64_t, int32_t, uint32_t, void*, void*);
int32_t HcclAlltoAllV(const void*, const void*, const void*, int32_t, const void*, const void*, const void*, int32_t, void*, void*);
int32_t HcclBarrier(void*, void*);
int32_t HcclCommDestroy(void*);
const char* HcclGetErrorString(int32_t);
}

namespace {
const v4ascend::AclApi& acl() {
  static const v4ascend::AclApi a = fake::make_api();
  return a;
}
}  // namespace

// the fake HCCL finds the runtime's aclrtSynchronizeStream in the process, as beside libascendcl.so
extern "C" int32_t aclrtSynchronizeStream(void* s) { return acl().aclrtSynchronizeStream(s); }

namespace {
void report(const char* name, bool ok, const std::string& message) {
  std::printf("{\"name\":\"%s\",\"ok\":%s,\"message\":\"%s\"}\n", name, ok ? "true" : "false", message.c_str());
}
std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: hccl_order <rank table of 1 rank>\n");
    return 2;
  }
  const v4ascend::HcclApi h{HcclCommInitClusterInfo, HcclGetRankSize, HcclGetRankId, HcclAllReduce, HcclAllGather,
                            HcclBroadcast, HcclAlltoAllV, HcclBarrier, HcclCommDestroy, HcclGetErrorString};
  const v4ascend::AclApi& a = acl();
  int failed = 0;
  auto check = [&](const char* name, bool ok, const std::string& message) {
    report(name, ok, message);
    failed += !ok;
  };
  {
    v4ascend::HcclWorld w(a, h, 0, argv[1], 0);
    float x[4] = {1, 2, 3, 4};
    fake::clear_log();
    w.allreduce_sum(x, 4, v4ascend::kHcclFp32, 4);
    check("HcclWorld: upload, collective, download on one stream, then waits", join(fake::log()) == "h2d d2h" && x[0] == 1 && x[3] == 4,
          "log: " + join(fake::log()) + ", x[3] = " + std::to_string(x[3]));
  }
  // the same collective by hand, in the orders a host could get wrong
  void* comm = nullptr;
  HcclCommInitClusterInfo(argv[1], 0, &comm);
  a.aclrtSetDevice(0);
  void *up = nullptr, *down = nullptr, *sa = nullptr, *sb = nullptr, *ev = nullptr;
  a.aclrtMalloc(&up, 16, 0);
  a.aclrtMalloc(&down, 16, 0);
  a.aclrtCreateStream(&sa);
  a.aclrtCreateStream(&sb);
  a.aclrtCreateEvent(&ev);
  const float x[4] = {1, 2, 3, 4};
  float y[4] = {0, 0, 0, 0};
  // upload on stream A, collective on stream B, no event: B does not wait for A
  a.aclrtMemcpyAsync(up, 16, x, 16, v4ascend::kHostToDevice, sa);
  HcclAllReduce(up, down, 4, v4ascend::kHcclFp32, v4ascend::kHcclReduceSum, comm, sb);
  a.aclrtMemcpyAsync(y, 16, down, 16, v4ascend::kDeviceToHost, sb);
  a.aclrtSynchronizeStream(sb);
  check("an upload on another stream without an event is not seen by the collective", std::isnan(y[0]),
        "y[0] = " + std::to_string(y[0]));
  a.aclrtSynchronizeStream(sa);
  // with the event, it is
  for (float& v : y) v = -1;
  a.aclrtMemcpyAsync(up, 16, x, 16, v4ascend::kHostToDevice, sa);
  a.aclrtRecordEvent(ev, sa);
  a.aclrtStreamWaitEvent(sb, ev);
  HcclAllReduce(up, down, 4, v4ascend::kHcclFp32, v4ascend::kHcclReduceSum, comm, sb);
  a.aclrtMemcpyAsync(y, 16, down, 16, v4ascend::kDeviceToHost, sb);
  float before = y[3];
  a.aclrtSynchronizeStream(sb);
  check("the result reaches the host only when the stream is synchronised", before == -1 && y[3] == 4,
        "before: " + std::to_string(before) + ", after: " + std::to_string(y[3]));
  a.aclrtDestroyEvent(ev);
  a.aclrtDestroyStream(sb);
  a.aclrtDestroyStream(sa);
  a.aclrtFree(down);
  a.aclrtFree(up);
  HcclCommDestroy(comm);
  check("no device memory, stream or event left", fake::live_allocations() == 0 && fake::live_streams() == 0 && fake::live_events() == 0,
        std::to_string(fake::live_allocations()) + " allocations, " + std::to_string(fake::live_streams()) + " streams, " +
            std::to_string(fake::live_events()) + " events");
  return failed ? 1 : 0;
}
