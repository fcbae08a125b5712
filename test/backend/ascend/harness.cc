// The test driver for the Ascend backend on a host: the shim-built kernels behind the fake ACL
// table, driven through the real host code (native/ascend_host.cc). test/backend/ascend/harness.ts builds
// it with g++ and runs it:
//   harness run DIR       one op from DIR/case.txt ("key value" lines) and DIR/*.f32|i32|u8
//                         arrays; writes its outputs as DIR/<name>.f32, prints "ok" or "error: …"
//   harness shim-selftest the shim's own semantics, one JSON line per check
//   harness host-selftest the host code against the fake: errors, lifetime, stream order
// Built with -DV4_ASCEND_DEVICE (npm run test:ascend on an Atlas machine), `run` goes through the
// real ACL runtime and the CMake-built kernel library (V4TUNE_ASCEND_KERNELS) instead; the
// self-tests, which test the shim and the fake, are not in that build.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>
#include "ascend_host.h"
#ifndef V4_ASCEND_DEVICE
#include "common.h"
#include "fake_acl.h"
#endif

using namespace v4ascend;

namespace {

// ---- case files ----
struct Case {
  std::string dir;
  std::map<std::string, std::string> kv;
  std::vector<std::vector<uint8_t>> keep;  // array storage
  bool has(const std::string& k) const { return kv.count(k) > 0; }
  double num(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) throw std::runtime_error("case.txt: " + k + " is missing");
    return std::stod(it->second);
  }
  double num(const std::string& k, double dflt) const { return has(k) ? num(k) : dflt; }
  template <class T>
  T* arr(const std::string& name, bool required = true) {
    std::ifstream f(dir + "/" + name, std::ios::binary);
    if (!f) {
      if (required) throw std::runtime_error("missing array " + name);
      return nullptr;
    }
    std::vector<uint8_t> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    b.resize(b.size() + 64);
    keep.push_back(std::move(b));
    return reinterpret_cast<T*>(keep.back().data());
  }
};
Case read_case(const std::string& dir) {
  Case c;
  c.dir = dir;
  std::ifstream f(dir + "/case.txt");
  std::string k, v;
  while (f >> k >> v) c.kv[k] = v;
  return c;
}
void write(const std::string& dir, const std::string& name, const std::vector<float>& v) {
  std::ofstream f(dir + "/" + name, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * 4));
}
v4::WeightRef weight(Case& c, const std::string& p, long rows, long cols) {
  v4::WeightRef w{};
  w.fmt = v4::Fmt(int(c.num(p + ".fmt")));
  w.data = c.arr<uint8_t>(p + ".data");
  w.scale = w.fmt == v4::Fmt::f32 ? nullptr : c.arr<uint8_t>(p + ".scale");
  w.rows = rows, w.cols = cols, w.ld = cols, w.row0 = 0;
  return w;
}
void apply_tiling(const Case& c, Tiling& t) {
  CubeTiling& q = t.cube;
  q.baseM = int32_t(c.num("tiling.baseM", q.baseM)), q.baseN = int32_t(c.num("tiling.baseN", q.baseN));
  q.baseK = int32_t(c.num("tiling.baseK", q.baseK)), q.depthA1 = int32_t(c.num("tiling.depthA1", q.depthA1));
  q.depthB1 = int32_t(c.num("tiling.depthB1", q.depthB1)), q.dbL0A = int32_t(c.num("tiling.dbL0A", q.dbL0A));
  q.dbL0B = int32_t(c.num("tiling.dbL0B", q.dbL0B)), q.dbL0C = int32_t(c.num("tiling.dbL0C", q.dbL0C));
  t.vec.cols = int32_t(c.num("tiling.cols", t.vec.cols)), t.vec.slabRows = int32_t(c.num("tiling.slabRows", t.vec.slabRows));
  t.vec.sinkTokens = int32_t(c.num("tiling.sinkTokens", t.vec.sinkTokens));
}

