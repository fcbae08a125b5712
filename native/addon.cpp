// node-addon-api glue: validates JS arguments, keeps the typed arrays alive, and runs each
// kernel on a libuv worker thread (Napi::AsyncWorker) so the JS thread stays responsive.
// Every kernel entry returns a Promise; the sync entries are configuration and tiny helpers.
#include <napi.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include "ascend_hccl.h"
#include "ascend_host.h"
#include "attention.h"
#include "bench.h"
#include "common.h"
#include "compressor.h"
#include "direct_io.h"
#include "gemm.h"
#include "gptq.h"
#include "q4k.h"
#include "requant.h"
#include "indexer.h"
#include "lmhead.h"
#include "lora.h"
#include "mhc.h"
#include "norm.h"

namespace {

using namespace v4;

struct ArgError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Reads positional arguments and pins every object it hands out until the job finishes.
class Args {
 public:
  explicit Args(const Napi::CallbackInfo& info, const char* fn) : info_(info), fn_(fn) {}
  std::vector<Napi::ObjectReference> keep;

  double num(size_t i) {
    if (!info_[i].IsNumber()) fail(i, "a number");
    return info_[i].As<Napi::Number>().DoubleValue();
  }
  long integer(size_t i) { return long(num(i)); }
  bool boolean(size_t i) {
    if (!info_[i].IsBoolean()) fail(i, "a boolean");
    return info_[i].As<Napi::Boolean>().Value();
  }
  template <class T>
  T* typed(Napi::Value v, napi_typedarray_type want, size_t need, const std::string& what, bool nullable) {
    if (v.IsNull() || v.IsUndefined()) {
      if (nullable) return nullptr;
      throw ArgError(std::string(fn_) + ": " + what + " is required");
    }
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != want)
      throw ArgError(std::string(fn_) + ": " + what + " has the wrong array type");
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    if (ta.ElementLength() < need)
      throw ArgError(std::string(fn_) + ": " + what + " has " + std::to_string(ta.ElementLength()) +
                     " elements, needs " + std::to_string(need));
    keep.push_back(Napi::Persistent(v.As<Napi::Object>()));
    Napi::ArrayBuffer buf = ta.ArrayBuffer();
    T* p = reinterpret_cast<T*>(static_cast<uint8_t*>(buf.Data()) + ta.ByteOffset());
    huge_pages(p, ta.ByteLength());
    return p;
  }
  // Large arrays are mostly fresh outputs (new Float32Array: zero pages not yet touched); asking
  // for transparent huge pages makes their first write fault once per 2 MB instead of once per
  // 4 KB (a 268 MB activation of V4-Flash at 4096 tokens: 65536 faults). Advice only.
  static void huge_pages(void* p, size_t bytes) {
    const uintptr_t huge = uintptr_t(2) << 20;
    if (bytes < 4 * huge) return;
    uintptr_t lo = (uintptr_t(p) + huge - 1) & ~(huge - 1), hi = (uintptr_t(p) + bytes) & ~(huge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
  float* f32(size_t i, size_t need, bool nullable = false) {
    return typed<float>(info_[i], napi_float32_array, need, "argument " + std::to_string(i), nullable);
  }
  int* i32(size_t i, size_t need, bool nullable = false) {
    return typed<int>(info_[i], napi_int32_array, need, "argument " + std::to_string(i), nullable);
  }
  float* f32In(Napi::Object o, const char* key, size_t need, bool nullable = true) {
    return typed<float>(o.Get(key), napi_float32_array, need, key, nullable);
  }
  // {fmt: 0 f32 | 1 bf16 | 2 fp8 | 3 fp4, data, scale, rows, cols}
  WeightRef weight(Napi::Value v, const std::string& what) {
    if (!v.IsObject()) throw ArgError(std::string(fn_) + ": " + what + " must be a weight object");
    Napi::Object o = v.As<Napi::Object>();
    WeightRef w{};
    w.fmt = Fmt(o.Get("fmt").As<Napi::Number>().Int32Value());
    w.rows = o.Get("rows").As<Napi::Number>().Int64Value();
    w.cols = o.Get("cols").As<Napi::Number>().Int64Value();
    w.ld = w.cols;
    if (int(w.fmt) < 0 || int(w.fmt) > 3) throw ArgError(std::string(fn_) + ": " + what + " has an unknown format");
    if (w.fmt == Fmt::fp4 && w.cols % 32) throw ArgError(std::string(fn_) + ": " + what + " (fp4) needs cols % 32 == 0");
    Napi::Value d = o.Get("data");
    if (!d.IsTypedArray()) throw ArgError(std::string(fn_) + ": " + what + ".data must be a typed array");
    Napi::TypedArray ta = d.As<Napi::TypedArray>();
    if (w.fmt == Fmt::f32 && ta.TypedArrayType() != napi_float32_array)
      throw ArgError(std::string(fn_) + ": " + what + ".data must be a Float32Array for f32");
    if (long(ta.ByteLength()) < weight_data_bytes(w.fmt, w.rows, w.cols))
      throw ArgError(std::string(fn_) + ": " + what + ".data is too short for its shape");
    keep.push_back(Napi::Persistent(d.As<Napi::Object>()));
    w.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    long sb = weight_scale_bytes(w.fmt, w.rows, w.cols);
    if (sb) {
      Napi::Value s = o.Get("scale");
      if (!s.IsTypedArray() || long(s.As<Napi::TypedArray>().ByteLength()) < sb)
        throw ArgError(std::string(fn_) + ": " + what + ".scale is missing or too short");
      Napi::TypedArray st = s.As<Napi::TypedArray>();
      keep.push_back(Napi::Persistent(s.As<Napi::Object>()));
      w.scale = static_cast<uint8_t*>(st.ArrayBuffer().Data()) + st.ByteOffset();
    }
    return w;
  }
  // {threshold, scale, seed, row0?} (a LoRA input's dropout) or null / undefined (none)
  Dropout dropout(Napi::Value v, const std::string& what) {
    Dropout d;
    if (v.IsNull() || v.IsUndefined()) return d;
    if (!v.IsObject()) throw ArgError(std::string(fn_) + ": " + what + " must be {threshold, scale, seed} or null");
    Napi::Object o = v.As<Napi::Object>();
    auto field = [&](const char* k) {
      Napi::Value f = o.Get(k);
      if (!f.IsNumber()) throw ArgError(std::string(fn_) + ": " + what + "." + k + " must be a number");
      return f.As<Napi::Number>().DoubleValue();
    };
    double thr = field("threshold"), scale = field("scale"), seed = field("seed");
    if (!(thr >= 0 && thr < 16777216) || thr != double(long(thr)))
      throw ArgError(std::string(fn_) + ": " + what + ".threshold must be an integer in [0, 2^24)");
    if (!(seed >= 0 && seed <= 4294967295.0) || seed != double(long(seed)))
      throw ArgError(std::string(fn_) + ": " + what + ".seed must be an integer in [0, 2^32)");
    d.on = true;
    d.threshold = uint32_t(thr);
    d.scale = float(scale);
    d.seed = uint32_t(seed);
    Napi::Value r0 = o.Get("row0");
    if (!r0.IsUndefined()) {
      double row0 = r0.IsNumber() ? r0.As<Napi::Number>().DoubleValue() : -1;
      if (!(row0 >= 0 && row0 <= 4294967295.0) || row0 != double(long(row0)))
        throw ArgError(std::string(fn_) + ": " + what + ".row0 must be an integer in [0, 2^32)");
      d.row0 = long(row0);
    }
    return d;
  }
  Napi::Value at(size_t i) { return info_[i]; }
  [[noreturn]] void fail(size_t i, const char* want) {
    throw ArgError(std::string(fn_) + ": argument " + std::to_string(i) + " must be " + want);
  }

 private:
  const Napi::CallbackInfo& info_;
  const char* fn_;
};

class Job : public Napi::AsyncWorker {
 public:
  Job(Napi::Env env, std::shared_ptr<Args> args, std::function<void()> fn)
      : Napi::AsyncWorker(env), args_(std::move(args)), fn_(std::move(fn)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      fn_();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::shared_ptr<Args> args_;
  std::function<void()> fn_;
  Napi::Promise::Deferred deferred_;
};

// Wraps a kernel entry: parse(args) returns the work to run off the JS thread.
using Parser = std::function<std::function<void()>(Args&)>;
Napi::Value async(const Napi::CallbackInfo& info, const char* name, const Parser& parse) {
  Napi::Env env = info.Env();
  auto args = std::make_shared<Args>(info, name);
  std::function<void()> work;
  try {
    work = parse(*args);
  } catch (const std::exception& e) {
    throw Napi::TypeError::New(env, e.what());
  }
  Job* job = new Job(env, args, std::move(work));
  Napi::Promise p = job->promise();
  job->Queue();
  return p;
}
void sync(const Napi::CallbackInfo& info, const char* name, const Parser& parse) {
  Args args(info, name);
  std::function<void()> work;
  try {
    work = parse(args);
    work();
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

// ---- configuration ----
// Freed memory stays in the process for the next allocation: no mmap for large blocks (their
// free is a munmap, and the next step's arrays fault fresh zeroed pages in again) and no trim of
// the heap's top. A training step allocates and frees GBs of activations and gradients; on
// virtual machines mapping fresh pages costs more than some of the ops writing them (the flash
// step at 512 tokens spent 1.8-2.1 s of system time in page faults, 0.16-0.33 s with this; its
// bf16 step took 6.0-6.5 s instead of 7.9-8.0, fp32 9.9-10.0 instead of 10.8-11.0). The process
// keeps its peak heap. glibc only; set once when the addon loads, unless V4TUNE_MALLOC=system.
static bool keep_freed_memory() {
#ifdef __GLIBC__
  const char* e = std::getenv("V4TUNE_MALLOC");
  if (e && std::string(e) == "system") return false;
  if (mallopt(M_MMAP_MAX, 0) != 1) return false;
  if (mallopt(M_TRIM_THRESHOLD, -1) == 1) return true;
  mallopt(M_MMAP_MAX, 65536);  // glibc's default: not half the policy with keepFreed false
  return false;
#else
  return false;
#endif
}
static const bool kKeepFreed = keep_freed_memory();

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("isa", isa_name(isa()));
  o.Set("threads", num_threads());
  o.Set("cpuBf16", cpu_has_bf16());
  o.Set("bf16", bf16_mode());
  o.Set("cpuAmx", cpu_has_amx());
  o.Set("amx", amx_mode());
  o.Set("keepFreed", kKeepFreed);
  return o;
}
// More than 8 threads per core only adds contention; far more aborts the pool (stack exhaustion).
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  const int n = info[0].As<Napi::Number>().Int32Value();
  const int limit = 8 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (n < 0 || n > limit) {
    throw Napi::RangeError::New(info.Env(), "setThreads: " + std::to_string(n) + " threads; 0 (every core) to " + std::to_string(limit) + " (8 per core)");
  }
  set_num_threads(n);
  return Napi::Number::New(info.Env(), num_threads());
}
Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  std::string s = info[0].As<Napi::String>().Utf8Value();
  set_isa(s == "scalar" ? Isa::scalar : s == "avx2" ? Isa::avx2 : Isa::avx512);
  return Napi::String::New(info.Env(), isa_name(isa()));
}
Napi::Value SetBf16(const Napi::CallbackInfo& info) {
  set_bf16_mode(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), bf16_mode());
}
Napi::Value SetAmx(const Napi::CallbackInfo& info) {
  set_amx_mode(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), amx_mode());
}
Napi::Value Cancel(const Napi::CallbackInfo& info) {
  request_cancel();
  return info.Env().Undefined();
}
Napi::Value ClearCancel(const Napi::CallbackInfo& info) {
  clear_cancel();
  return info.Env().Undefined();
}
Napi::Value FmaPeak(const Napi::CallbackInfo& info) {
  int threads = info[0].As<Napi::Number>().Int32Value();
  double seconds = info[1].As<Napi::Number>().DoubleValue();
  return Napi::Number::New(info.Env(), fma_peak_gflops(threads, seconds));
}

