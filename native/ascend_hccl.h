// HCCL, the collective library of CANN, as a table of function pointers filled at run time (dlopen
// of libhccl.so), so the addon compiles and loads without CANN, and one communicator over it that
// runs the collectives of src/distributed/collective.ts on host buffers: each goes up to the NPU
// on the communicator's ACL stream, the HCCL operator runs in stream order after it, the result
// comes down after the operator, and the call returns when the stream has finished. Tests load a
// fake libhccl.so the same way (test/backend/ascend/hccl_fake.cc: two processes exchange through files).
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include "ascend_acl.h"

namespace v4ascend {

// hccl_types.h of CANN: the handle, the result codes (hccl_error_text), and the enum values used
using HcclComm = void*;
using HcclResult = int32_t;
enum HcclDataType : int32_t { kHcclInt32 = 2, kHcclFp32 = 4, kHcclUint8 = 7, kHcclFp64 = 10 };
constexpr int32_t kHcclReduceSum = 0;

struct HcclApi {
  HcclResult (*HcclCommInitClusterInfo)(const char* clusterInfo, uint32_t rank, HcclComm* comm);
  HcclResult (*HcclGetRankSize)(HcclComm comm, uint32_t* rankSize);
  HcclResult (*HcclGetRankId)(HcclComm comm, uint32_t* rank);
  HcclResult (*HcclAllReduce)(void* sendBuf, void* recvBuf, uint64_t count, int32_t dataType, int32_t op, HcclComm comm,
                              aclrtStream stream);
  HcclResult (*HcclAllGather)(void* sendBuf, void* recvBuf, uint64_t sendCount, int32_t dataType, HcclComm comm,
                              aclrtStream stream);
  HcclResult (*HcclBroadcast)(void* buf, uint64_t count, int32_t dataType, uint32_t root, HcclComm comm, aclrtStream stream);
  // counts and displacements: host arrays of uint64, one per rank, in elements
  HcclResult (*HcclAlltoAllV)(const void* sendBuf, const void* sendCounts, const void* sdispls, int32_t sendType,
                              const void* recvBuf, const void* recvCounts, const void* rdispls, int32_t recvType,
                              HcclComm comm, aclrtStream stream);
  HcclResult (*HcclBarrier)(HcclComm comm, aclrtStream stream);
  HcclResult (*HcclCommDestroy)(HcclComm comm);
  // null where this CANN lacks it
  const char* (*HcclGetErrorString)(HcclResult code);
};

// An HCCL call that failed: the call, the code's name and meaning, and HCCL's own text.
struct HcclError : std::runtime_error {
  HcclError(const std::string& m, int32_t c) : std::runtime_error(m), code(c) {}
  int32_t code;
};
// "HCCL_E_TIMEOUT (9): ..." for every HcclResult of hccl_types.h; unknown codes say so with their number.
std::string hccl_error_text(int32_t code);
// Throws HcclError("<call> failed: <hccl_error_text> [HCCL: <HcclGetErrorString>]") when code != 0.
void hccl_check(const HcclApi& api, HcclResult code, const char* call);

// Fills api from libhccl.so (the system's, or under ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME). Load
// ACL first: libhccl.so resolves the runtime's symbols from the process.
struct HcclLoad {
  bool ok = false;
  std::string reason;
  HcclApi api{};
  std::string path;  // the file dlopen took
};
HcclLoad load_hccl();

// One communicator from a rank table (HcclCommInitClusterInfo) on one NPU, its ACL stream and
// device staging buffers (grown on demand, freed by the destructor). Collectives may come from
// any thread (each makes the device current on its thread) and run one at a time.
class HcclWorld {
 public:
  HcclWorld(const AclApi& acl, const HcclApi& hccl, int32_t device, const std::string& rankTable, uint32_t rank);
  ~HcclWorld();
  HcclWorld(const HcclWorld&) = delete;
  HcclWorld& operator=(const HcclWorld&) = delete;

  uint32_t rank() const { return rank_; }
  uint32_t size() const { return size_; }

  // host[0, count) ← Σ over ranks (dataType: int32 or fp32, which HcclAllReduce takes)
  void allreduce_sum(void* host, uint64_t count, int32_t dataType, size_t elemBytes);
  // recv (size() × count) ← every rank's send (count), in rank order
  void allgather(const void* send, void* recv, uint64_t count, int32_t dataType, size_t elemBytes);
  // host ← root's host
  void broadcast(void* host, uint64_t count, int32_t dataType, size_t elemBytes, uint32_t root);
  // sendCounts[q] elements (consecutive in send, rank 0's block first) go to rank q; recvCounts[q]
  // come from rank q into recv, in rank order
  void alltoallv(const void* send, const int32_t* sendCounts, void* recv, const int32_t* recvCounts, int32_t dataType,
                 size_t elemBytes);
  void barrier();

 private:
  void* staging(int slot, size_t bytes);
  void up(void* dev, const void* host, size_t bytes);
  void down(void* host, const void* dev, size_t bytes);
  void finish();

  const AclApi& acl_;
  const HcclApi& hccl_;
  int32_t device_;
  uint32_t rank_ = 0, size_ = 0;
  HcclComm comm_ = nullptr;
  aclrtStream stream_ = nullptr;
  void* buf_[2] = {nullptr, nullptr};
  size_t cap_[2] = {0, 0};
  std::mutex busy_;
};

}  // namespace v4ascend