int run(const std::string& dir) {
  Case c = read_case(dir);
#ifdef V4_ASCEND_DEVICE
  const char* lib = std::getenv("V4TUNE_ASCEND_KERNELS");
  AclLoad load = load_acl(lib ? lib : "kernels/ascend/build/libv4tune_ascend_kernels.so");
  if (!load.ok) throw std::runtime_error(load.reason);
  AclApi api = load.api;
#else
  fake::Options o;
  o.chip = c.num("chip", 0) == 1 ? &AscendC::kAscend910_93 : &AscendC::kAscend910B;
  AclApi api = fake::make_api(o);
#endif
  Device dev(api, 0, uint32_t(c.num("blockDim", 4)));
  apply_tiling(c, dev.tiling);
  const std::string op = c.kv["op"];
  if (op == "routed_experts_forward" || op == "routed_experts_backward") {
    const long T = long(c.num("T")), d = long(c.num("d")), I = long(c.num("I")), E = long(c.num("E"));
    const float L = float(c.num("L"));
    int* off = c.arr<int>("off.i32");
    const long P = off[E];
    std::vector<v4::Expert> ex(static_cast<size_t>(E));
    std::vector<v4::ExpertGrads> gr(static_cast<size_t>(E));
    std::vector<std::vector<float>> g(size_t(E) * 6);
    for (long e = 0; e < E; e++) {
      v4::Expert& x = ex[size_t(e)];
      const std::string p = "e" + std::to_string(e);
      x.w1 = weight(c, p + ".w1", I, d), x.w2 = weight(c, p + ".w2", d, I), x.w3 = weight(c, p + ".w3", I, d);
      const float** A[3] = {&x.a1, &x.a2, &x.a3};
      const float** B[3] = {&x.b1, &x.b2, &x.b3};
      long* R[3] = {&x.r1, &x.r2, &x.r3};
      float* S[3] = {&x.s1, &x.s2, &x.s3};
      float** dA[3] = {&gr[size_t(e)].da1, &gr[size_t(e)].da2, &gr[size_t(e)].da3};
      float** dB[3] = {&gr[size_t(e)].db1, &gr[size_t(e)].db2, &gr[size_t(e)].db3};
      const long in[3] = {d, I, d}, out[3] = {I, d, I};
      for (int k = 0; k < 3; k++) {
        const std::string q = p + ".l" + std::to_string(k + 1);
        *R[k] = long(c.num(q + ".r", 0));
        *S[k] = float(c.num(q + ".s", 0));
        *A[k] = *R[k] ? c.arr<float>(q + ".A.f32") : nullptr;
        *B[k] = *R[k] ? c.arr<float>(q + ".B.f32") : nullptr;
        *dA[k] = *dB[k] = nullptr;
        if (*R[k]) {
          g[size_t(e * 6 + 2 * k)].assign(size_t(*R[k] * in[k]), 0.f);
          g[size_t(e * 6 + 2 * k + 1)].assign(size_t(out[k] * *R[k]), 0.f);
          *dA[k] = g[size_t(e * 6 + 2 * k)].data(), *dB[k] = g[size_t(e * 6 + 2 * k + 1)].data();
        }
      }
    }
    float* x = c.arr<float>("x.f32");
    int* idx = c.arr<int>("idx.i32");
    float* w = c.arr<float>("w.f32");
    if (op == "routed_experts_forward") {
      std::vector<float> out(size_t(T * d), 0.f);
      dev.routed_experts_forward(out.data(), x, T, d, I, idx, off, w, ex.data(), E, L);
      write(dir, "out.f32", out);
    } else {
      std::vector<float> dx(size_t(T * d), 0.f), dw(size_t(P), 0.f);
      dev.routed_experts_backward(dx.data(), dw.data(), gr.data(), c.arr<float>("dout.f32"), x, T, d, I, idx, off, w, ex.data(), E, L);
      write(dir, "dx.f32", dx), write(dir, "dw.f32", dw);
      for (long e = 0; e < E; e++)
        for (int k = 0; k < 3; k++)
          if (!g[size_t(e * 6 + 2 * k)].empty()) {
            const std::string q = "e" + std::to_string(e) + ".l" + std::to_string(k + 1);
            write(dir, q + ".dA.f32", g[size_t(e * 6 + 2 * k)]), write(dir, q + ".dB.f32", g[size_t(e * 6 + 2 * k + 1)]);
          }
    }
  } else if (op == "linear_forward" || op == "linear_backward") {
    const long T = long(c.num("T")), G = long(c.num("G")), inG = long(c.num("inG")), outG = long(c.num("outG")), r = long(c.num("r", 0));
    const float s = float(c.num("s", 0));
    v4::WeightRef W = weight(c, "W", G * outG, inG);
    float* A = r ? c.arr<float>("A.f32") : nullptr;
    float* B = r ? c.arr<float>("B.f32") : nullptr;
    float* x = c.arr<float>("x.f32");
    if (op == "linear_forward") {
      std::vector<float> y(size_t(T * G * outG), 0.f);
      dev.linear_forward(y.data(), x, W, A, B, r, s, T, G);
      write(dir, "y.f32", y);
    } else {
      std::vector<float> dx(size_t(T * G * inG), 0.f), dA(size_t(r * inG), 0.f), dB(size_t(G * outG * r), 0.f);
      dev.linear_backward(dx.data(), r ? dA.data() : nullptr, r ? dB.data() : nullptr, c.arr<float>("dy.f32"), x, W, A, B, r, s, T, G);
      write(dir, "dx.f32", dx), write(dir, "dA.f32", dA), write(dir, "dB.f32", dB);
    }
  } else if (op == "sinkhorn_backward") {
    const long T = long(c.num("T"));
    const int n = int(c.num("n")), iters = int(c.num("iters"));
    std::vector<float> dL(size_t(T * n * n), 0.f);
    dev.sinkhorn_backward(dL.data(), c.arr<float>("dC.f32"), c.arr<float>("L.f32"), T, n, iters, float(c.num("eps")));
    write(dir, "dL.f32", dL);
  } else {
    throw std::runtime_error("unknown op " + op);
  }
  return 0;
}