// ---- GEMM ----
// gemm(M, N, K, alpha, a, sam, sak, W, transB, beta, c, ldc)
std::function<void()> parseGemm(Args& a, bool reference) {
  long M = a.integer(0), N = a.integer(1), K = a.integer(2);
  float alpha = float(a.num(3));
  long sam = a.integer(5), sak = a.integer(6);
  float* A = a.f32(4, size_t(M > 0 && K > 0 ? (M - 1) * sam + (K - 1) * sak + 1 : 0));
  WeightRef W = a.weight(a.at(7), "W");
  bool transB = a.boolean(8);
  if (transB ? (W.rows != N || W.cols != K) : (W.rows != K || W.cols != N)) throw ArgError("gemm: W shape does not match M, N, K");
  float beta = float(a.num(9));
  long ldc = a.integer(11);
  float* C = a.f32(10, size_t(M > 0 ? (M - 1) * ldc + N : 0));
  return [=] { (reference ? gemm_reference : gemm)(M, N, K, alpha, A, sam, sak, W, transB, beta, C, ldc); };
}
Napi::Value Gemm(const Napi::CallbackInfo& info) { return async(info, "gemm", [](Args& a) { return parseGemm(a, false); }); }
Napi::Value GemmReference(const Napi::CallbackInfo& info) {
  sync(info, "gemmReference", [](Args& a) { return parseGemm(a, true); });
  return info.Env().Undefined();
}
// decodeWeight(W, out): out (rows, cols) = W dequantised (tests and the tfjs fallback's loader)
Napi::Value DecodeWeight(const Napi::CallbackInfo& info) {
  sync(info, "decodeWeight", [](Args& a) {
    WeightRef W = a.weight(a.at(0), "W");
    float* out = a.f32(1, size_t(W.rows * W.cols));
    // rows split across the pool (a quantize decodes every FP8 / FP4 linear it exports)
    return std::function<void()>([=] {
      const int ntask = int(std::min<long>(W.rows, std::max<long>(1, W.rows * W.cols >> 16)));
      parallel_run(std::min(ntask, 8 * num_threads()), [&](int t) {
        const int nt = std::min(ntask, 8 * num_threads());
        for (long r = W.rows * t / nt; r < W.rows * (t + 1) / nt; r++) decode_row(W, r, 0, W.cols, out + r * W.cols);
      });
    });
  });
  return info.Env().Undefined();
}

