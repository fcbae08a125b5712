// A fake ACL runtime for the tests: device memory is host memory (fresh allocations filled with
// 0xFF, a NaN pattern), streams are queues that run only when synchronised, or when another
// stream waits on an event recorded in them — so work that is not ordered by events runs out of
// order and shows. Kernels are the shim-built Ascend C kernels behind the same launch pointers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "ascend_acl.h"
#include "shim/ascendc_shim.h"

namespace fake {

struct Options {
  const AscendC::Chip* chip = &AscendC::kAscend910B;
  uint32_t deviceCount = 1;
  bool groupedMatmul = true;  // provide aclnn's tensors and grouped matmul (false: a CANN without them)
};
// The table, over a fresh fake state.
v4ascend::AclApi make_api(const Options& o = Options{});

// The next call named `call` (e.g. "aclrtMalloc") returns `code` with CANN-style message `msg`.
void inject(const std::string& call, int32_t code, const std::string& msg);
// Live device allocations (count, bytes), streams and events.
size_t live_allocations();
size_t live_bytes();
size_t live_streams();
size_t live_events();
size_t live_tensors();  // aclnn tensors not destroyed
// What ran, in order: "h2d", "d2h", "memset", "record", "wait", "gmm", "kernel <name>".
const std::vector<std::string>& log();
void clear_log();

}  // namespace fake
