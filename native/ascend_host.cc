// The Ascend backend's device, memory, streams and ops (ascend_host.h).
#include "ascend_host.h"
#include <algorithm>
#include <cstring>
#include <functional>
#include <stdexcept>

namespace v4ascend {

// L0A: 128 × 64 fp32 × 2 buffers = 64 KiB; L0B the same; L0C: 128 × 128 fp32 = 64 KiB;
// L1: 2 A tiles + 2 B tiles of 32 KiB = 128 KiB. UB: vector chunks of 2048 floats, about 130 KiB
// with the queues' double buffers (common.h Core lists them).
Tiling default_tiling() {
  Tiling t{};
  t.cube = CubeTiling{128, 128, 64, 2, 2, 2, 2, 1};
  t.vec.cols = 2048;
  t.vec.slabRows = 64;
  t.vec.sinkTokens = 0;  // 0: sinkhorn_tokens() for the call's n and iters
  return t;
}

// sinkhorn.cpp's UB per token: inQ 2 × 2 chunks, outQ 2 × 1, soa 4, pattern 2, trace 2·iters − 1
// (chunks of n·n floats), and 4 line floats.
int32_t sinkhorn_tokens(int32_t n, int32_t iters, uint32_t ubBytes) {
  const int64_t perToken = int64_t(12 + 2 * iters - 1) * n * n * 4 + 16;
  int64_t tc = int64_t(ubBytes) / perToken / 8 * 8;
  return int32_t(std::max<int64_t>(8, std::min<int64_t>(tc, 1024)));
}

namespace {
long ceil8(long r) { return (r + 7) / 8 * 8; }
// bytes of a shipped weight's data / scales (kernels/cpu/weights.h formats)
size_t data_bytes(v4::Fmt f, long rows, long cols) {
  return size_t(f == v4::Fmt::f32 ? rows * cols * 4 : f == v4::Fmt::fp8 ? rows * cols : rows * cols / 2);
}
size_t scale_bytes(v4::Fmt f, long rows, long cols) {
  return size_t(f == v4::Fmt::fp8 ? ((rows + 127) / 128) * ((cols + 127) / 128) : f == v4::Fmt::fp4 ? rows * (cols / 32) : 0);
}

void check_dims(long v, long mult, const std::string& what) {
  if (v % mult) throw std::invalid_argument("ascend: " + what + " (" + std::to_string(v) + ") must be a multiple of " + std::to_string(mult));
}
// The Ascend kernels copy whole 32 B blocks: f32 rows of a multiple of 8, FP8 rows of a multiple
// of 32 bytes, FP4 rows of a multiple of 64 values (32 bytes).
void check_weight(const v4::WeightRef& W, const std::string& what) {
  if (W.fmt == v4::Fmt::bf16) throw std::invalid_argument("ascend: " + what + " is BF16; the Ascend kernels take F32, FP8 and FP4 base weights");
  check_dims(W.cols, W.fmt == v4::Fmt::fp4 ? 64 : W.fmt == v4::Fmt::fp8 ? 32 : 8, what + " columns");
  if (W.fmt == v4::Fmt::f32 && W.ld != W.cols) throw std::invalid_argument("ascend: " + what + " must be a packed matrix");
}
void no_dropout(const v4::Dropout& d, const std::string& what) {
  if (d.on) throw std::invalid_argument("ascend: LoRA dropout (" + what + ") is not built into the Ascend kernels; set lora.dropout to 0");
}
}  // namespace

// One op's device buffers, host staging and downloads.
class Op {
 public:
  explicit Op(Device& d) : d_(d), lock_(d.busy_) {
    acl_check(d_.api_, d_.api_.aclrtSetDevice(d_.device_), "aclrtSetDevice");  // this thread's context
  }
  ~Op() {
    if (!finished_) {  // an error left work queued: let it drain before its memory goes
      d_.api_.aclrtSynchronizeStream(d_.compute_);
      d_.api_.aclrtSynchronizeStream(d_.copy_);
    }
    for (aclTensorList* l : lists_) d_.api_.aclDestroyTensorList(l);
    for (const Buf& b : bufs_) d_.free(b.p, b.n, d_.opBytes_);
  }
  // a device copy of host[0:bytes) (host must stay valid until run() returns)
  uint64_t up(const void* host, size_t bytes) {
    void* p = mem(bytes);
    acl_check(d_.api_, d_.api_.aclrtMemcpyAsync(p, bytes, host, bytes, kHostToDevice, d_.copy_), "aclrtMemcpyAsync (upload)");
    return uint64_t(reinterpret_cast<uintptr_t>(p));
  }
  // a device copy of bytes this op keeps until it ends
  uint64_t stage(std::vector<uint8_t> bytes) {
    staged_.push_back(std::move(bytes));
    return up(staged_.back().data(), staged_.back().size());
  }
  uint64_t zeros(size_t bytes) {
    void* p = mem(bytes);
    acl_check(d_.api_, d_.api_.aclrtMemsetAsync(p, bytes, 0, bytes, d_.copy_), "aclrtMemsetAsync");
    return uint64_t(reinterpret_cast<uintptr_t>(p));
  }
  uint64_t scratch(size_t bytes) { return uint64_t(reinterpret_cast<uintptr_t>(mem(bytes))); }
  // after the kernel: host[i, j] += dev[i, j] for i < rows, j < cols (dev rows are devCols apart)
  void add_back(float* host, uint64_t dev, long rows, long cols, long devCols) {
    if (host && rows * cols != 0) downs_.push_back(Down{host, dev, rows, cols, devCols});
  }
  // r × in A padded to r8 rows of zeros, out × r B padded to r8 columns
  uint64_t padded(const float* M, long rows, long cols, long prows, long pcols) {
    std::vector<uint8_t> b(size_t(prows * pcols) * 4, 0);
    float* f = reinterpret_cast<float*>(b.data());
    for (long i = 0; i < rows; i++) std::memcpy(f + i * pcols, M + i * cols, size_t(cols) * 4);
    return stage(std::move(b));
  }
  // One operand of CANN's grouped matmul: a rows × cols view of the device buffer at base,
  // starting `offset` floats in, rows `ld` floats apart (transposed: the view's columns are the
  // buffer's rows, i.e. strides (1, ld)); storage: the buffer's length in floats.
  struct View {
    uint64_t base;
    int64_t rows, cols, ld, offset, storage;
    bool transposed;
  };
  // out_g = x_g · w_g for every g, by aclnnGroupedMatmulV4 on the compute stream (call from run's
  // onCompute, after the inputs are there). Its tensor lists live until the op ends.
  void grouped_matmul(const std::vector<View>& x, const std::vector<View>& w, const std::vector<View>& out) {
    const AclApi& api = d_.api_;
    auto list = [&](const std::vector<View>& vs) {
      std::vector<const aclTensor*> ts;
      for (const View& v : vs) {
        const int64_t dims[2] = {v.rows, v.cols}, strides[2] = {v.transposed ? 1 : v.ld, v.transposed ? v.ld : 1};
        const int64_t storage[1] = {v.storage};
        aclTensor* t = api.aclCreateTensor(dims, 2, kAclFloat, strides, v.offset, kAclFormatNd, storage, 1,
                                           reinterpret_cast<void*>(uintptr_t(v.base)));
        if (!t) throw AclError("aclCreateTensor failed: no tensor for a grouped-matmul operand", 161002);
        ts.push_back(t);
      }
      aclTensorList* l = api.aclCreateTensorList(ts.data(), ts.size());
      if (!l) throw AclError("aclCreateTensorList failed: no list for the grouped-matmul operands", 161002);
      lists_.push_back(l);
      return l;
    };
    aclTensorList *lx = list(x), *lw = list(w), *lo = list(out);
    uint64_t wsBytes = 0;
    aclOpExecutor* exec = nullptr;
    // multi-tensor mode: groupType -1 (no split axis), splitItem 0 (one output per group), no group list
    acl_check(api, api.aclnnGroupedMatmulV4GetWorkspaceSize(lx, lw, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                          nullptr, nullptr, nullptr, 0, -1, 0, 0, lo, nullptr, nullptr, &wsBytes, &exec),
              "aclnnGroupedMatmulV4GetWorkspaceSize");
    void* ws = wsBytes ? mem(size_t(wsBytes)) : nullptr;
    acl_check(api, api.aclnnGroupedMatmulV4(ws, wsBytes, exec, d_.compute_), "aclnnGroupedMatmulV4");
  }
  // k null: no kernel (onCompute did all the work)
  template <class Args>
  void run(KernelLaunch k, const char* name, uint32_t blockDim, const Args& args, const Tiling& t,
           const std::function<void()>& onCompute = nullptr) {
    std::vector<uint8_t> a(sizeof(Args)), tb(sizeof(Tiling));
    std::memcpy(a.data(), &args, sizeof(Args));
    std::memcpy(tb.data(), &t, sizeof(Tiling));
    void* ga = reinterpret_cast<void*>(uintptr_t(stage(std::move(a))));
    void* gt = reinterpret_cast<void*>(uintptr_t(stage(std::move(tb))));
    const AclApi& api = d_.api_;
    acl_check(api, api.aclrtRecordEvent(d_.inputsReady_, d_.copy_), "aclrtRecordEvent");
    acl_check(api, api.aclrtStreamWaitEvent(d_.compute_, d_.inputsReady_), "aclrtStreamWaitEvent");
    if (onCompute) onCompute();
    if (k) acl_check(api, aclError(k(blockDim, d_.compute_, ga, gt)), name);
    acl_check(api, api.aclrtRecordEvent(d_.kernelDone_, d_.compute_), "aclrtRecordEvent");
    acl_check(api, api.aclrtStreamWaitEvent(d_.copy_, d_.kernelDone_), "aclrtStreamWaitEvent");
    std::vector<std::vector<float>> host(downs_.size());
    for (size_t i = 0; i < downs_.size(); i++) {
      const Down& dn = downs_[i];
      host[i].resize(size_t(dn.rows * dn.devCols));
      acl_check(api, api.aclrtMemcpyAsync(host[i].data(), host[i].size() * 4, reinterpret_cast<void*>(uintptr_t(dn.dev)),
                                          host[i].size() * 4, kDeviceToHost, d_.copy_), "aclrtMemcpyAsync (download)");
    }
    acl_check(api, api.aclrtSynchronizeStream(d_.copy_), "aclrtSynchronizeStream");
    finished_ = true;
    for (size_t i = 0; i < downs_.size(); i++) {
      const Down& dn = downs_[i];
      for (long r = 0; r < dn.rows; r++)
        for (long c = 0; c < dn.cols; c++) dn.host[r * dn.cols + c] += host[i][size_t(r * dn.devCols + c)];
    }
  }