#ifndef V4_ASCEND_DEVICE
// ---- self-tests: one JSON line each ----
int failures = 0;
std::string esc(const std::string& s) {
  std::string o;
  for (char ch : s) o += ch == '"' || ch == '\\' ? std::string("\\") + ch : ch == '\n' ? std::string(" ") : std::string(1, ch);
  return o;
}
void report(const std::string& name, bool ok, const std::string& msg) {
  if (!ok) failures++;
  std::cout << "{\"name\":\"" << esc(name) << "\",\"ok\":" << (ok ? "true" : "false") << ",\"message\":\"" << esc(msg) << "\"}\n";
}
void check(const std::string& name, const std::function<bool(std::string&)>& f) {
  std::string msg;
  try {
    report(name, f(msg), msg);
  } catch (const std::exception& e) {
    report(name, false, std::string("threw: ") + e.what());
  }
}
// passes when f throws an exception whose message holds `want`
void throws(const std::string& name, const std::function<void()>& f, const std::string& want) {
  try {
    f();
    report(name, false, "did not throw");
  } catch (const std::exception& e) {
    std::string m = e.what();
    report(name, m.find(want) != std::string::npos, m);
  }
}
// the body runs as block 0 of 1 on a fresh 910B core (or `chip`)
void on_core(const std::function<void()>& body, const AscendC::Chip& chip = AscendC::kAscend910B) {
  AscendC::shim::launch(chip, 1, body);
}

