// A host (g++) implementation of the subset of the AscendC:: API that kernels/ascend/ uses, so the
// same kernel sources run on a CPU the way CANN's CPU debug mode runs kernels on a host. It is
// not CANN: it enforces what the kernels must respect on a device and computes in float32, and
// it fails with a ShimError that names the buffer, queue or copy at fault.
//
// What it enforces (kernels/ascend/README.md states the figures and their sources):
//   - capacity per memory level of one AI core, per chip (Chip below): a TPipe::InitBuffer, or a
//     Matmul tiling (L1 / L0A / L0B / L0C) that does not fit, fails naming the buffer;
//   - 32-byte alignment: local tensors start on 32 B; DataCopy moves whole 32 B blocks (count ·
//     sizeof(T) a multiple of 32); vector operands start on 32 B; DataCopyPad is the unaligned copy;
//   - the copy paths a core has (GM → VECIN/VECCALC/A1/B1, VECOUT/VECCALC → GM, UB → UB);
//   - queue discipline: AllocTensor with every buffer in use, EnQue beyond the queue's depth,
//     DeQue of an empty queue (a device would hang) and FreeTensor of a foreign tensor all fail;
//   - GM bounds: a GlobalTensor given a size refuses copies outside it.
// What it does not model: the Cube unit's fractal (NZ) layouts and the Matmul API's internal
// data movement (Matmul here reads and writes ND row-major GM and checks its tiling's footprint),
// pipeline timing (the shim executes in program order, so a missing EnQue / DeQue hand-over
// between the pipes or a missing PipeBarrier around scalar access to UB would not show), the
// per-instruction granularity rules of some vector calls (e.g. Compare's 256-byte counts), and
// the cross-core messaging of MIX kernels (a block runs its vector and cube work in one thread).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#define __aicore__
#define __global__
#define __gm__
#define GM_ADDR uint8_t*
#define KERNEL_TASK_TYPE_DEFAULT(t)

using half = _Float16;

namespace AscendC {

struct ShimError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- chips and memory levels ----
enum class Level : int { UB = 0, L1, L0A, L0B, L0C };
inline const char* level_name(Level l) {
  static const char* n[] = {"UB", "L1", "L0A", "L0B", "L0C"};
  return n[int(l)];
}
// Bytes per level of one AI core. 910B and A3 (Ascend910_93) share the DaVinci C220 core.
struct Chip {
  const char* name;
  uint32_t bytes[5];  // UB, L1, L0A, L0B, L0C
};
inline const Chip kAscend910B{"Ascend910B", {192 * 1024, 512 * 1024, 64 * 1024, 64 * 1024, 128 * 1024}};
inline const Chip kAscend910_93{"Ascend910_93 (A3)", {192 * 1024, 512 * 1024, 64 * 1024, 64 * 1024, 128 * 1024}};

enum class TPosition : uint8_t { GM, VECIN, VECOUT, VECCALC, A1, A2, B1, B2, CO1, CO2 };
using QuePosition = TPosition;
inline Level level_of(TPosition p) {
  switch (p) {
    case TPosition::A1:
    case TPosition::B1: return Level::L1;
    case TPosition::A2: return Level::L0A;
    case TPosition::B2: return Level::L0B;
    case TPosition::CO1: return Level::L0C;
    default: return Level::UB;
  }
}
inline const char* pos_name(TPosition p) {
  static const char* n[] = {"GM", "VECIN", "VECOUT", "VECCALC", "A1", "A2", "B1", "B2", "CO1", "CO2"};
  return n[int(p)];
}

// One AI core's state while a block runs: its arenas (filled with 0xFF, a NaN pattern, so a read
// of a never-written buffer shows), what is allocated in each, the atomic mode of GM writes.
struct CoreCtx {
  const Chip* chip = &kAscend910B;
  int64_t blockIdx = 0, blockNum = 1;
  std::vector<uint8_t> arena[5];
  uint8_t* base[5] = {};
  uint32_t used[5] = {};
  std::string owners[5];  // "name (bytes), …" for the overflow message
  bool atomicAdd = false;
  void reset(const Chip& c, int64_t idx, int64_t num) {
    chip = &c, blockIdx = idx, blockNum = num, atomicAdd = false;
    for (int l = 0; l < 5; l++) {
      arena[l].assign(c.bytes[l] + 32, 0xFF);
      uintptr_t p = reinterpret_cast<uintptr_t>(arena[l].data());
      base[l] = arena[l].data() + ((32 - p % 32) % 32);
      used[l] = 0;
      owners[l].clear();
    }
  }
  // Reserve `bytes` (rounded up to 32) in level l for `who`; fails naming who and the level.
  uint8_t* reserve(Level l, uint32_t bytes, const std::string& who) {
    int i = int(l);
    uint64_t need = (uint64_t(bytes) + 31) / 32 * 32;
    if (used[i] + need > chip->bytes[i])
      throw ShimError(std::string(level_name(l)) + " overflow on " + chip->name + ": " + who + " needs " +
                      std::to_string(need) + " B, " + std::to_string(chip->bytes[i] - used[i]) + " B of " +
                      std::to_string(chip->bytes[i]) + " B left" + (owners[i].empty() ? "" : " (in use: " + owners[i] + ")"));
    uint8_t* p = base[i] + used[i];
    used[i] += uint32_t(need);
    owners[i] += (owners[i].empty() ? "" : ", ") + who + " " + std::to_string(need);
    return p;
  }
  uint32_t offset_in(Level l, const void* p) const { return uint32_t(static_cast<const uint8_t*>(p) - base[int(l)]); }
};
inline CoreCtx& core() {
  thread_local CoreCtx c;
  return c;
}
inline int64_t GetBlockIdx() { return core().blockIdx; }
inline int64_t GetBlockNum() { return core().blockNum; }

// ---- tensors ----
template <typename T>
class LocalTensor {
 public:
  LocalTensor() = default;
  LocalTensor(T* p, uint32_t n, TPosition pos) : p_(p), n_(n), pos_(pos) {}
  LocalTensor operator[](uint32_t off) const {
    if (off > n_) throw ShimError("LocalTensor[" + std::to_string(off) + "] past its " + std::to_string(n_) + " elements");
    return LocalTensor(p_ + off, n_ - off, pos_);
  }
  T GetValue(uint32_t i) const { return p_[check(i)]; }
  void SetValue(uint32_t i, T v) const { p_[check(i)] = v; }
  uint32_t GetSize() const { return n_; }
  TPosition GetPosition() const { return pos_; }
  T* GetPhyAddr() const { return p_; }
  template <typename U>
  LocalTensor<U> ReinterpretCast() const {
    return LocalTensor<U>(reinterpret_cast<U*>(p_), uint32_t(uint64_t(n_) * sizeof(T) / sizeof(U)), pos_);
  }
  // shim: the byte offset of this tensor in its memory level (alignment checks)
  uint32_t level_offset() const { return core().offset_in(level_of(pos_), p_); }