 private:
  void* mem(size_t bytes) {
    void* p = d_.alloc(bytes, d_.opBytes_);
    bufs_.push_back(Buf{p, bytes});
    return p;
  }
  struct Buf {
    void* p;
    size_t n;
  };
  struct Down {
    float* host;
    uint64_t dev;
    long rows, cols, devCols;
  };
  Device& d_;
  std::lock_guard<std::mutex> lock_;
  std::vector<Buf> bufs_;
  std::vector<std::vector<uint8_t>> staged_;
  std::vector<Down> downs_;
  std::vector<aclTensorList*> lists_;
  bool finished_ = false;
};

Device::Device(const AclApi& api, int32_t deviceId, uint32_t blockDim) : api_(api), device_(deviceId), blockDim_(blockDim) {
  if (blockDim_ < 1) throw std::invalid_argument("ascend: blockDim must be at least 1");
  const aclError init = api_.aclInit(nullptr);
  if (init != 100002) acl_check(api_, init, "aclInit");  // 100002: already initialised in this process
  acl_check(api_, api_.aclrtSetDevice(device_), "aclrtSetDevice");
  acl_check(api_, api_.aclrtCreateStream(&copy_), "aclrtCreateStream (copy)");
  acl_check(api_, api_.aclrtCreateStream(&compute_), "aclrtCreateStream (compute)");
  acl_check(api_, api_.aclrtCreateEvent(&inputsReady_), "aclrtCreateEvent");
  acl_check(api_, api_.aclrtCreateEvent(&kernelDone_), "aclrtCreateEvent");
}

Device::~Device() {
  release_weights();
  api_.aclrtDestroyEvent(kernelDone_);
  api_.aclrtDestroyEvent(inputsReady_);
  api_.aclrtDestroyStream(compute_);
  api_.aclrtDestroyStream(copy_);
  api_.aclrtResetDevice(device_);
}

void* Device::alloc(size_t bytes, size_t& counter) {
  void* p = nullptr;
  acl_check(api_, api_.aclrtMalloc(&p, std::max<size_t>(bytes, 32), kMallocHugeFirst), "aclrtMalloc");
  counter += std::max<size_t>(bytes, 32);
  return p;
}
// Destructors free through here, so it does not throw: memory whose aclrtFree fails stays
// counted (op_bytes() / weight_bytes() show it).
void Device::free(void* p, size_t bytes, size_t& counter) noexcept {
  if (p && api_.aclrtFree(p) == 0) counter -= std::max<size_t>(bytes, 32);
}

namespace {
// FNV-1a over the size, the format and 64 evenly spaced 8-byte samples of the data and scales
uint64_t weight_fingerprint(const v4::WeightRef& W, size_t dataBytes, size_t scaleBytes) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; i++) h = (h ^ ((v >> (8 * i)) & 0xff)) * 1099511628211ull;
  };
  auto sample = [&](const void* p, size_t n) {
    if (!p || n < 8) return;
    for (size_t i = 0; i < 64; i++) {
      uint64_t v;
      std::memcpy(&v, static_cast<const uint8_t*>(p) + (n - 8) * i / 63, 8);
      mix(v);
    }
  };
  mix(dataBytes), mix(scaleBytes), mix(uint64_t(W.fmt));
  sample(W.data, dataBytes);
  sample(W.scale, scaleBytes);
  return h;
}
}  // namespace

