// node-addon-api binding to the system MPI (Open MPI, MPICH): the few collectives v4tune's
// trainer needs, on host buffers (TypedArrays), over MPI_COMM_WORLD. Every collective runs on a
// libuv worker thread (Napi::AsyncWorker) and returns a Promise, so the JS thread stays free to
// handle signals while a peer is slow; calls are made one at a time (MPI_THREAD_SERIALIZED).
// Errors return (MPI_ERRORS_RETURN) and reject the Promise with MPI's own message.
#include <mpi.h>
#include <napi.h>
#include <functional>
#include <string>
#include <vector>

namespace {

bool g_initialized = false;

std::string mpiError(const char* what, int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) return std::string(what) + ": MPI error " + std::to_string(code);
  return std::string(what) + ": " + std::string(msg, len);
}

void requireInit(const Napi::Env& env) {
  if (!g_initialized) throw Napi::Error::New(env, "v4tune_mpi: init() was not called");
}

// A typed array's element type as MPI sees it, its data pointer and length.
struct Buf {
  MPI_Datatype type = MPI_BYTE;
  void* data = nullptr;
  size_t length = 0;
};

Buf bufOf(const Napi::Value& v, const char* fn, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string(fn) + ": " + what + " must be a typed array");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  Buf b;
  switch (ta.TypedArrayType()) {
    case napi_float32_array: b.type = MPI_FLOAT; break;
    case napi_float64_array: b.type = MPI_DOUBLE; break;
    case napi_int32_array: b.type = MPI_INT; break;
    case napi_uint8_array: b.type = MPI_BYTE; break;
    default: throw Napi::TypeError::New(v.Env(), std::string(fn) + ": " + what + " must be a Float32Array, Float64Array, Int32Array or Uint8Array");
  }
  b.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  b.length = ta.ElementLength();
  return b;
}

std::vector<int> countsOf(const Napi::Value& v, int size, const char* fn, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(v.Env(), std::string(fn) + ": " + what + " must be an Int32Array");
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  if (int(a.ElementLength()) != size)
    throw Napi::RangeError::New(v.Env(), std::string(fn) + ": " + what + " has " + std::to_string(a.ElementLength()) + " entries, the world has " + std::to_string(size) + " ranks");
  std::vector<int> c(size);
  for (int i = 0; i < size; i++) {
    if (a[i] < 0) throw Napi::RangeError::New(v.Env(), std::string(fn) + ": " + what + " holds a negative count");
    c[i] = a[i];
  }
  return c;
}

std::vector<int> displsOf(const std::vector<int>& counts, size_t have, const Napi::Env& env, const char* fn, const char* what) {
  std::vector<int> d(counts.size());
  long long o = 0;
  for (size_t i = 0; i < counts.size(); i++) {
    d[i] = int(o);
    o += counts[i];
  }
  if (size_t(o) > have)
    throw Napi::RangeError::New(env, std::string(fn) + ": " + what + " holds " + std::to_string(have) + " elements, the counts need " + std::to_string(o));
  if (o > 0x7fffffffLL) throw Napi::RangeError::New(env, std::string(fn) + ": more than 2^31 elements in one call");
  return d;
}

// Runs one MPI call on a worker thread, keeping the JS buffers alive; resolves with undefined.
class Job : public Napi::AsyncWorker {
 public:
  Job(Napi::Env env, const char* what, std::vector<Napi::Value> pins, std::function<int()> call)
      : Napi::AsyncWorker(env), what_(what), call_(std::move(call)), deferred_(Napi::Promise::Deferred::New(env)) {
    for (auto& v : pins) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    int rc = call_();
    if (rc != MPI_SUCCESS) SetError(mpiError(what_, rc));
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  const char* what_;
  std::function<int()> call_;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> keep_;
};

Napi::Value queue(Napi::Env env, const char* what, std::vector<Napi::Value> pins, std::function<int()> call) {
  auto* job = new Job(env, what, std::move(pins), std::move(call));
  Napi::Promise p = job->promise();
  job->Queue();
  return p;
}

int worldSize() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// init() → {rank, size, threadLevel, library}: MPI_Init_thread once (SERIALIZED), errors return.
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int provided = 0;
  if (!g_initialized) {
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
      int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
      if (rc != MPI_SUCCESS) throw Napi::Error::New(env, mpiError("MPI_Init_thread", rc));
    } else {
      MPI_Query_thread(&provided);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    g_initialized = true;
  } else {
    MPI_Query_thread(&provided);
  }
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(lib, &len);
  std::string library(lib, len);
  while (!library.empty() && (library.back() == '\n' || library.back() == '\0')) library.pop_back();
  Napi::Object o = Napi::Object::New(env);
  o.Set("rank", rank);
  o.Set("size", worldSize());
  o.Set("threadLevel", provided);
  o.Set("serializedOk", provided >= MPI_THREAD_SERIALIZED);
  o.Set("library", library);
  return o;
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  if (g_initialized) {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
  }
  return info.Env().Undefined();
}

// abort(code): MPI_Abort on the world (every rank ends); does not return.
Napi::Value Abort(const Napi::CallbackInfo& info) {
  requireInit(info.Env());
  int code = info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 1;
  MPI_Abort(MPI_COMM_WORLD, code);
  return info.Env().Undefined();
}

