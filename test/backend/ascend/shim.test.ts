// The CPU shim of the AscendC subset enforces what a 910B / A3 AI core enforces, checked on its
// own: memory-level capacities (a buffer or Matmul tiling that does not fit fails naming it),
// 32-byte alignment of copies and vector operands, copy paths, queue depth and discipline, GM
// bounds; and its copy, vector and Cube semantics on small known cases.
import { describe, expect, it } from 'vitest';
import { onDevice, selftest, type SelfCheck } from './harness.js';

const CHECKS = [
  'ub overflow names the buffer',
  'A3 has the same UB',
  'L0A overflow names the matmul tile',
  'L0B overflow',
  'L0C overflow',
  'L1 overflow',
  'tile shapes are fractal multiples',
  'DataCopy moves whole 32 B blocks',
  'local tensors start on 32 B',
  'vector operands start on 32 B',
  'no copy path VECIN to GM',
  'GM bounds',
  'EnQue beyond the queue depth',
  'AllocTensor with every buffer in use',
  'DeQue of an empty queue',
  'queues are FIFO and buffers recycle',
  'strided DataCopy, DataCopyPad and atomic add',
  'Gather, Cast, ShiftLeft, CompareScalar and Select',
  'Matmul: transposes, strides, tails and atomic accumulate',
  'launch gives each block its index',
];

describe.skipIf(onDevice)('Ascend C shim (CPU)', () => {
  let results: SelfCheck[] = [];
  it('builds and runs the shim self-tests', () => {
    results = selftest('shim-selftest');
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