void Device::release_weights() {
  for (auto& kv : weights_) {
    free(kv.second.data, kv.second.dataBytes, weightBytes_);
    free(kv.second.scale, kv.second.scaleBytes, weightBytes_);
  }
  weights_.clear();
}

WeightDesc Device::weight(const v4::WeightRef& W, const char* what) {
  check_weight(W, what);
  const long rows0 = W.row0 + W.rows;  // the shipped tensor's rows this view reaches
  const size_t db = data_bytes(W.fmt, rows0, W.cols), sb = scale_bytes(W.fmt, rows0, W.cols);
  const uint64_t fp = weight_fingerprint(W, db, sb);
  auto it = weights_.find(W.data);
  if (it != weights_.end() && it->second.fingerprint != fp) {  // the host buffer now holds another weight
    free(it->second.data, it->second.dataBytes, weightBytes_);
    free(it->second.scale, it->second.scaleBytes, weightBytes_);
    weights_.erase(it);
    it = weights_.end();
  }
  if (it == weights_.end()) {
    Cached c{nullptr, nullptr, db, sb, fp};
    try {
      c.data = alloc(c.dataBytes, weightBytes_);
      acl_check(api_, api_.aclrtMemcpyAsync(c.data, c.dataBytes, W.data, c.dataBytes, kHostToDevice, copy_), "aclrtMemcpyAsync (weight)");
      if (c.scaleBytes) {
        c.scale = alloc(c.scaleBytes, weightBytes_);
        acl_check(api_, api_.aclrtMemcpyAsync(c.scale, c.scaleBytes, W.scale, c.scaleBytes, kHostToDevice, copy_),
                  "aclrtMemcpyAsync (weight scale)");
      }
    } catch (...) {  // nothing half-uploaded stays: let queued copies finish, then free
      api_.aclrtSynchronizeStream(copy_);
      free(c.data, c.dataBytes, weightBytes_);
      free(c.scale, c.scaleBytes, weightBytes_);
      throw;
    }
    it = weights_.emplace(W.data, c).first;
  }
  if (W.row0 && W.fmt != v4::Fmt::f32) throw std::invalid_argument(std::string("ascend: ") + what + " must start at row 0 of its tensor");
  WeightDesc d{};
  d.data = uint64_t(reinterpret_cast<uintptr_t>(it->second.data)) + uint64_t(W.row0 * W.cols * 4);
  d.scale = uint64_t(reinterpret_cast<uintptr_t>(it->second.scale));
  d.fmt = int32_t(W.fmt), d.rows = int32_t(W.rows), d.cols = int32_t(W.cols);
  return d;
}