int shim_selftest() {
  using namespace AscendC;
  throws("ub overflow names the buffer", [] {
    on_core([] {
      TPipe pipe;
      TQue<TPosition::VECIN, 2> inQ;
      TQue<TPosition::VECOUT, 2> big;
      V4_INIT_BUFFER(pipe, inQ, 2, 64 * 1024);
      V4_INIT_BUFFER(pipe, big, 2, 64 * 1024);
    });
  }, "UB overflow on Ascend910B: VECOUT buffer big[1] needs 65536 B, 0 B of 196608 B left");
  throws("A3 has the same UB", [] {
    on_core([] {
      TPipe pipe;
      TBuf<TPosition::VECCALC> t;
      V4_INIT_BUFFER(pipe, t, 1, 192 * 1024 + 32);
    }, kAscend910_93);
  }, "UB overflow on Ascend910_93 (A3): VECCALC buffer t[0] needs 196640 B");
  auto tiling = [](int m, int n, int k, int da, int db, int a0, int b0, int c0) {
    TCubeTiling t;
    t.baseM = m, t.baseN = n, t.baseK = k, t.depthA1 = da, t.depthB1 = db, t.dbL0A = a0, t.dbL0B = b0, t.dbL0C = c0;
    return t;
  };
  using M = Matmul<MatmulType<TPosition::GM, CubeFormat::ND, float>, MatmulType<TPosition::GM, CubeFormat::ND, float>,
                   MatmulType<TPosition::GM, CubeFormat::ND, float>>;
  throws("L0A overflow names the matmul tile", [&] {
    on_core([&] { TPipe pipe; M mm; TCubeTiling t = tiling(128, 128, 128, 1, 1, 2, 1, 1); REGIST_MATMUL_OBJ(&pipe, nullptr, mm, &t); });
  }, "L0A overflow on Ascend910B: Matmul mm A tile (baseM × baseK × dbL0A) needs 131072 B, 65536 B of 65536 B left");
  throws("L0B overflow", [&] {
    on_core([&] { TPipe pipe; M mm; TCubeTiling t = tiling(64, 256, 64, 1, 1, 1, 2, 1); REGIST_MATMUL_OBJ(&pipe, nullptr, mm, &t); });
  }, "L0B overflow on Ascend910B: Matmul mm B tile");
  throws("L0C overflow", [&] {
    on_core([&] { TPipe pipe; M mm; TCubeTiling t = tiling(256, 256, 16, 1, 1, 1, 1, 1); REGIST_MATMUL_OBJ(&pipe, nullptr, mm, &t); });
  }, "L0C overflow on Ascend910B: Matmul mm C tile");
  throws("L1 overflow", [&] {
    on_core([&] { TPipe pipe; M mm; TCubeTiling t = tiling(128, 128, 64, 8, 9, 1, 1, 1); REGIST_MATMUL_OBJ(&pipe, nullptr, mm, &t); });
  }, "L1 overflow on Ascend910B: Matmul mm A1/B1 tiles");
  throws("tile shapes are fractal multiples", [&] {
    on_core([&] { TPipe pipe; M mm; TCubeTiling t = tiling(120, 128, 64, 1, 1, 1, 1, 1); REGIST_MATMUL_OBJ(&pipe, nullptr, mm, &t); });
  }, "baseM, baseN must be multiples of 16");
  std::vector<float> gm(256, 1.f);
  throws("DataCopy moves whole 32 B blocks", [&] {
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 1> q;
      V4_INIT_BUFFER(pipe, q, 1, 1024);
      GlobalTensor<float> g;
      g.SetGlobalBuffer(gm.data(), gm.size());
      LocalTensor<float> t = q.AllocTensor<float>();
      DataCopy(t, g, 7);
    });
  }, "28 B is not whole 32 B blocks");
  throws("local tensors start on 32 B", [&] {
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 1> q;
      V4_INIT_BUFFER(pipe, q, 1, 1024);
      GlobalTensor<float> g;
      g.SetGlobalBuffer(gm.data(), gm.size());
      LocalTensor<float> t = q.AllocTensor<float>();
      DataCopy(t[4], g, 8);
    });
  }, "is not 32-byte aligned");
  throws("vector operands start on 32 B", [&] {
    on_core([&] {
      TPipe pipe;
      TBuf<TPosition::VECCALC> b;
      V4_INIT_BUFFER(pipe, b, 1, 1024);
      LocalTensor<float> t = b.Get<float>();
      Adds(t[1], t[8], 1.f, 8);
    });
  }, "Adds: local tensor at VECCALC+4 is not 32-byte aligned");
  throws("no copy path VECIN to GM", [&] {
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 1> q;
      V4_INIT_BUFFER(pipe, q, 1, 1024);
      GlobalTensor<float> g;
      g.SetGlobalBuffer(gm.data(), gm.size());
      DataCopy(g, q.AllocTensor<float>(), 8);
    });
  }, "no copy path VECIN -> GM");
  throws("GM bounds", [&] {
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 1> q;
      V4_INIT_BUFFER(pipe, q, 1, 4096);
      GlobalTensor<float> g;
      g.SetGlobalBuffer(gm.data(), 16);
      DataCopy(q.AllocTensor<float>(), g, 24);
    });
  }, "GM access [0, 24) past a buffer of 16 elements");
  throws("EnQue beyond the queue depth", [&] {
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 1> q;
      V4_INIT_BUFFER(pipe, q, 2, 256);
      LocalTensor<float> a = q.AllocTensor<float>(), b = q.AllocTensor<float>();
      q.EnQue(a);
      q.EnQue(b);
    });
  }, "queue q: EnQue beyond its depth 1");
  throws("AllocTensor with every buffer in use", [&] {
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECOUT, 2> q;
      V4_INIT_BUFFER(pipe, q, 2, 256);
      q.AllocTensor<float>(), q.AllocTensor<float>(), q.AllocTensor<float>();
    });
  }, "queue q: AllocTensor with all 2 buffers in use");
  throws("DeQue of an empty queue", [&] {
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 2> q;
      V4_INIT_BUFFER(pipe, q, 2, 256);
      q.DeQue<float>();
    });
  }, "DeQue of an empty queue");
  check("queues are FIFO and buffers recycle", [&](std::string& m) {
    bool ok = true;
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 2> q;
      V4_INIT_BUFFER(pipe, q, 2, 256);
      for (int round = 0; round < 3; round++) {
        LocalTensor<float> a = q.AllocTensor<float>(), b = q.AllocTensor<float>();
        a.SetValue(0, 1.f), b.SetValue(0, 2.f);
        q.EnQue(a), q.EnQue(b);
        LocalTensor<float> x = q.DeQue<float>(), y = q.DeQue<float>();
        ok = ok && x.GetValue(0) == 1.f && y.GetValue(0) == 2.f;
        q.FreeTensor(x), q.FreeTensor(y);
      }
    });
    m = ok ? "" : "wrong order";
    return ok;
  });
  check("strided DataCopy, DataCopyPad and atomic add", [&](std::string& m) {
    std::vector<float> src(64), dst(64, 0.f), pad(20, 5.f);
    for (int i = 0; i < 64; i++) src[size_t(i)] = float(i);
    bool ok = true;
    on_core([&] {
      TPipe pipe;
      TQue<TPosition::VECIN, 1> q;
      TQue<TPosition::VECOUT, 1> o;
      V4_INIT_BUFFER(pipe, q, 1, 1024);
      V4_INIT_BUFFER(pipe, o, 1, 1024);
      GlobalTensor<float> gs, gd, gp;
      gs.SetGlobalBuffer(src.data(), 64), gd.SetGlobalBuffer(dst.data(), 64), gp.SetGlobalBuffer(pad.data(), 20);
      LocalTensor<float> t = q.AllocTensor<float>();
      DataCopyParams p;
      p.blockCount = 3, p.blockLen = 1, p.srcStride = 1, p.dstStride = 0;  // rows of 8 from every other block
      DataCopy(t, gs, p);
      ok = ok && t.GetValue(0) == 0.f && t.GetValue(8) == 16.f && t.GetValue(16) == 32.f;
      DataCopyExtParams e;
      e.blockCount = 2, e.blockLen = 12, e.srcStride = 4;  // 3 floats per row, GM rows 4 floats apart
      DataCopyPadExtParams<float> pz;
      pz.isPad = true, pz.paddingValue = -1.f;
      DataCopyPad(t, gs, e, pz);
      ok = ok && t.GetValue(0) == 0.f && t.GetValue(2) == 2.f && t.GetValue(3) == -1.f && t.GetValue(8) == 4.f;
      LocalTensor<float> u = o.AllocTensor<float>();
      Duplicate(u, 2.f, 16);
      SetAtomicAdd<float>();
      DataCopy(gd, u, 16);
      DataCopy(gd, u, 16);
      SetAtomicNone();
      DataCopyExtParams one;
      one.blockCount = 1, one.blockLen = 4;
      DataCopyPad(gp[3], u, one);
    });
    ok = ok && dst[0] == 4.f && dst[15] == 4.f && dst[16] == 0.f && pad[3] == 2.f && pad[4] == 5.f;
    m = ok ? "" : "wrong values";
    return ok;
  });
  check("Gather, Cast, ShiftLeft, CompareScalar and Select", [&](std::string& m) {
    bool ok = true;
    on_core([&] {
      TPipe pipe;
      TBuf<TPosition::VECCALC> b;
      V4_INIT_BUFFER(pipe, b, 1, 4096);
      LocalTensor<float> f = b.Get<float>();
      LocalTensor<uint32_t> off = f[64].ReinterpretCast<uint32_t>();
      for (uint32_t i = 0; i < 16; i++) f.SetValue(i, float(i) * 10.f), off.SetValue(i, (15 - i) * 4);
      Gather(f[128], f, off, 0, 16);
      ok = ok && f.GetValue(128) == 150.f && f.GetValue(143) == 0.f;
      LocalTensor<uint8_t> u8 = f[256].ReinterpretCast<uint8_t>();
      for (uint32_t i = 0; i < 32; i++) u8.SetValue(i, uint8_t(200 + i % 56));
      LocalTensor<half> h = f[320].ReinterpretCast<half>();
      LocalTensor<int32_t> i32 = f[384].ReinterpretCast<int32_t>();
      Cast(h, u8, RoundMode::CAST_NONE, 32);
      Cast(i32, h, RoundMode::CAST_ROUND, 32);
      ShiftLeft(i32, i32, int32_t(2), 32);
      ok = ok && i32.GetValue(0) == 800 && i32.GetValue(31) == 4 * 231;
      LocalTensor<uint8_t> mask = f[448].ReinterpretCast<uint8_t>();
      CompareScalar(mask, f, 75.f, CMPMODE::LE, 16);  // 0..70 kept
      Select(f[512], mask, f, -1.f, SELMODE::VSEL_TENSOR_SCALAR_MODE, 16);
      ok = ok && f.GetValue(512 + 7) == 70.f && f.GetValue(512 + 8) == -1.f;
      ReduceSum(f[576], f, f[640], 16);
      ok = ok && f.GetValue(576) == 1200.f;
    });
    m = ok ? "" : "wrong values";
    return ok;
  });
  check("Matmul: transposes, strides, tails and atomic accumulate", [&](std::string& m) {
    const int Mm = 37, N = 45, K = 70;
    std::vector<float> A(size_t(K * 40)), B(size_t(N * 80)), C(size_t(Mm * 50), 0.5f), ref(C);
    for (size_t i = 0; i < A.size(); i++) A[i] = float(int(i * 7 % 13) - 6) / 8.f;
    for (size_t i = 0; i < B.size(); i++) B[i] = float(int(i * 5 % 11) - 5) / 4.f;
    // C (lda 50) += Aᵀ (A stored (K, M) with row stride 40) · Bᵀ (B stored (N, K) with stride 80)
    for (int i = 0; i < Mm; i++)
      for (int j = 0; j < N; j++) {
        double s = 0;
        for (int k = 0; k < K; k++) s += double(A[size_t(k * 40 + i)]) * B[size_t(j * 80 + k)];
        ref[size_t(i * 50 + j)] += float(s);
      }
    on_core([&] {
      TPipe pipe;
      M mm;
      TCubeTiling t = tiling(16, 32, 16, 2, 2, 2, 2, 1);
      REGIST_MATMUL_OBJ(&pipe, nullptr, mm, &t);
      GlobalTensor<float> ga, gb, gc;
      ga.SetGlobalBuffer(A.data(), A.size()), gb.SetGlobalBuffer(B.data(), B.size()), gc.SetGlobalBuffer(C.data(), C.size());
      mm.SetOrgShape(40, N, K, 80, 50);
      mm.SetSingleShape(Mm, N, K);
      mm.SetTensorA(ga, true);
      mm.SetTensorB(gb, true);
      mm.IterateAll(gc, 1);
    });
    double err = 0;
    for (size_t i = 0; i < C.size(); i++) err = std::max(err, double(std::fabs(C[i] - ref[i])));
    m = "max abs error " + std::to_string(err);
    return err < 1e-4;
  });
  check("launch gives each block its index", [&](std::string& m) {
    std::vector<int64_t> seen;
    AscendC::shim::launch(kAscend910B, 3, [&] { seen.push_back(GetBlockIdx() * 10 + GetBlockNum()); });
    m = std::to_string(seen.size());
    return seen == std::vector<int64_t>{3, 13, 23};
  });
  return failures ? 1 : 0;
}

