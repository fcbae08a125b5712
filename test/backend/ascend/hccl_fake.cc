// A stand-in libhccl.so for the tests, exporting the HCCL calls native/ascend_hccl.cc loads, under
// CANN's C names. The ranks are processes on this machine (or one process, for single-rank
// checks); device memory is host memory (the fake ACL runtime's). A communicator comes from a
// rank table (its size: the number of "rank_id" entries); its ranks exchange through files in
// the folder <rank table>.fake-hccl/ (fresh per run): in every collective each rank writes its
// part as <call number>.<rank> and reads every rank's, so every call is a rendezvous of all ranks.
//
// Stream order: a collective first runs what its stream holds (aclrtSynchronizeStream of the fake
// ACL runtime, found in the process), then exchanges at once. So an input uploaded on another
// stream without an event is still the fake's 0xFF fill, and a result copied down after the
// collective reaches the host only when the stream is synchronised.
//
// Limits, stated: HcclAllReduce sums int32 and float32 (and refuses float64 with
// HCCL_E_NOT_SUPPORT, as CANN documents; int8/int16/fp16/bf16, which CANN takes, are refused here
// too); sums run in rank order. V4TUNE_FAKE_HCCL_FAIL="HcclAllReduce=11,..." makes every call of
// that name return the code; V4TUNE_FAKE_HCCL_TIMEOUT_MS (default 60000) bounds the wait for the
// other ranks (then HCCL_E_TIMEOUT).
#include <dlfcn.h>
#include <sys/stat.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

enum : int32_t { kOk = 0, kPara = 1, kPtr = 2, kInternal = 4, kNotSupport = 5, kTimeout = 9, kOpenFile = 10, kRuntime = 15 };

struct Comm {
  std::string dir;
  uint32_t rank, size;
  uint64_t calls = 0;
};

size_t elem_bytes(int32_t type) {
  switch (type) {
    case 0: case 7: return 1;            // int8, uint8
    case 1: case 3: case 8: case 11: return 2;  // int16, fp16, uint16, bf16
    case 2: case 4: case 9: return 4;    // int32, fp32, uint32
    case 5: case 6: case 10: return 8;   // int64, uint64, fp64
    default: return 0;
  }
}

// The code V4TUNE_FAKE_HCCL_FAIL gives `call`, or 0.
int32_t injected(const char* call) {
  const char* spec = std::getenv("V4TUNE_FAKE_HCCL_FAIL");
  if (!spec) return 0;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t eq = item.find('=');
    if (eq != std::string::npos && item.substr(0, eq) == call) return int32_t(std::atoi(item.c_str() + eq + 1));
  }
  return 0;
}
#define FAKE_INJECT(name)                   \
  do {                                      \
    if (int32_t c_ = injected(name)) return c_; \
  } while (0)

// Run the work queued on `stream` before this call (the fake ACL's aclrtSynchronizeStream).
int32_t run_stream(void* stream) {
  using Sync = int32_t (*)(void*);
  static Sync sync = reinterpret_cast<Sync>(dlsym(RTLD_DEFAULT, "aclrtSynchronizeStream"));
  if (!sync) return kRuntime;
  return sync(stream) ? kRuntime : kOk;
}

std::string part(const Comm& c, uint64_t call, uint32_t rank) {
  return c.dir + "/" + std::to_string(call) + "." + std::to_string(rank);
}

// Write this rank's part of the next call, then read every rank's (in rank order).
int32_t exchange(Comm& c, const std::string& mine, std::vector<std::string>& all) {
  const uint64_t call = c.calls++;
  const std::string path = part(c, call, c.rank);
  {
    std::ofstream f(path + ".tmp", std::ios::binary);
    f.write(mine.data(), std::streamsize(mine.size()));
    if (!f) return kInternal;
  }
  if (std::rename((path + ".tmp").c_str(), path.c_str())) return kInternal;
  const char* t = std::getenv("V4TUNE_FAKE_HCCL_TIMEOUT_MS");
  const long timeoutMs = t ? std::atol(t) : 60000;
  const auto start = std::chrono::steady_clock::now();
  all.assign(c.size, std::string());
  for (uint32_t q = 0; q < c.size; q++) {
    std::ifstream f;
    while (f.open(part(c, call, q), std::ios::binary), !f) {
      if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(timeoutMs)) return kTimeout;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      f.clear();
    }
    all[q].assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  // every rank has finished call − 2 before it wrote its part of call − 1, which this rank has read
  if (call >= 2) std::remove(part(c, call - 2, c.rank).c_str());
  return kOk;
}

template <class T>
void sum_into(void* recv, const std::vector<std::string>& all, uint64_t count) {
  T* out = static_cast<T*>(recv);
  for (uint64_t i = 0; i < count; i++) {
    T s = reinterpret_cast<const T*>(all[0].data())[i];
    for (size_t q = 1; q < all.size(); q++) s += reinterpret_cast<const T*>(all[q].data())[i];
    out[i] = s;
  }
}

}  // namespace