void Device::routed_experts_forward(float* out, const float* x, long T, long d, long I, const int* idx, const int* off, const float* w,
                            const v4::Expert* experts, long E, float L) {
  check_dims(d, 8, "d"), check_dims(I, 8, "I");
  const long P = off[E];
  if (P == 0) return;
  Op op(*this);
  std::vector<ExpertDesc> ds(static_cast<size_t>(E));
  long nmax = 0, rmax = 8;
  for (long e = 0; e < E; e++) {
    const v4::Expert& ex = experts[e];
    ExpertDesc& dd = ds[size_t(e)];
    nmax = std::max<long>(nmax, off[e + 1] - off[e]);
    dd.w1 = weight(ex.w1, "w1"), dd.w2 = weight(ex.w2, "w2"), dd.w3 = weight(ex.w3, "w3");
    struct Ad { const float *a, *b; long r, in, out; float s; const v4::Dropout& dr; uint64_t *da, *db; int32_t* rr; float* ss; };
    for (const Ad& s : {Ad{ex.a1, ex.b1, ex.r1, d, I, ex.s1, ex.d1, &dd.a1, &dd.b1, &dd.r1, &dd.s1},
                        Ad{ex.a2, ex.b2, ex.r2, I, d, ex.s2, ex.d2, &dd.a2, &dd.b2, &dd.r2, &dd.s2},
                        Ad{ex.a3, ex.b3, ex.r3, d, I, ex.s3, ex.d3, &dd.a3, &dd.b3, &dd.r3, &dd.s3}}) {
      if (!s.a || !s.r) continue;
      no_dropout(s.dr, "expert " + std::to_string(e));
      const long r8 = ceil8(s.r);
      *s.da = op.padded(s.a, s.r, s.in, r8, s.in);
      *s.db = op.padded(s.b, s.out, s.r, s.out, r8);
      *s.rr = int32_t(r8), *s.ss = s.s;
      rmax = std::max(rmax, r8);
    }
  }
  ExpertArgs a{};
  a.x = op.up(x, size_t(T * d) * 4);
  a.out = op.zeros(size_t(T * d) * 4);
  op.add_back(out, a.out, T, d, d);
  a.idx = op.up(idx, size_t(P) * 4), a.off = op.up(off, size_t(E + 1) * 4), a.w = op.up(w, size_t(P) * 4);
  const uint32_t blocks = uint32_t(std::min<long>(blockDim_, E));
  a.workspace = op.scratch(size_t(blocks) * size_t(expert_workspace_floats(nmax, d, I, rmax, tiling.vec.slabRows)) * 4);
  a.T = int32_t(T), a.d = int32_t(d), a.I = int32_t(I), a.E = int32_t(E), a.nmax = int32_t(nmax), a.limit = L;
  std::vector<uint8_t> db(ds.size() * sizeof(ExpertDesc));
  std::memcpy(db.data(), ds.data(), db.size());
  a.experts = op.stage(std::move(db));
  op.run(api_.routedExpertsForward, "aclrtlaunch_v4_routed_experts_forward", blocks, a, tiling);
}