// f32ToF16(out u16 [n], x f32 [n]): half bits of x (f32_to_f16), across the pool
Napi::Value F32ToF16(const Napi::CallbackInfo& info) {
  sync(info, "f32ToF16", [](Args& a) {
    const size_t n = a.at(1).As<Napi::TypedArray>().ElementLength();
    uint16_t* out = a.typed<uint16_t>(a.at(0), napi_uint16_array, long(n), "out", false);
    float* x = a.f32(1, long(n));
    return std::function<void()>([=] {
      const int nt = int(std::min<long>(8L * num_threads(), std::max<long>(1, long(n) >> 16)));
      parallel_run(nt, [&](int t) {
        const long i0 = long(n) * t / nt, i1 = long(n) * (t + 1) / nt;
        f32_to_f16(out + i0, x + i0, i1 - i0);
      });
    });
  });
  return info.Env().Undefined();
}

// firstNonFinite(x f32): the index of the first NaN or ±Infinity in x, or -1 (the export's
// check of the tensors it writes as they are)
Napi::Value FirstNonFinite(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(info.Env(), "firstNonFinite: x must be a Float32Array");
  auto x = info[0].As<Napi::Float32Array>();
  return Napi::Number::New(info.Env(), double(find_nonfinite(x.Data(), long(x.ElementLength()))));
}