 private:
  uint32_t check(uint32_t i) const {
    if (i >= n_) throw ShimError("LocalTensor index " + std::to_string(i) + " past its " + std::to_string(n_) + " elements");
    return i;
  }
  T* p_ = nullptr;
  uint32_t n_ = 0;
  TPosition pos_ = TPosition::VECCALC;
};

template <typename T>
class GlobalTensor {
 public:
  // size 0: unknown (no bounds check)
  void SetGlobalBuffer(__gm__ T* p, uint64_t size = 0) { p_ = p, n_ = size; }
  GlobalTensor operator[](uint64_t off) const {
    GlobalTensor g;
    g.p_ = p_ + off;
    g.n_ = n_ ? (off <= n_ ? n_ - off : throw ShimError("GlobalTensor[" + std::to_string(off) + "] past its " + std::to_string(n_) + " elements")) : 0;
    return g;
  }
  T GetValue(uint64_t i) const { return p_[check(i, 1)]; }
  void SetValue(uint64_t i, T v) const { p_[check(i, 1)] = v; }
  T* GetPhyAddr() const { return p_; }
  // shim: fails when [i, i+n) is outside a sized buffer
  uint64_t check(uint64_t i, uint64_t n) const {
    if (n_ && i + n > n_)
      throw ShimError("GM access [" + std::to_string(i) + ", " + std::to_string(i + n) + ") past a buffer of " + std::to_string(n_) + " elements");
    return i;
  }