void Device::routed_experts_backward(float* dx, float* dw, const v4::ExpertGrads* grads, const float* dout, const float* x, long T,
                             long d, long I, const int* idx, const int* off, const float* w, const v4::Expert* experts, long E,
                             float L) {
  check_dims(d, 8, "d"), check_dims(I, 8, "I");
  const long P = off[E];
  if (P == 0) return;
  Op op(*this);
  std::vector<ExpertDesc> ds(static_cast<size_t>(E));
  long nmax = 0, rmax = 8;
  for (long e = 0; e < E; e++) {
    const v4::Expert& ex = experts[e];
    const v4::ExpertGrads& g = grads[e];
    ExpertDesc& dd = ds[size_t(e)];
    nmax = std::max<long>(nmax, off[e + 1] - off[e]);
    dd.w1 = weight(ex.w1, "w1"), dd.w2 = weight(ex.w2, "w2"), dd.w3 = weight(ex.w3, "w3");
    struct Ad { const float *a, *b; long r, in, out; float s; const v4::Dropout& dr; float *ga, *gb; uint64_t *da, *db, *dga, *dgb; int32_t* rr; float* ss; };
    for (const Ad& s : {Ad{ex.a1, ex.b1, ex.r1, d, I, ex.s1, ex.d1, g.da1, g.db1, &dd.a1, &dd.b1, &dd.da1, &dd.db1, &dd.r1, &dd.s1},
                        Ad{ex.a2, ex.b2, ex.r2, I, d, ex.s2, ex.d2, g.da2, g.db2, &dd.a2, &dd.b2, &dd.da2, &dd.db2, &dd.r2, &dd.s2},
                        Ad{ex.a3, ex.b3, ex.r3, d, I, ex.s3, ex.d3, g.da3, g.db3, &dd.a3, &dd.b3, &dd.da3, &dd.db3, &dd.r3, &dd.s3}}) {
      if (!s.a || !s.r) continue;
      no_dropout(s.dr, "expert " + std::to_string(e));
      const long r8 = ceil8(s.r);
      *s.da = op.padded(s.a, s.r, s.in, r8, s.in);
      *s.db = op.padded(s.b, s.out, s.r, s.out, r8);
      *s.rr = int32_t(r8), *s.ss = s.s;
      rmax = std::max(rmax, r8);
      if (s.ga) *s.dga = op.zeros(size_t(r8 * s.in) * 4), op.add_back(s.ga, *s.dga, s.r, s.in, s.in);
      if (s.gb) *s.dgb = op.zeros(size_t(s.out * r8) * 4), op.add_back(s.gb, *s.dgb, s.out, s.r, r8);
    }
  }
  ExpertArgs a{};
  a.x = op.up(x, size_t(T * d) * 4);
  a.dout = op.up(dout, size_t(T * d) * 4);
  if (dx) a.dx = op.zeros(size_t(T * d) * 4), op.add_back(dx, a.dx, T, d, d);
  if (dw) a.dw = op.zeros(size_t(P) * 4), op.add_back(dw, a.dw, 1, P, P);
  a.idx = op.up(idx, size_t(P) * 4), a.off = op.up(off, size_t(E + 1) * 4), a.w = op.up(w, size_t(P) * 4);
  const uint32_t blocks = uint32_t(std::min<long>(blockDim_, E));
  a.workspace = op.scratch(size_t(blocks) * size_t(expert_workspace_floats(nmax, d, I, rmax, tiling.vec.slabRows)) * 4);
  a.T = int32_t(T), a.d = int32_t(d), a.I = int32_t(I), a.E = int32_t(E), a.nmax = int32_t(nmax), a.limit = L;
  std::vector<uint8_t> db(ds.size() * sizeof(ExpertDesc));
  std::memcpy(db.data(), ds.data(), db.size());
  a.experts = op.stage(std::move(db));
  op.run(api_.routedExpertsBackward, "aclrtlaunch_v4_routed_experts_backward", blocks, a, tiling);
}