// addInto(dst, src): dst[i] += src[i] across the pool (the tape's gradient sums): one float add an
// element, the bits of the JS loop it replaces
Napi::Value AddInto(const Napi::CallbackInfo& info) {
  auto f32 = [&](size_t i) {
    if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(info.Env(), "addInto: dst and src must be Float32Arrays");
    return info[i].As<Napi::Float32Array>();
  };
  auto dst = f32(0), src = f32(1);
  const long n = long(dst.ElementLength());
  if (long(src.ElementLength()) != n) throw Napi::RangeError::New(info.Env(), "addInto: dst and src differ in length");
  float* d = dst.Data();
  const float* x = src.Data();
  constexpr long kChunk = 1L << 16;
  parallel_run(int(cdiv(n, kChunk)), [&](int t) {
    const long a = t * kChunk, b = std::min(n, a + kChunk);
    for (long i = a; i < b; i++) d[i] += x[i];
  });
  return info.Env().Undefined();
}

// ---- linear with LoRA ----
long groups(Args& a, size_t i, const WeightRef& W) {
  long G = a.integer(i);
  if (G < 1 || W.rows % G) throw ArgError("linear: W rows must split evenly into the groups");
  return G;
}
// linearForward(y, x, W, A, B, r, s, T, G, dropout?): W is (G·outG, inG), x (T, G·inG), y (T, G·outG)
Napi::Value LinearForward(const Napi::CallbackInfo& info) {
  return async(info, "linearForward", [](Args& a) {
    WeightRef W = a.weight(a.at(2), "W");
    long r = a.integer(5), T = a.integer(7), G = groups(a, 8, W);
    float s = float(a.num(6));
    Dropout dr = a.dropout(a.at(9), "dropout");
    float* y = a.f32(0, T * W.rows);
    float* x = a.f32(1, T * G * W.cols);
    float* A = a.f32(3, r * W.cols, true);
    float* B = a.f32(4, W.rows * r, A == nullptr);
    return std::function<void()>([=] { linear_lora_forward(y, x, W, A, B, r, s, T, G, dr); });
  });
}
// linearBackward(dx, dA, dB, dy, x, W, A, B, r, s, T, G, dropout?)
Napi::Value LinearBackward(const Napi::CallbackInfo& info) {
  return async(info, "linearBackward", [](Args& a) {
    WeightRef W = a.weight(a.at(5), "W");
    long r = a.integer(8), T = a.integer(10), G = groups(a, 11, W);
    float s = float(a.num(9));
    Dropout dr = a.dropout(a.at(12), "dropout");
    float* dx = a.f32(0, T * G * W.cols, true);
    float* dA = a.f32(1, r * W.cols, true);
    float* dB = a.f32(2, W.rows * r, true);
    float* dy = a.f32(3, T * W.rows);
    float* x = a.f32(4, T * G * W.cols);
    float* A = a.f32(6, r * W.cols, true);
    float* B = a.f32(7, W.rows * r, A == nullptr);
    return std::function<void()>([=] { linear_lora_backward(dx, dA, dB, dy, x, W, A, B, r, s, T, G, dr); });
  });
}