// allreduceSum(buf): buf ← Σ over ranks of buf (Float32Array or Float64Array, in place).
Napi::Value AllreduceSum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  requireInit(env);
  Buf b = bufOf(info[0], "allreduceSum", "buf");
  if (b.type != MPI_FLOAT && b.type != MPI_DOUBLE && b.type != MPI_INT)
    throw Napi::TypeError::New(env, "allreduceSum: buf must be a Float32Array, Float64Array or Int32Array");
  if (b.length > 0x7fffffffULL) throw Napi::RangeError::New(env, "allreduceSum: more than 2^31 elements in one call");
  return queue(env, "MPI_Allreduce", {info[0]}, [b]() {
    return MPI_Allreduce(MPI_IN_PLACE, b.data, int(b.length), b.type, MPI_SUM, MPI_COMM_WORLD);
  });
}

// allgatherv(send, recv, counts): recv = rank 0's send, then rank 1's, …; counts[r]: rank r's length.
Napi::Value Allgatherv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  requireInit(env);
  Buf s = bufOf(info[0], "allgatherv", "send");
  Buf r = bufOf(info[1], "allgatherv", "recv");
  if (s.type != r.type) throw Napi::TypeError::New(env, "allgatherv: send and recv must be of one type");
  int size = worldSize();
  std::vector<int> counts = countsOf(info[2], size, "allgatherv", "counts");
  std::vector<int> displs = displsOf(counts, r.length, env, "allgatherv", "recv");
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (size_t(counts[rank]) > s.length) throw Napi::RangeError::New(env, "allgatherv: send is shorter than this rank's count");
  int mine = counts[rank];
  return queue(env, "MPI_Allgatherv", {info[0], info[1]}, [s, r, mine, counts, displs]() {
    return MPI_Allgatherv(s.data, mine, s.type, r.data, counts.data(), displs.data(), r.type, MPI_COMM_WORLD);
  });
}

// alltoallv(send, sendCounts, recv, recvCounts): the block of sendCounts[q] elements at its
// offset goes to rank q; recv holds rank 0's block, then rank 1's, …
Napi::Value Alltoallv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  requireInit(env);
  Buf s = bufOf(info[0], "alltoallv", "send");
  Buf r = bufOf(info[2], "alltoallv", "recv");
  if (s.type != r.type) throw Napi::TypeError::New(env, "alltoallv: send and recv must be of one type");
  int size = worldSize();
  std::vector<int> sc = countsOf(info[1], size, "alltoallv", "sendCounts");
  std::vector<int> rc = countsOf(info[3], size, "alltoallv", "recvCounts");
  std::vector<int> sd = displsOf(sc, s.length, env, "alltoallv", "send");
  std::vector<int> rd = displsOf(rc, r.length, env, "alltoallv", "recv");
  return queue(env, "MPI_Alltoallv", {info[0], info[2]}, [s, r, sc, rc, sd, rd]() {
    return MPI_Alltoallv(s.data, sc.data(), sd.data(), s.type, r.data, rc.data(), rd.data(), r.type, MPI_COMM_WORLD);
  });
}

// alltoall(send, recv, n): n elements to each rank (send, recv: size·n elements).
Napi::Value Alltoall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  requireInit(env);
  Buf s = bufOf(info[0], "alltoall", "send");
  Buf r = bufOf(info[1], "alltoall", "recv");
  if (s.type != r.type) throw Napi::TypeError::New(env, "alltoall: send and recv must be of one type");
  int n = info[2].As<Napi::Number>().Int32Value();
  size_t need = size_t(worldSize()) * size_t(n);
  if (n < 0 || s.length < need || r.length < need) throw Napi::RangeError::New(env, "alltoall: send and recv need size·n elements");
  return queue(env, "MPI_Alltoall", {info[0], info[1]}, [s, r, n]() {
    return MPI_Alltoall(s.data, n, s.type, r.data, n, r.type, MPI_COMM_WORLD);
  });
}

// broadcast(buf, root): every rank's buf ← root's.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  requireInit(env);
  Buf b = bufOf(info[0], "broadcast", "buf");
  int root = info[1].As<Napi::Number>().Int32Value();
  if (root < 0 || root >= worldSize()) throw Napi::RangeError::New(env, "broadcast: root is not a rank");
  if (b.length > 0x7fffffffULL) throw Napi::RangeError::New(env, "broadcast: more than 2^31 elements in one call");
  return queue(env, "MPI_Bcast", {info[0]}, [b, root]() { return MPI_Bcast(b.data, int(b.length), b.type, root, MPI_COMM_WORLD); });
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  requireInit(info.Env());
  return queue(info.Env(), "MPI_Barrier", {}, []() { return MPI_Barrier(MPI_COMM_WORLD); });
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("finalize", Napi::Function::New(env, Finalize));
  exports.Set("abort", Napi::Function::New(env, Abort));
  exports.Set("allreduceSum", Napi::Function::New(env, AllreduceSum));
  exports.Set("allgatherv", Napi::Function::New(env, Allgatherv));
  exports.Set("alltoallv", Napi::Function::New(env, Alltoallv));
  exports.Set("alltoall", Napi::Function::New(env, Alltoall));
  exports.Set("broadcast", Napi::Function::New(env, Broadcast));
  exports.Set("barrier", Napi::Function::New(env, Barrier));
  return exports;
}

}  // namespace

NODE_API_MODULE(v4tune_mpi, InitModule)