 private:
  T* p_ = nullptr;
  uint64_t n_ = 0;
};

// ---- TPipe, queues, buffers ----
class TPipe;
struct QueBase {
  std::string name = "(unnamed queue)";
  TPosition pos = TPosition::VECCALC;
  uint32_t len = 0;
  std::vector<uint8_t*> bufs;
  std::vector<int> state;  // 0 free, 1 allocated, 2 queued
  std::vector<int> fifo;   // queued buffer indices, oldest first
};

template <TPosition POS, int32_t DEPTH>
class TQue : public QueBase {
 public:
  TQue() { pos = POS; }
  template <typename T>
  LocalTensor<T> AllocTensor() {
    for (size_t i = 0; i < bufs.size(); i++)
      if (state[i] == 0) {
        state[i] = 1;
        return LocalTensor<T>(reinterpret_cast<T*>(bufs[i]), uint32_t(len / sizeof(T)), POS);
      }
    throw ShimError("queue " + name + ": AllocTensor with all " + std::to_string(bufs.size()) +
                    " buffers in use (a FreeTensor is missing, or more tensors are in flight than InitBuffer gave)");
  }
  template <typename T>
  void EnQue(const LocalTensor<T>& t) {
    int i = find(t.GetPhyAddr(), "EnQue");
    if (state[i] != 1) throw ShimError("queue " + name + ": EnQue of a tensor that is not allocated");
    if (int32_t(fifo.size()) >= DEPTH)
      throw ShimError("queue " + name + ": EnQue beyond its depth " + std::to_string(DEPTH));
    state[i] = 2;
    fifo.push_back(i);
  }
  template <typename T>
  LocalTensor<T> DeQue() {
    if (fifo.empty()) throw ShimError("queue " + name + ": DeQue of an empty queue (a device would wait forever)");
    int i = fifo.front();
    fifo.erase(fifo.begin());
    state[i] = 1;
    return LocalTensor<T>(reinterpret_cast<T*>(bufs[i]), uint32_t(len / sizeof(T)), POS);
  }
  template <typename T>
  void FreeTensor(const LocalTensor<T>& t) {
    int i = find(t.GetPhyAddr(), "FreeTensor");
    if (state[i] != 1) throw ShimError("queue " + name + ": FreeTensor of a tensor that is queued or already free");
    state[i] = 0;
  }

