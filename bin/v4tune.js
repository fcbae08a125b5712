#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.hugetlb=1 node
// Run as a command (npx v4tune, an npm bin link, ./bin/v4tune.js), the line above starts node with
// glibc's malloc.hugetlb tunable (read only at process start; ignored off glibc): large buffers are
// then backed by transparent huge pages, so filling a fresh buffer takes one page fault per 2 MiB
// instead of per 4 KiB. On virtual machines a fault is costly (about 11 µs on the build machine:
// 3 s per GB of fresh buffers); `v4tune merge` of the flash checkpoint took 2.9 s with it, 5.0 s without.
import { main } from '../dist/cli/main.js';

// Output piped into a reader that stops early (`v4tune inspect … | head`) is not an error.
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
process.exitCode = await main(process.argv);