namespace {
// blocks for a linear: one per slab of W, at most blockDim
uint32_t linear_blocks(uint32_t blockDim, long G, long outG, long slabRows) {
  return uint32_t(std::max<long>(1, std::min<long>(blockDim, G * ((outG + slabRows - 1) / slabRows))));
}
}  // namespace

void Device::linear_forward(float* y, const float* x, const v4::WeightRef& W, const float* A, const float* B, long r, float s,
                            long T, long G) {
  if (G < 1 || W.rows % G) throw std::invalid_argument("ascend: W rows must split evenly into the groups");
  if (T == 0) return;
  const long inG = W.cols, outG = W.rows / G;
  check_dims(outG, 8, "outG");
  Op op(*this);
  LinearArgs a{};
  a.w = weight(W, "W");
  const long r8 = A && r ? ceil8(r) : 0;
  if (r8) a.a = op.padded(A, r, inG, r8, inG), a.b = op.padded(B, W.rows, r, W.rows, r8);
  a.x = op.up(x, size_t(T * G * inG) * 4);
  a.y = op.zeros(size_t(T * W.rows) * 4);
  op.add_back(y, a.y, T, W.rows, W.rows);
  const uint32_t blocks = linear_blocks(blockDim_, G, outG, tiling.vec.slabRows);
  a.workspace = op.scratch(size_t(blocks) * size_t(linear_workspace_floats(T, inG, std::max(r8, 8L), tiling.vec.slabRows)) * 4);
  a.T = int32_t(T), a.G = int32_t(G), a.inG = int32_t(inG), a.outG = int32_t(outG), a.r = int32_t(r8), a.s = s;
  // An F32 base goes through CANN's grouped matmul (y_g = x_g · W_gᵀ, one group per W_g); the
  // kernel then adds the LoRA part. Shipped FP8 / FP4 bases are outside what it takes.
  std::function<void()> base;
  if (a.w.fmt == kF32 && grouped_matmul_available()) {
    a.baseDone = 1;
    base = [&] {
      std::vector<Op::View> xs, ws, ys;
      for (long g = 0; g < G; g++) {
        xs.push_back({a.x, T, inG, G * inG, g * inG, T * G * inG, false});
        ws.push_back({a.w.data, inG, outG, inG, g * outG * inG, G * outG * inG, true});
        ys.push_back({a.y, T, outG, G * outG, g * outG, T * G * outG, false});
      }
      op.grouped_matmul(xs, ws, ys);
    };
  }
  op.run(a.baseDone && !r8 ? nullptr : api_.linearForward, "aclrtlaunch_v4_linear_forward", blocks, a, tiling, base);
}