 private:
  int find(const void* p, const char* what) {
    for (size_t i = 0; i < bufs.size(); i++)
      if (bufs[i] == p) return int(i);
    throw ShimError("queue " + name + ": " + what + " of a tensor that is not one of its buffers");
  }
};

template <TPosition POS>
class TBuf : public QueBase {
 public:
  TBuf() { pos = POS; }
  template <typename T>
  LocalTensor<T> Get() const {
    if (bufs.empty()) throw ShimError("buffer " + name + ": Get before InitBuffer");
    return LocalTensor<T>(reinterpret_cast<T*>(bufs[0]), uint32_t(len / sizeof(T)), POS);
  }
  template <typename T>
  LocalTensor<T> Get(uint32_t n) const {
    if (uint64_t(n) * sizeof(T) > len) throw ShimError("buffer " + name + ": Get(" + std::to_string(n) + ") past its " + std::to_string(len) + " B");
    return LocalTensor<T>(reinterpret_cast<T*>(bufs[0]), n, POS);
  }
};

class TPipe {
 public:
  TPipe() { core().reset(*core().chip, core().blockIdx, core().blockNum); }
  // InitBuffer as CANN has it; the shim names the buffer "(unnamed)". Kernels use V4_INIT_BUFFER,
  // which passes the variable's name here through InitBufferNamed.
  template <class Q>
  void InitBuffer(Q& q, int32_t num, uint32_t len) { InitBufferNamed(q.name, q, num, len); }
  template <class Q>
  void InitBuffer(Q& q, uint32_t len) { InitBufferNamed(q.name, q, 1, len); }
  template <class Q>
  void InitBufferNamed(const std::string& name, Q& q, int32_t num, uint32_t len) {
    q.name = name;
    q.len = len;
    q.bufs.clear();
    q.state.assign(num, 0);
    q.fifo.clear();
    for (int32_t i = 0; i < num; i++)
      q.bufs.push_back(core().reserve(level_of(q.pos), len,
                                      std::string(pos_name(q.pos)) + " buffer " + name + "[" + std::to_string(i) + "]"));
  }
};

// ---- synchronisation between the scalar unit and the pipes ----
// On a device, a scalar write to UB must be fenced before a pipe reads it, and a pipe's result
// before the scalar unit reads it; the shim executes in program order, so the fence is a no-op.
enum pipe_t { PIPE_S, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };
template <pipe_t P>
inline void PipeBarrier() {}

// ---- data movement ----
struct DataCopyParams {
  uint16_t blockCount = 1;
  uint16_t blockLen = 0;   // in 32 B blocks
  uint16_t srcStride = 0;  // gap between blocks, in 32 B blocks
  uint16_t dstStride = 0;
};
struct DataCopyExtParams {
  uint16_t blockCount = 1;
  uint32_t blockLen = 0;   // bytes
  uint32_t srcStride = 0;  // GM side: bytes; UB side: 32 B blocks
  uint32_t dstStride = 0;
  uint32_t rsv = 0;
};
template <typename T>
struct DataCopyPadExtParams {
  bool isPad = false;
  uint8_t leftPadding = 0, rightPadding = 0;
  T paddingValue = T(0);
};

namespace shim {
template <typename T>
void check_local(const LocalTensor<T>& t, const char* op) {
  if (t.level_offset() % 32)
    throw ShimError(std::string(op) + ": local tensor at " + pos_name(t.GetPosition()) + "+" + std::to_string(t.level_offset()) +
                    " is not 32-byte aligned");
}
template <typename T>
void check_count(const LocalTensor<T>& t, uint64_t n, const char* op) {
  if (n > t.GetSize())
    throw ShimError(std::string(op) + ": " + std::to_string(n) + " elements past a local tensor of " + std::to_string(t.GetSize()));
}
inline void check_path(bool ok, const char* op, TPosition a, TPosition b) {
  if (!ok) throw ShimError(std::string(op) + ": no copy path " + pos_name(a) + " -> " + pos_name(b));
}
inline bool from_gm_ok(TPosition p) {
  return p == TPosition::VECIN || p == TPosition::VECCALC || p == TPosition::A1 || p == TPosition::B1;
}
inline bool to_gm_ok(TPosition p) { return p == TPosition::VECOUT || p == TPosition::VECCALC; }
template <typename T>
void gm_write(T* dst, const T* src, uint64_t n) {
  if (core().atomicAdd) {
    for (uint64_t i = 0; i < n; i++) dst[i] += src[i];
  } else {
    std::memcpy(dst, src, n * sizeof(T));
  }
}
}  // namespace shim

template <typename T>
inline void SetAtomicAdd() {
  static_assert(std::is_same<T, float>::value, "the shim's atomic add is float");
  core().atomicAdd = true;
}
inline void SetAtomicNone() { core().atomicAdd = false; }

template <typename T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
  shim::check_path(shim::from_gm_ok(dst.GetPosition()), "DataCopy", TPosition::GM, dst.GetPosition());
  shim::check_local(dst, "DataCopy GM->local");
  if (count * sizeof(T) % 32)
    throw ShimError("DataCopy GM->local: " + std::to_string(count * sizeof(T)) + " B is not whole 32 B blocks (use DataCopyPad)");
  shim::check_count(dst, count, "DataCopy GM->local");
  src.check(0, count);
  std::memcpy(dst.GetPhyAddr(), src.GetPhyAddr(), count * sizeof(T));
}
template <typename T>
void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  shim::check_path(shim::to_gm_ok(src.GetPosition()), "DataCopy", src.GetPosition(), TPosition::GM);
  shim::check_local(src, "DataCopy local->GM");
  if (count * sizeof(T) % 32)
    throw ShimError("DataCopy local->GM: " + std::to_string(count * sizeof(T)) + " B is not whole 32 B blocks (use DataCopyPad)");
  shim::check_count(src, count, "DataCopy local->GM");
  dst.check(0, count);
  shim::gm_write(dst.GetPhyAddr(), src.GetPhyAddr(), count);
}
template <typename T>
void DataCopy(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  shim::check_path(level_of(dst.GetPosition()) == Level::UB && level_of(src.GetPosition()) == Level::UB, "DataCopy",
                   src.GetPosition(), dst.GetPosition());
  shim::check_local(dst, "DataCopy local->local");
  shim::check_local(src, "DataCopy local->local");
  if (count * sizeof(T) % 32) throw ShimError("DataCopy local->local: not whole 32 B blocks");
  shim::check_count(dst, count, "DataCopy local->local");
  shim::check_count(src, count, "DataCopy local->local");
  std::memmove(dst.GetPhyAddr(), src.GetPhyAddr(), count * sizeof(T));
}
// blockCount blocks of blockLen·32 B, gaps of srcStride / dstStride 32 B blocks between them
template <typename T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyParams& p) {
  shim::check_path(shim::from_gm_ok(dst.GetPosition()), "DataCopy", TPosition::GM, dst.GetPosition());
  shim::check_local(dst, "DataCopy GM->local");
  const uint64_t e = 32 / sizeof(T), len = p.blockLen * e;
  for (uint64_t b = 0; b < p.blockCount; b++) {
    uint64_t so = b * (p.blockLen + p.srcStride) * e, d0 = b * (p.blockLen + p.dstStride) * e;
    src.check(so, len);
    shim::check_count(dst, d0 + len, "DataCopy GM->local");
    std::memcpy(dst.GetPhyAddr() + d0, src.GetPhyAddr() + so, len * sizeof(T));
  }
}
template <typename T>
void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyParams& p) {
  shim::check_path(shim::to_gm_ok(src.GetPosition()), "DataCopy", src.GetPosition(), TPosition::GM);
  shim::check_local(src, "DataCopy local->GM");
  const uint64_t e = 32 / sizeof(T), len = p.blockLen * e;
  for (uint64_t b = 0; b < p.blockCount; b++) {
    uint64_t s0 = b * (p.blockLen + p.srcStride) * e, d0 = b * (p.blockLen + p.dstStride) * e;
    dst.check(d0, len);
    shim::check_count(src, s0 + len, "DataCopy local->GM");
    shim::gm_write(dst.GetPhyAddr() + d0, src.GetPhyAddr() + s0, len);
  }
}
// Unaligned copies: blockCount rows of blockLen bytes. GM rows are srcStride (or dstStride) bytes
// apart beyond blockLen; each local row starts on a 32 B boundary (the row rounded up) plus the
// local stride in 32 B blocks.
template <typename T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& p, const DataCopyPadExtParams<T>& pad) {
  shim::check_path(shim::from_gm_ok(dst.GetPosition()), "DataCopyPad", TPosition::GM, dst.GetPosition());
  shim::check_local(dst, "DataCopyPad GM->local");
  if (p.blockLen % sizeof(T)) throw ShimError("DataCopyPad: blockLen is not whole elements");
  const uint64_t n = p.blockLen / sizeof(T), row = (p.blockLen + 31) / 32 * 32 / sizeof(T);
  for (uint64_t b = 0; b < p.blockCount; b++) {
    uint64_t so = b * (p.blockLen + p.srcStride) / sizeof(T), d0 = b * (row + p.dstStride * 32 / sizeof(T));
    src.check(so, n);
    shim::check_count(dst, d0 + row, "DataCopyPad GM->local");
    std::memcpy(dst.GetPhyAddr() + d0, src.GetPhyAddr() + so, n * sizeof(T));
    if (pad.isPad)
      for (uint64_t i = n; i < row; i++) dst.GetPhyAddr()[d0 + i] = pad.paddingValue;
  }
}
template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& p) {
  shim::check_path(shim::to_gm_ok(src.GetPosition()), "DataCopyPad", src.GetPosition(), TPosition::GM);
  shim::check_local(src, "DataCopyPad local->GM");
  if (p.blockLen % sizeof(T)) throw ShimError("DataCopyPad: blockLen is not whole elements");
  const uint64_t n = p.blockLen / sizeof(T), row = (p.blockLen + 31) / 32 * 32 / sizeof(T);
  for (uint64_t b = 0; b < p.blockCount; b++) {
    uint64_t s0 = b * (row + p.srcStride * 32 / sizeof(T)), d0 = b * (p.blockLen + p.dstStride) / sizeof(T);
    dst.check(d0, n);
    shim::check_count(src, s0 + n, "DataCopyPad local->GM");
    shim::gm_write(dst.GetPhyAddr() + d0, src.GetPhyAddr() + s0, n);
  }
}

