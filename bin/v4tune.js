#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.hugetlb=1 node
// Run as a command (npx v4tune, an npm bin link, ./bin/v4tune.js), the line above starts node with
// glibc's malloc.hugetlb tunable (read only at process start; ignored off glibc): large buffers are
// then backed by transparent huge pages, so filling a fresh buffer takes one page fault per 2 MiB
// instead of per 4 KiB. On virtual machines a fault is costly (about 11 µs on the build machine:
// 3 s per GB of fresh buffers); `v4tune merge` of the flash checkpoint took 2.9 s with it, 5.0 s without.
import { setFlagsFromString } from 'node:v8';
import { main } from '../dist/cli/main.js';

// V8 collects garbage when fresh ArrayBuffer memory passes a limit (about 64 MB past the last
// collection): a training step allocates its activations and gradients as new Float32Arrays, and
// so starts a collection every few dozen milliseconds. Incremental marking then runs on the JS
// thread and on V8's concurrent marking threads, beside the kernel pool that already has every
// core. Atomic collections of this process's small heap cost far less: the `small` preset's
// step at 512 tokens took 1.21 s with incremental marking and 0.93 s without (2026-12-07, the
// train command's modules loaded). V8 reads the flag at each collection, so setting it here,
// after start-up, takes effect.
setFlagsFromString('--no-incremental-marking');

// Output piped into a reader that stops early (`v4tune inspect … | head`) is not an error.
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
process.exitCode = await main(process.argv);