// ---- grouped experts ----
// experts[e] = {w1, w2, w3, a1, b1, a2, b2, a3, b3, r1, r2, r3, s1, s2, s3, d1?, d2?, d3?}
std::vector<Expert> parseExperts(Args& a, Napi::Value v, long d, long I) {
  if (!v.IsArray()) throw ArgError("experts must be an array");
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<Expert> ex(arr.Length());
  for (uint32_t e = 0; e < arr.Length(); e++) {
    Napi::Object o = arr.Get(e).As<Napi::Object>();
    std::string tag = "experts[" + std::to_string(e) + "]";
    Expert& x = ex[e];
    x.w1 = a.weight(o.Get("w1"), tag + ".w1");
    x.w2 = a.weight(o.Get("w2"), tag + ".w2");
    x.w3 = a.weight(o.Get("w3"), tag + ".w3");
    if (x.w1.rows != I || x.w1.cols != d || x.w3.rows != I || x.w3.cols != d || x.w2.rows != d || x.w2.cols != I)
      throw ArgError(tag + ": w1/w3 must be (I, d) and w2 (d, I)");
    auto rk = [&](const char* k) { return o.Has(k) && o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().Int64Value() : 0L; };
    x.r1 = rk("r1"), x.r2 = rk("r2"), x.r3 = rk("r3");
    auto sc = [&](const char* k) { return o.Has(k) && o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().FloatValue() : 0.f; };
    x.s1 = sc("s1"), x.s2 = sc("s2"), x.s3 = sc("s3");
    x.a1 = a.f32In(o, "a1", x.r1 * d), x.b1 = a.f32In(o, "b1", I * x.r1, x.a1 == nullptr);
    x.a3 = a.f32In(o, "a3", x.r3 * d), x.b3 = a.f32In(o, "b3", I * x.r3, x.a3 == nullptr);
    x.a2 = a.f32In(o, "a2", x.r2 * I), x.b2 = a.f32In(o, "b2", d * x.r2, x.a2 == nullptr);
    x.d1 = a.dropout(o.Get("d1"), tag + ".d1"), x.d2 = a.dropout(o.Get("d2"), tag + ".d2"), x.d3 = a.dropout(o.Get("d3"), tag + ".d3");
  }
  return ex;
}
void checkRouting(long T, long P, long E, const int* idx, const int* off) {
  if (off[0] != 0 || off[E] != P) throw ArgError("expert offsets must start at 0 and end at the pair count");
  for (long e = 0; e < E; e++)
    if (off[e + 1] < off[e]) throw ArgError("expert offsets must be non-decreasing");
  for (long p = 0; p < P; p++)
    if (idx[p] < 0 || idx[p] >= T) throw ArgError("expert token index out of range");
}
// routedExpertsForward(out, x, T, d, I, idx, off, w, experts, L, h13?) — h13 (2·P·I) keeps h1, h3 for the backward
Napi::Value RoutedExpertsForward(const Napi::CallbackInfo& info) {
  return async(info, "routedExpertsForward", [](Args& a) {
    long T = a.integer(2), d = a.integer(3), I = a.integer(4);
    std::vector<Expert> ex = parseExperts(a, a.at(8), d, I);
    long E = long(ex.size());
    int* off = a.i32(6, E + 1);
    long P = off[E];
    int* idx = a.i32(5, P);
    float* w = a.f32(7, P);
    checkRouting(T, P, E, idx, off);
    float* out = a.f32(0, T * d);
    float* x = a.f32(1, T * d);
    float L = float(a.num(9));
    float* h13 = a.f32(10, 2 * P * I, true);
    return std::function<void()>([=] { routed_experts_forward(out, x, T, d, I, idx, off, w, ex.data(), E, L, h13); });
  });
}
// routedExpertsBackward(dx, dw, grads, dout, x, T, d, I, idx, off, w, experts, L, h13?) — the forward's h13, or recompute
Napi::Value RoutedExpertsBackward(const Napi::CallbackInfo& info) {
  return async(info, "routedExpertsBackward", [](Args& a) {
    long T = a.integer(5), d = a.integer(6), I = a.integer(7);
    std::vector<Expert> ex = parseExperts(a, a.at(11), d, I);
    long E = long(ex.size());
    int* off = a.i32(9, E + 1);
    long P = off[E];
    int* idx = a.i32(8, P);
    float* w = a.f32(10, P);
    checkRouting(T, P, E, idx, off);
    float* dx = a.f32(0, T * d, true);
    float* dw = a.f32(1, P, true);
    float* dout = a.f32(3, T * d);
    float* x = a.f32(4, T * d);
    float L = float(a.num(12));
    const float* h13 = a.f32(13, 2 * P * I, true);
    if (!a.at(2).IsArray() || a.at(2).As<Napi::Array>().Length() != uint32_t(E)) throw ArgError("routedExpertsBackward: grads must have one entry per expert");
    Napi::Array ga = a.at(2).As<Napi::Array>();
    std::vector<ExpertGrads> gr(E);
    for (long e = 0; e < E; e++) {
      Napi::Object o = ga.Get(uint32_t(e)).As<Napi::Object>();
      const Expert& x = ex[e];
      gr[e] = ExpertGrads{a.f32In(o, "da1", x.r1 * d), a.f32In(o, "db1", I * x.r1), a.f32In(o, "da2", x.r2 * I),
                          a.f32In(o, "db2", d * x.r2), a.f32In(o, "da3", x.r3 * d), a.f32In(o, "db3", I * x.r3)};
    }
    return std::function<void()>([=] { routed_experts_backward(dx, dw, gr.data(), dout, x, T, d, I, idx, off, w, ex.data(), E, L, h13); });
  });
}