// ---- vector unit (count form): operands in UB, 32 B aligned ----
namespace shim {
template <typename T>
void vec_check(const LocalTensor<T>& t, uint32_t n, const char* op) {
  if (level_of(t.GetPosition()) != Level::UB) throw ShimError(std::string(op) + ": operand is not in UB");
  check_local(t, op);
  check_count(t, n, op);
}
template <typename T, typename F>
void unary(const char* op, const LocalTensor<T>& d, const LocalTensor<T>& s, uint32_t n, F f) {
  vec_check(d, n, op), vec_check(s, n, op);
  for (uint32_t i = 0; i < n; i++) d.GetPhyAddr()[i] = f(s.GetPhyAddr()[i]);
}
template <typename T, typename F>
void binary(const char* op, const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, uint32_t n, F f) {
  vec_check(d, n, op), vec_check(a, n, op), vec_check(b, n, op);
  for (uint32_t i = 0; i < n; i++) d.GetPhyAddr()[i] = f(a.GetPhyAddr()[i], b.GetPhyAddr()[i]);
}
}  // namespace shim
template <typename T>
void Add(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, uint32_t n) { shim::binary("Add", d, a, b, n, [](T x, T y) { return T(x + y); }); }
template <typename T>
void Sub(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, uint32_t n) { shim::binary("Sub", d, a, b, n, [](T x, T y) { return T(x - y); }); }
template <typename T>
void Mul(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, uint32_t n) { shim::binary("Mul", d, a, b, n, [](T x, T y) { return T(x * y); }); }
template <typename T>
void Div(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, uint32_t n) { shim::binary("Div", d, a, b, n, [](T x, T y) { return T(x / y); }); }
template <typename T>
void Max(const LocalTensor<T>& d, const LocalTensor<T>& a, const LocalTensor<T>& b, uint32_t n) { shim::binary("Max", d, a, b, n, [](T x, T y) { return x > y ? x : y; }); }
template <typename T>
void Adds(const LocalTensor<T>& d, const LocalTensor<T>& s, T v, uint32_t n) { shim::unary("Adds", d, s, n, [v](T x) { return T(x + v); }); }
template <typename T>
void Muls(const LocalTensor<T>& d, const LocalTensor<T>& s, T v, uint32_t n) { shim::unary("Muls", d, s, n, [v](T x) { return T(x * v); }); }
template <typename T>
void Mins(const LocalTensor<T>& d, const LocalTensor<T>& s, T v, uint32_t n) { shim::unary("Mins", d, s, n, [v](T x) { return x < v ? x : v; }); }
template <typename T>
void Maxs(const LocalTensor<T>& d, const LocalTensor<T>& s, T v, uint32_t n) { shim::unary("Maxs", d, s, n, [v](T x) { return x > v ? x : v; }); }
template <typename T>
void Exp(const LocalTensor<T>& d, const LocalTensor<T>& s, uint32_t n) { shim::unary("Exp", d, s, n, [](T x) { return T(std::exp(x)); }); }
template <typename T>
void ShiftLeft(const LocalTensor<T>& d, const LocalTensor<T>& s, T bits, uint32_t n) {
  static_assert(std::is_integral<T>::value, "ShiftLeft is integral");
  shim::unary("ShiftLeft", d, s, n, [bits](T x) { return T(x << bits); });
}
template <typename T>
void Duplicate(const LocalTensor<T>& d, T v, uint32_t n) {
  shim::vec_check(d, n, "Duplicate");
  for (uint32_t i = 0; i < n; i++) d.GetPhyAddr()[i] = v;
}
// d[0] = Σ s[0:n]; work is scratch of at least n elements (as on a device)
template <typename T>
void ReduceSum(const LocalTensor<T>& d, const LocalTensor<T>& s, const LocalTensor<T>& work, uint32_t n) {
  shim::vec_check(d, 1, "ReduceSum"), shim::vec_check(s, n, "ReduceSum"), shim::vec_check(work, n, "ReduceSum");
  T acc = 0;
  for (uint32_t i = 0; i < n; i++) acc += s.GetPhyAddr()[i];
  d.GetPhyAddr()[0] = acc;
}
enum class RoundMode { CAST_NONE, CAST_RINT, CAST_ROUND, CAST_FLOOR, CAST_CEIL, CAST_TRUNC };
template <typename D, typename S>
void Cast(const LocalTensor<D>& d, const LocalTensor<S>& s, RoundMode mode, uint32_t n) {
  shim::vec_check(d, n, "Cast"), shim::vec_check(s, n, "Cast");
  for (uint32_t i = 0; i < n; i++) {
    double v = double(s.GetPhyAddr()[i]);
    if (std::is_integral<D>::value) {
      v = mode == RoundMode::CAST_FLOOR ? std::floor(v) : mode == RoundMode::CAST_CEIL ? std::ceil(v) :
          mode == RoundMode::CAST_TRUNC ? std::trunc(v) : mode == RoundMode::CAST_ROUND ? std::round(v) : std::nearbyint(v);
    }
    d.GetPhyAddr()[i] = D(v);
  }
}
// d[i] = the T at byte offset off[i] − base … of src: d[i] = *(T*)((char*)src + off[i] − base)
template <typename T>
void Gather(const LocalTensor<T>& d, const LocalTensor<T>& src, const LocalTensor<uint32_t>& off, uint32_t base, uint32_t n) {
  shim::vec_check(d, n, "Gather"), shim::vec_check(off, n, "Gather"), shim::vec_check(src, 1, "Gather");
  const uint64_t bytes = uint64_t(src.GetSize()) * sizeof(T);
  std::vector<T> out(n);  // d may alias off
  for (uint32_t i = 0; i < n; i++) {
    uint64_t o = uint64_t(off.GetPhyAddr()[i]) - base;
    if (o % sizeof(T) || o + sizeof(T) > bytes)
      throw ShimError("Gather: offset " + std::to_string(o) + " outside a source of " + std::to_string(bytes) + " B");
    std::memcpy(&out[i], reinterpret_cast<const uint8_t*>(src.GetPhyAddr()) + o, sizeof(T));
  }
  std::memcpy(d.GetPhyAddr(), out.data(), n * sizeof(T));
}
enum class CMPMODE { LT, GT, EQ, LE, GE, NE };
// mask bit i (LSB first, 8 per byte) = s[i] <cmp> v
template <typename T>
void CompareScalar(const LocalTensor<uint8_t>& mask, const LocalTensor<T>& s, T v, CMPMODE m, uint32_t n) {
  shim::vec_check(s, n, "CompareScalar"), shim::vec_check(mask, (n + 7) / 8, "CompareScalar");
  std::memset(mask.GetPhyAddr(), 0, (n + 7) / 8);
  for (uint32_t i = 0; i < n; i++) {
    T x = s.GetPhyAddr()[i];
    bool b = m == CMPMODE::LT ? x < v : m == CMPMODE::GT ? x > v : m == CMPMODE::EQ ? x == v : m == CMPMODE::LE ? x <= v :
             m == CMPMODE::GE ? x >= v : x != v;
    if (b) mask.GetPhyAddr()[i / 8] |= uint8_t(1u << (i % 8));
  }
}
enum class SELMODE { VSEL_CMPMASK_SPR, VSEL_TENSOR_SCALAR_MODE, VSEL_TENSOR_TENSOR_MODE };
// d[i] = mask bit i ? a[i] : v
template <typename T>
void Select(const LocalTensor<T>& d, const LocalTensor<uint8_t>& mask, const LocalTensor<T>& a, T v, SELMODE mode, uint32_t n) {
  if (mode != SELMODE::VSEL_TENSOR_SCALAR_MODE) throw ShimError("Select: the shim has the tensor-scalar mode only");
  shim::vec_check(d, n, "Select"), shim::vec_check(a, n, "Select"), shim::vec_check(mask, (n + 7) / 8, "Select");
  for (uint32_t i = 0; i < n; i++) d.GetPhyAddr()[i] = (mask.GetPhyAddr()[i / 8] >> (i % 8)) & 1 ? a.GetPhyAddr()[i] : v;
}