extern "C" {

int32_t HcclCommInitClusterInfo(const char* clusterInfo, uint32_t rank, void** comm) {
  FAKE_INJECT("HcclCommInitClusterInfo");
  if (!clusterInfo || !comm) return kPtr;
  std::ifstream f(clusterInfo);
  if (!f) return kOpenFile;
  const std::string table((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  uint32_t size = 0;
  for (size_t at = table.find("\"rank_id\""); at != std::string::npos; at = table.find("\"rank_id\"", at + 1)) size++;
  if (size == 0 || rank >= size) return kPara;
  Comm* c = new Comm{std::string(clusterInfo) + ".fake-hccl", rank, size};
  mkdir(c->dir.c_str(), 0700);
  *comm = c;
  return kOk;
}

int32_t HcclGetRankSize(void* comm, uint32_t* size) {
  if (!comm || !size) return kPtr;
  *size = static_cast<Comm*>(comm)->size;
  return kOk;
}

int32_t HcclGetRankId(void* comm, uint32_t* rank) {
  if (!comm || !rank) return kPtr;
  *rank = static_cast<Comm*>(comm)->rank;
  return kOk;
}

int32_t HcclAllReduce(void* send, void* recv, uint64_t count, int32_t type, int32_t op, void* comm, void* stream) {
  FAKE_INJECT("HcclAllReduce");
  if (!send || !recv || !comm) return kPtr;
  if (op != 0 || (type != 2 && type != 4)) return kNotSupport;
  if (int32_t e = run_stream(stream)) return e;
  Comm& c = *static_cast<Comm*>(comm);
  std::vector<std::string> all;
  if (int32_t e = exchange(c, std::string(static_cast<const char*>(send), count * 4), all)) return e;
  for (const std::string& p : all)
    if (p.size() != count * 4) return kPara;
  if (type == 2) sum_into<int32_t>(recv, all, count);
  else sum_into<float>(recv, all, count);
  return kOk;
}

int32_t HcclAllGather(void* send, void* recv, uint64_t count, int32_t type, void* comm, void* stream) {
  FAKE_INJECT("HcclAllGather");
  if (!send || !recv || !comm) return kPtr;
  const size_t eb = elem_bytes(type);
  if (!eb) return kPara;
  if (int32_t e = run_stream(stream)) return e;
  Comm& c = *static_cast<Comm*>(comm);
  std::vector<std::string> all;
  if (int32_t e = exchange(c, std::string(static_cast<const char*>(send), count * eb), all)) return e;
  for (uint32_t q = 0; q < c.size; q++) {
    if (all[q].size() != count * eb) return kPara;
    std::memcpy(static_cast<char*>(recv) + q * count * eb, all[q].data(), count * eb);
  }
  return kOk;
}

int32_t HcclBroadcast(void* buf, uint64_t count, int32_t type, uint32_t root, void* comm, void* stream) {
  FAKE_INJECT("HcclBroadcast");
  if (!buf || !comm) return kPtr;
  const size_t eb = elem_bytes(type);
  Comm& c = *static_cast<Comm*>(comm);
  if (!eb || root >= c.size) return kPara;
  if (int32_t e = run_stream(stream)) return e;
  std::vector<std::string> all;
  const std::string mine = c.rank == root ? std::string(static_cast<const char*>(buf), count * eb) : std::string();
  if (int32_t e = exchange(c, mine, all)) return e;
  if (all[root].size() != count * eb) return kPara;
  std::memcpy(buf, all[root].data(), count * eb);
  return kOk;
}

// A rank's part: P send counts, P send displacements (uint64), then its send buffer.
int32_t HcclAlltoAllV(const void* send, const void* sendCounts, const void* sdispls, int32_t sendType, const void* recv,
                      const void* recvCounts, const void* rdispls, int32_t recvType, void* comm, void* stream) {
  FAKE_INJECT("HcclAlltoAllV");
  if (!send || !recv || !sendCounts || !sdispls || !recvCounts || !rdispls || !comm) return kPtr;
  const size_t eb = elem_bytes(sendType);
  if (!eb || sendType != recvType) return kPara;
  if (int32_t e = run_stream(stream)) return e;
  Comm& c = *static_cast<Comm*>(comm);
  const uint64_t* sc = static_cast<const uint64_t*>(sendCounts);
  const uint64_t* sd = static_cast<const uint64_t*>(sdispls);
  const uint64_t* rc = static_cast<const uint64_t*>(recvCounts);
  const uint64_t* rd = static_cast<const uint64_t*>(rdispls);
  uint64_t extent = 0;
  for (uint32_t q = 0; q < c.size; q++) extent = std::max(extent, sd[q] + sc[q]);
  std::string mine(reinterpret_cast<const char*>(sc), c.size * 8);
  mine.append(reinterpret_cast<const char*>(sd), c.size * 8);
  mine.append(static_cast<const char*>(send), extent * eb);
  std::vector<std::string> all;
  if (int32_t e = exchange(c, mine, all)) return e;
  for (uint32_t q = 0; q < c.size; q++) {
    const uint64_t* qc = reinterpret_cast<const uint64_t*>(all[q].data());
    const uint64_t* qd = qc + c.size;
    if (qc[c.rank] != rc[q]) return kPara;  // rank q sends another count than this rank expects
    std::memcpy(static_cast<char*>(const_cast<void*>(recv)) + rd[q] * eb, all[q].data() + 16 * c.size + qd[c.rank] * eb, rc[q] * eb);
  }
  return kOk;
}

int32_t HcclBarrier(void* comm, void* stream) {
  FAKE_INJECT("HcclBarrier");
  if (!comm) return kPtr;
  if (int32_t e = run_stream(stream)) return e;
  std::vector<std::string> all;
  return exchange(*static_cast<Comm*>(comm), std::string(), all);
}

int32_t HcclCommDestroy(void* comm) {
  delete static_cast<Comm*>(comm);
  return kOk;
}

const char* HcclGetErrorString(int32_t code) {
  static thread_local std::string s;
  s = "fake libhccl.so returned " + std::to_string(code);
  return s.c_str();
}

}  // extern "C"