// dropoutMask(m, rows|null, N, C, dropout): m (N, C) = the mask's multipliers (scale kept, 0
// dropped) at rows rows[i] (null: row i); the kernels' own mask, for the tests
Napi::Value DropoutMask(const Napi::CallbackInfo& info) {
  sync(info, "dropoutMask", [](Args& a) {
    long N = a.integer(2), C = a.integer(3);
    Dropout dr = a.dropout(a.at(4), "dropout");
    if (!dr.on) throw ArgError("dropoutMask: dropout is required");
    float* m = a.f32(0, N * C);
    int* rows = a.i32(1, N, true);
    std::vector<float> ones(C, 1.f);
    return std::function<void()>([=] { dropout_apply(m, C, ones.data(), 0, rows, 0, N, C, dr, false); });
  });
  return info.Env().Undefined();
}

#include "addon_ops.inc"
#include "ascend_addon.inc"
#include "ascend_hccl_addon.inc"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  exports.Set("setBf16", Napi::Function::New(env, SetBf16));
  exports.Set("setAmx", Napi::Function::New(env, SetAmx));
  exports.Set("cancel", Napi::Function::New(env, Cancel));
  exports.Set("clearCancel", Napi::Function::New(env, ClearCancel));
  exports.Set("fmaPeak", Napi::Function::New(env, FmaPeak));
  exports.Set("gemm", Napi::Function::New(env, Gemm));
  exports.Set("gemmReference", Napi::Function::New(env, GemmReference));
  exports.Set("decodeWeight", Napi::Function::New(env, DecodeWeight));
  exports.Set("f32ToF16", Napi::Function::New(env, F32ToF16));
  exports.Set("firstNonFinite", Napi::Function::New(env, FirstNonFinite));
  exports.Set("addInto", Napi::Function::New(env, AddInto));
  exports.Set("linearForward", Napi::Function::New(env, LinearForward));
  exports.Set("linearBackward", Napi::Function::New(env, LinearBackward));
  exports.Set("routedExpertsForward", Napi::Function::New(env, RoutedExpertsForward));
  exports.Set("routedExpertsBackward", Napi::Function::New(env, RoutedExpertsBackward));
  exports.Set("dropoutMask", Napi::Function::New(env, DropoutMask));
  registerOps(env, exports);
  registerAscend(env, exports);
  registerHccl(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(v4tune_native, Init)