// ---- the Cube unit through the Matmul API (ND GM operands) ----
enum class CubeFormat { ND, NZ };
template <TPosition P, CubeFormat F, typename T>
struct MatmulType {
  using type = T;
};
// The fields of CANN's TCubeTiling that the shim reads (all of them int32 there).
struct TCubeTiling {
  int32_t usedCoreNum = 1, M = 0, N = 0, Ka = 0, Kb = 0, singleCoreM = 0, singleCoreN = 0, singleCoreK = 0;
  int32_t baseM = 0, baseN = 0, baseK = 0, depthA1 = 1, depthB1 = 1, stepM = 1, stepN = 1, stepKa = 1, stepKb = 1;
  int32_t isBias = 0, dbL0A = 1, dbL0B = 1, dbL0C = 1;
};
inline __gm__ uint8_t* GetSysWorkSpacePtr() { return nullptr; }

// C (M,N) = op(A) op(B) over GM, base tiles baseM × baseN × baseK accumulated in float32;
// enAtomic: C += instead of C =. Row strides: A (M,K): orgKa, Aᵀ stored (K,M): orgM;
// B (K,N): orgN, Bᵀ stored (N,K): orgKb; C: orgKc when set, else orgN.
template <class AT, class BT, class CT>
class Matmul {
  using TA = typename AT::type;
  using TB = typename BT::type;
  using TC = typename CT::type;

