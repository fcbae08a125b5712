// The Ascend host code (native/ascend_host.cc, ascend_acl.cc) against a fake ACL table whose
// device memory is host memory, whose streams run only what events order, and whose kernels are
// the shim-built Ascend C kernels: ACL error codes become messages naming the call, the code and
// CANN's text; an F32 base goes through aclnn's grouped matmul (one group per weight view) and
// gives what the kernels give without it; an op frees all it allocated, aclnn tensors included
// (also after an error), while base weights stay cached;
// uploads run before the kernel and downloads after it; a closed device leaves nothing behind.
import { describe, expect, it } from 'vitest';
import { onDevice, selftest, type SelfCheck } from './harness.js';

const CHECKS = [
  'a missing device maps to its ACL name',
  'unknown codes say so with their number',
  'every documented runtime code has a name',
  'an op frees what it allocated; the weight stays',
  'inputs go up before the kernel and results come down after it',
  'a stream runs only what is ordered before its synchronisation',
  'device out of memory maps to its name, and nothing leaks',
  "a kernel's exception maps to its name with the shim's message",
  'a failed launch maps to its name',
  'a failed aclnn call maps to its name and frees its tensors',
  'grouped matmul group lists: an F32 base gives what the kernels give without aclnn',
  'a failed weight upload leaves nothing behind',
  'LoRA dropout is refused by name',
  'BF16 base weights are refused by name',
  'release_weights frees the cached base',
  'a closed device leaves no memory, stream or event',
];

describe.skipIf(onDevice)('Ascend host code against the fake ACL', () => {
  let results: SelfCheck[] = [];
  it('builds and runs the host self-tests', () => {
    results = selftest('host-selftest');
    expect(results.map((r) => r.name)).toEqual(CHECKS);
  }, 600_000);
  for (const name of CHECKS) {
    it(name, () => {
      const r = results.find((x) => x.name === name);
      expect(r, `${name} did not run`).toBeDefined();
      expect(r!.ok, r!.message).toBe(true);
    });
  }
});