void Device::linear_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const v4::WeightRef& W,
                             const float* A, const float* B, long r, float s, long T, long G) {
  if (G < 1 || W.rows % G) throw std::invalid_argument("ascend: W rows must split evenly into the groups");
  if (T == 0) return;
  const long inG = W.cols, outG = W.rows / G;
  check_dims(outG, 8, "outG");
  Op op(*this);
  LinearArgs a{};
  a.w = weight(W, "W");
  const long r8 = A && r ? ceil8(r) : 0;
  if (r8) {
    a.a = op.padded(A, r, inG, r8, inG), a.b = op.padded(B, W.rows, r, W.rows, r8);
    if (dA) a.da = op.zeros(size_t(r8 * inG) * 4), op.add_back(dA, a.da, r, inG, inG);
    if (dB) a.db = op.zeros(size_t(W.rows * r8) * 4), op.add_back(dB, a.db, W.rows, r, r8);
  }
  a.x = op.up(x, size_t(T * G * inG) * 4);
  a.dy = op.up(dy, size_t(T * W.rows) * 4);
  if (dx) a.dx = op.zeros(size_t(T * G * inG) * 4), op.add_back(dx, a.dx, T, G * inG, G * inG);
  const uint32_t blocks = linear_blocks(blockDim_, G, outG, tiling.vec.slabRows);
  a.workspace = op.scratch(size_t(blocks) * size_t(linear_workspace_floats(T, inG, std::max(r8, 8L), tiling.vec.slabRows)) * 4);
  a.T = int32_t(T), a.G = int32_t(G), a.inG = int32_t(inG), a.outG = int32_t(outG), a.r = int32_t(r8), a.s = s;
  // F32 base: dx_g = dy_g · W_g by CANN's grouped matmul (it writes dx, which starts at zero),
  // then the kernel adds the LoRA part and the LoRA gradients.
  std::function<void()> base;
  if (dx && a.w.fmt == kF32 && grouped_matmul_available()) {
    a.baseDone = 1;
    base = [&] {
      std::vector<Op::View> dys, ws, dxs;
      for (long g = 0; g < G; g++) {
        dys.push_back({a.dy, T, outG, G * outG, g * outG, T * G * outG, false});
        ws.push_back({a.w.data, outG, inG, inG, g * outG * inG, G * outG * inG, false});
        dxs.push_back({a.dx, T, inG, G * inG, g * inG, T * G * inG, false});
      }
      op.grouped_matmul(dys, ws, dxs);
    };
  }
  op.run(a.baseDone && !r8 ? nullptr : api_.linearBackward, "aclrtlaunch_v4_linear_backward", blocks, a, tiling, base);
}

void Device::sinkhorn_backward(float* dL, const float* dC, const float* L, long T, int n, int iters, float eps) {
  if (T == 0) return;
  if (n < 1 || iters < 1) throw std::invalid_argument("ascend: sinkhorn needs n >= 1 and iters >= 1");
  Op op(*this);
  Tiling t = tiling;
  if (!t.vec.sinkTokens) t.vec.sinkTokens = sinkhorn_tokens(n, iters, 192 * 1024);
  SinkhornArgs a{};
  a.L = op.up(L, size_t(T * n * n) * 4);
  a.dC = op.up(dC, size_t(T * n * n) * 4);
  a.dL = op.zeros(size_t(T * n * n) * 4);
  op.add_back(dL, a.dL, T, n * n, n * n);
  a.T = int32_t(T), a.n = n, a.iters = iters, a.eps = eps;
  const uint32_t blocks = uint32_t(std::max<long>(1, std::min<long>(blockDim_, (T + t.vec.sinkTokens - 1) / t.vec.sinkTokens)));
  op.run(api_.sinkhornBackward, "aclrtlaunch_v4_sinkhorn_backward", blocks, a, t);
}

}  // namespace v4ascend