 public:
  // REGIST_MATMUL_OBJ: checks the tiling's footprint on L1 (beside the pipe's L1 buffers), L0A, L0B, L0C.
  void ShimInit(TPipe*, const TCubeTiling* t, const char* name) {
    t_ = *t;
    name_ = name;
    const int32_t e = int32_t(sizeof(TA));
    if (t_.baseM % 16 || t_.baseN % 16 || (t_.baseK * e) % 32 || t_.baseM <= 0 || t_.baseN <= 0 || t_.baseK <= 0)
      throw ShimError("Matmul " + name_ + ": baseM, baseN must be multiples of 16 and baseK whole 32 B (got " +
                      std::to_string(t_.baseM) + ", " + std::to_string(t_.baseN) + ", " + std::to_string(t_.baseK) + ")");
    CoreCtx& c = core();
    auto need = [&](Level l, uint64_t bytes, const std::string& what) {
      if (bytes > c.chip->bytes[int(l)] - c.used[int(l)])
        throw ShimError(std::string(level_name(l)) + " overflow on " + c.chip->name + ": Matmul " + name_ + " " + what +
                        " needs " + std::to_string(bytes) + " B, " + std::to_string(c.chip->bytes[int(l)] - c.used[int(l)]) +
                        " B of " + std::to_string(c.chip->bytes[int(l)]) + " B left");
    };
    need(Level::L0A, uint64_t(t_.baseM) * t_.baseK * e * t_.dbL0A, "A tile (baseM × baseK × dbL0A)");
    need(Level::L0B, uint64_t(t_.baseK) * t_.baseN * e * t_.dbL0B, "B tile (baseK × baseN × dbL0B)");
    need(Level::L0C, uint64_t(t_.baseM) * t_.baseN * sizeof(float) * t_.dbL0C, "C tile (baseM × baseN × dbL0C)");
    need(Level::L1, uint64_t(t_.depthA1) * t_.baseM * t_.baseK * e + uint64_t(t_.depthB1) * t_.baseK * t_.baseN * e,
         "A1/B1 tiles (depthA1 · baseM × baseK + depthB1 · baseK × baseN)");
    ready_ = true;
  }
  void SetOrgShape(int32_t M, int32_t N, int32_t Ka, int32_t Kb, int32_t Kc = 0) { oM_ = M, oN_ = N, oKa_ = Ka, oKb_ = Kb, oKc_ = Kc; }
  void SetSingleShape(int32_t M, int32_t N, int32_t K) { M_ = M, N_ = N, K_ = K; }
  void SetTensorA(const GlobalTensor<TA>& a, bool trans = false) { a_ = a, ta_ = trans; }
  void SetTensorB(const GlobalTensor<TB>& b, bool trans = false) { b_ = b, tb_ = trans; }
  void IterateAll(const GlobalTensor<TC>& c, uint8_t enAtomic = 0) {
    if (!ready_) throw ShimError("Matmul " + name_ + ": IterateAll before REGIST_MATMUL_OBJ");
    const int64_t lda = ta_ ? oM_ : oKa_, ldb = tb_ ? oKb_ : oN_, ldc = oKc_ ? oKc_ : oN_;
    if (M_ <= 0 || N_ <= 0) return;
    // bounds of every operand (the last element each touches)
    a_.check(0, ta_ ? uint64_t(K_ - 1) * lda + M_ : uint64_t(M_ - 1) * lda + K_);
    b_.check(0, tb_ ? uint64_t(N_ - 1) * ldb + K_ : uint64_t(K_ - 1) * ldb + N_);
    c.check(0, uint64_t(M_ - 1) * ldc + N_);
    const TA* A = a_.GetPhyAddr();
    const TB* B = b_.GetPhyAddr();
    TC* C = c.GetPhyAddr();
    std::vector<float> tile(size_t(t_.baseM) * t_.baseN);
    for (int32_t m0 = 0; m0 < M_; m0 += t_.baseM)
      for (int32_t n0 = 0; n0 < N_; n0 += t_.baseN) {
        const int32_t bm = std::min(t_.baseM, M_ - m0), bn = std::min(t_.baseN, N_ - n0);
        std::fill(tile.begin(), tile.end(), 0.f);
        for (int32_t k0 = 0; k0 < K_; k0 += t_.baseK) {
          const int32_t bk = std::min(t_.baseK, K_ - k0);
          for (int32_t i = 0; i < bm; i++)
            for (int32_t k = 0; k < bk; k++) {
              const int64_t mi = m0 + i, ki = k0 + k;
              const float av = float(ta_ ? A[ki * lda + mi] : A[mi * lda + ki]);
              if (av == 0.f) continue;
              float* trow = &tile[size_t(i) * t_.baseN];
              if (tb_)
                for (int32_t j = 0; j < bn; j++) trow[j] += av * float(B[(n0 + j) * ldb + ki]);
              else
                for (int32_t j = 0; j < bn; j++) trow[j] += av * float(B[ki * ldb + n0 + j]);
            }
        }
        for (int32_t i = 0; i < bm; i++)
          for (int32_t j = 0; j < bn; j++) {
            TC& o = C[int64_t(m0 + i) * ldc + n0 + j];
            o = enAtomic ? TC(o + tile[size_t(i) * t_.baseN + j]) : TC(tile[size_t(i) * t_.baseN + j]);
          }
      }
  }
  void End() {}

 private:
  TCubeTiling t_{};
  std::string name_;
  bool ready_ = false, ta_ = false, tb_ = false;
  int32_t oM_ = 0, oN_ = 0, oKa_ = 0, oKb_ = 0, oKc_ = 0, M_ = 0, N_ = 0, K_ = 0;
  GlobalTensor<TA> a_;
  GlobalTensor<TB> b_;
};
#define REGIST_MATMUL_OBJ(pipe, ws, mm, tiling) (mm).ShimInit((pipe), (tiling), #mm)

// ---- launching: blocks run one after another, each on a fresh core ----
namespace shim {
inline void launch(const Chip& chip, int64_t blockDim, const std::function<void()>& kernel) {
  if (blockDim < 1) throw ShimError("launch: blockDim must be at least 1");
  for (int64_t b = 0; b < blockDim; b++) {
    core().reset(chip, b, blockDim);
    kernel();
  }
  core().atomicAdd = false;
}
}  // namespace shim

}  // namespace AscendC