// ---- host code against the fake ----
v4::WeightRef f32w(const std::vector<float>& v, long rows, long cols) { return v4::f32_matrix(v.data(), rows, cols); }

int host_selftest() {
  const long T = 6, inG = 64, outG = 32, r = 4;
  std::vector<float> W(size_t(outG * inG)), A(size_t(r * inG)), B(size_t(outG * r)), x(size_t(T * inG)), dy(size_t(T * outG));
  for (size_t i = 0; i < W.size(); i++) W[i] = float(int(i % 17) - 8) / 16.f;
  for (size_t i = 0; i < A.size(); i++) A[i] = float(int(i % 5) - 2) / 8.f;
  for (size_t i = 0; i < B.size(); i++) B[i] = float(int(i % 7) - 3) / 8.f;
  for (size_t i = 0; i < x.size(); i++) x[i] = float(int(i % 9) - 4) / 4.f;
  for (size_t i = 0; i < dy.size(); i++) dy[i] = float(int(i % 3) - 1);
  AclApi api = fake::make_api();

  throws("a missing device maps to its ACL name", [&] { Device d(api, 3, 4); },
         "aclrtSetDevice failed: ACL_ERROR_RT_INVALID_DEVICEID (107001): the device id does not exist (see npu-smi info) [CANN: fake ACL: device 3 does not exist]");
  check("unknown codes say so with their number", [](std::string& m) {
    m = acl_error_text(123456);
    return m == "ACL error 123456 (not a code v4tune knows; see CANN's acl_base.h)";
  });
  check("every documented runtime code has a name", [](std::string& m) {
    for (int32_t c : {107000, 107001, 107002, 207001, 207002, 207004, 507014, 507015, 507899, 100000, 100001}) {
      m = acl_error_text(c);
      if (m.rfind("ACL_ERROR_", 0) != 0) return false;
    }
    return true;
  });
  {
    Device dev(api, 0, 3);
    std::vector<float> y(size_t(T * outG), 0.f);
    fake::clear_log();
    check("an op frees what it allocated; the weight stays", [&](std::string& m) {
      dev.linear_forward(y.data(), x.data(), f32w(W, outG, inG), A.data(), B.data(), r, 0.5f, T, 1);
      const size_t after1 = fake::live_bytes();
      dev.linear_forward(y.data(), x.data(), f32w(W, outG, inG), A.data(), B.data(), r, 0.5f, T, 1);
      m = "live " + std::to_string(fake::live_bytes()) + " B, weights " + std::to_string(dev.weight_bytes()) + " B, op " + std::to_string(dev.op_bytes()) + " B";
      return dev.op_bytes() == 0 && fake::live_bytes() == after1 && fake::live_allocations() == 1 && dev.weight_bytes() == W.size() * 4;
    });
    check("inputs go up before the kernel and results come down after it", [&](std::string& m) {
      fake::clear_log();
      dev.linear_forward(y.data(), x.data(), f32w(W, outG, inG), A.data(), B.data(), r, 0.5f, T, 1);
      std::string seq;
      for (const std::string& s : fake::log()) seq += (seq.empty() ? "" : ",") + s;
      m = seq;
      // copy stream: A, B, x up, y zeroed, args and tiling up, record; its wait on the kernel pulls
      // the compute stream (wait for the inputs, grouped matmul of the F32 base, the LoRA kernel,
      // record) before the download runs
      return seq == "h2d,h2d,h2d,memset,h2d,h2d,record,wait,wait,gmm,kernel v4_linear_forward,record,d2h";
    });
    check("a stream runs only what is ordered before its synchronisation", [&](std::string& m) {
      void *s1, *s2, *p;
      api.aclrtCreateStream(&s1), api.aclrtCreateStream(&s2);
      api.aclrtMalloc(&p, 64, 0);
      api.aclrtMemsetAsync(p, 64, 0, 64, s1);
      api.aclrtSynchronizeStream(s2);
      const bool untouched = static_cast<uint8_t*>(p)[0] == 0xFF;
      api.aclrtSynchronizeStream(s1);
      const bool done = static_cast<uint8_t*>(p)[0] == 0;
      api.aclrtFree(p), api.aclrtDestroyStream(s1), api.aclrtDestroyStream(s2);
      m = untouched ? (done ? "" : "memset never ran") : "ran without being ordered";
      return untouched && done;
    });
    throws("device out of memory maps to its name, and nothing leaks", [&] {
      fake::inject("aclrtMalloc", 207001, "out of HBM");
      std::vector<float> dL(32, 0.f), dC(32, 1.f), L(32, 0.f);
      try {
        dev.sinkhorn_backward(dL.data(), dC.data(), L.data(), 2, 4, 3, 1e-6f);
      } catch (const AclError& e) {
        if (dev.op_bytes() != 0 || fake::live_allocations() != 1) throw std::runtime_error("leaked after the error");
        throw;
      }
    }, "aclrtMalloc failed: ACL_ERROR_RT_MEMORY_ALLOCATION (207001): device memory allocation failed (the device is out of memory) [CANN: out of HBM]");
    throws("a kernel's exception maps to its name with the shim's message", [&] {
      dev.tiling.cube.baseK = 128;
      try {
        dev.linear_forward(y.data(), x.data(), f32w(W, outG, inG), A.data(), B.data(), r, 0.5f, T, 1);
      } catch (...) {
        dev.tiling = default_tiling();
        if (dev.op_bytes() != 0) throw std::runtime_error("leaked after the error");
        throw;
      }
    }, "aclrtSynchronizeStream failed: ACL_ERROR_RT_AICORE_EXCEPTION (507015): an AI core kernel raised an exception [CANN: L0A overflow on Ascend910B: Matmul mm A tile");
    throws("a failed launch maps to its name", [&] {
      fake::inject("v4_linear_forward", 507027, "");
      dev.linear_forward(y.data(), x.data(), f32w(W, outG, inG), A.data(), B.data(), r, 0.5f, T, 1);
    }, "aclrtlaunch_v4_linear_forward failed: ACL_ERROR_RT_KERNEL_LOOKUP (507027)");
    throws("a failed aclnn call maps to its name and frees its tensors", [&] {
      fake::inject("aclnnGroupedMatmulV4GetWorkspaceSize", 161002, "x and weight do not chain");
      try {
        dev.linear_forward(y.data(), x.data(), f32w(W, outG, inG), A.data(), B.data(), r, 0.5f, T, 1);
      } catch (...) {
        if (fake::live_tensors() != 0 || dev.op_bytes() != 0) throw std::runtime_error("leaked after the error");
        throw;
      }
    }, "aclnnGroupedMatmulV4GetWorkspaceSize failed: ACLNN_ERR_PARAM_INVALID (161002): an aclnn operator's arguments are invalid (shape, dtype or format) [CANN: x and weight do not chain]");
    check("grouped matmul group lists: an F32 base gives what the kernels give without aclnn", [&](std::string& m) {
      const long G = 3, gin = 32, gout = 16;  // y_g = x_g W_gᵀ per group, views into one x, W and y
      std::vector<float> Wg(size_t(G * gout * gin)), xg(size_t(T * G * gin)), Bg(size_t(G * gout * r)), dyg(size_t(T * G * gout));
      for (size_t i = 0; i < Wg.size(); i++) Wg[i] = float(int(i % 11) - 5) / 8.f;
      for (size_t i = 0; i < xg.size(); i++) xg[i] = float(int(i % 7) - 3) / 4.f;
      for (size_t i = 0; i < Bg.size(); i++) Bg[i] = float(int(i % 5) - 2) / 4.f;
      for (size_t i = 0; i < dyg.size(); i++) dyg[i] = float(int(i % 3) - 1);
      std::vector<float> Ag(A.begin(), A.begin() + r * gin);
      auto both = [&](Device& d, std::vector<float>& yv, std::vector<float>& dxv, std::vector<float>& dA, std::vector<float>& dB) {
        d.linear_forward(yv.data(), xg.data(), f32w(Wg, G * gout, gin), Ag.data(), Bg.data(), r, 0.5f, T, G);
        d.linear_backward(dxv.data(), dA.data(), dB.data(), dyg.data(), xg.data(), f32w(Wg, G * gout, gin), Ag.data(), Bg.data(), r, 0.5f, T, G);
      };
      std::vector<float> y1(size_t(T * G * gout)), y2(y1), dx1(size_t(T * G * gin)), dx2(dx1), a1(size_t(r * gin)), a2(a1), b1(Bg.size()), b2(b1);
      fake::clear_log();
      both(dev, y1, dx1, a1, b1);
      size_t gmms = 0;
      for (const std::string& e : fake::log()) gmms += e == "gmm";
      fake::Options no;
      no.groupedMatmul = false;
      AclApi plain = fake::make_api(no);
      {
        Device d2(plain, 0, 2);
        both(d2, y2, dx2, a2, b2);
      }
      double err = 0;
      for (size_t i = 0; i < y1.size(); i++) err = std::max(err, double(std::fabs(y1[i] - y2[i])));
      for (size_t i = 0; i < dx1.size(); i++) err = std::max(err, double(std::fabs(dx1[i] - dx2[i])));
      for (size_t i = 0; i < a1.size(); i++) err = std::max(err, double(std::fabs(a1[i] - a2[i])));
      for (size_t i = 0; i < b1.size(); i++) err = std::max(err, double(std::fabs(b1[i] - b2[i])));
      m = std::to_string(gmms) + " grouped matmuls, max difference " + std::to_string(err);
      return gmms == 2 && err < 1e-4 && fake::live_tensors() == 0;
    });
    throws("a failed weight upload leaves nothing behind", [&] {
      std::vector<float> W2(W);
      const size_t before = fake::live_allocations(), wb = dev.weight_bytes();
      fake::inject("aclrtMemcpyAsync", 507013, "DMA fault");
      try {
        dev.linear_forward(y.data(), x.data(), f32w(W2, outG, inG), A.data(), B.data(), r, 0.5f, T, 1);
      } catch (...) {
        if (fake::live_allocations() != before || dev.weight_bytes() != wb || dev.op_bytes() != 0)
          throw std::runtime_error("a half-uploaded weight stayed");
        throw;
      }
    }, "aclrtMemcpyAsync (weight) failed: ACL_ERROR_RT_SYS_DMA (507013): a DMA transfer failed [CANN: DMA fault]");
    throws("LoRA dropout is refused by name", [&] {
      v4::Dropout dr;
      dr.on = true;
      v4::Expert ex{};
      ex.w1 = f32w(W, outG, inG), ex.w3 = f32w(W, outG, inG);
      std::vector<float> W2(size_t(inG * outG));
      ex.w2 = f32w(W2, inG, outG);
      ex.a1 = A.data(), ex.b1 = B.data(), ex.r1 = r, ex.s1 = 1.f, ex.d1 = dr;
      int idx[1] = {0}, off[2] = {0, 1};
      float w[1] = {1.f};
      std::vector<float> out(size_t(T * inG));
      dev.routed_experts_forward(out.data(), x.data(), T, inG, outG, idx, off, w, &ex, 1, 7.f);
    }, "ascend: LoRA dropout (expert 0) is not built into the Ascend kernels");
    throws("BF16 base weights are refused by name", [&] {
      v4::WeightRef b = f32w(W, outG, inG);
      b.fmt = v4::Fmt::bf16;
      dev.linear_forward(y.data(), x.data(), b, nullptr, nullptr, 0, 0.f, T, 1);
    }, "ascend: W is BF16");
    check("release_weights frees the cached base", [&](std::string& m) {
      dev.release_weights();
      m = std::to_string(fake::live_allocations());
      return fake::live_allocations() == 0 && dev.weight_bytes() == 0;
    });
  }
  check("a closed device leaves no memory, stream or event", [](std::string& m) {
    m = std::to_string(fake::live_allocations()) + " allocations, " + std::to_string(fake::live_streams()) + " streams, " +
        std::to_string(fake::live_events()) + " events";
    return fake::live_allocations() == 0 && fake::live_streams() == 0 && fake::live_events() == 0;
  });
  return failures ? 1 : 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "run" && argc > 2) {
      run(argv[2]);
      std::cout << "ok\n";
      return 0;
    }
#ifndef V4_ASCEND_DEVICE
    if (cmd == "shim-selftest") return shim_selftest();
    if (cmd == "host-selftest") return host_selftest();
#endif
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << "\n";
    return 2;
  }
  std::cerr << "usage: harness run DIR | shim-selftest | host-selftest\n";
  return 64;
}
