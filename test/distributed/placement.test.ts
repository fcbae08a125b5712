// placement.test.ts: which micro-batches a rank runs and which experts it holds — pure functions
// every rank must agree on, checked without MPI.
import { describe, expect, it } from 'vitest';
import { evalShareOf, microBatchesOf } from '../../src/distributed/data-parallel.js';
import { ExpertPlacement } from '../../src/distributed/expert-parallel.js';
import { launcherWorld } from '../../src/distributed/launch.js';

describe('data-parallel shares', () => {
  it('split a step\'s micro-batches into contiguous equal shares that cover each once', () => {
    expect([0, 1, 2].map((r) => microBatchesOf(r, 3, 6))).toEqual([[0, 1], [2, 3], [4, 5]]);
    expect(microBatchesOf(0, 1, 4)).toEqual([0, 1, 2, 3]);
    expect(() => microBatchesOf(0, 2, 3)).toThrow(/grad_accum \(3\) must be a multiple of the 2 data-parallel ranks/);
  });

  it('split the eval rows into contiguous shares that count each row once, every rank running as many', () => {
    const shares = (size: number, n: number) => Array.from({ length: size }, (_, r) => evalShareOf(r, size, n));
    // 3 rows on 2 ranks: rank 1 counts row 2 and runs it again uncounted (a forward beside rank 0's second)
    expect(shares(2, 3)).toEqual([{ indices: [0, 1], counted: 2 }, { indices: [2, 2], counted: 1 }]);
    // fewer rows than ranks: the last ranks count none but still take part
    expect(shares(4, 2)).toEqual([{ indices: [0], counted: 1 }, { indices: [1], counted: 1 }, { indices: [1], counted: 0 }, { indices: [1], counted: 0 }]);
    expect(shares(2, 0)).toEqual([{ indices: [], counted: 0 }, { indices: [], counted: 0 }]);
    for (const [size, n] of [[2, 7], [3, 10], [4, 4]] as const) {
      const counted = shares(size, n).flatMap((s) => s.indices.slice(0, s.counted));
      expect(counted).toEqual(Array.from({ length: n }, (_, i) => i));
    }
  });
});

describe('expert placement', () => {
  it('gives each rank of a group a contiguous block, every expert exactly one owner per group', () => {
    const p = [0, 1, 2].map((r) => new ExpertPlacement(8, 3, r, 3));
    expect(p.map((x) => x.local())).toEqual([[0, 1, 2], [3, 4, 5], [6, 7]]);
    for (const x of p) expect(Array.from({ length: 8 }, (_, e) => x.owner(e))).toEqual([0, 0, 0, 1, 1, 1, 2, 2]);
    expect(p[0]!.describe()).toBe('8 routed experts per layer: 0–2 on rank 0, 3–5 on rank 1, 6–7 on rank 2');
  });

  it('with groups smaller than the world, sends a rank\'s tokens within its own group', () => {
    const r3 = new ExpertPlacement(8, 2, 3, 4); // group {2, 3}
    expect(r3.local()).toEqual([4, 5, 6, 7]);
    expect(Array.from({ length: 8 }, (_, e) => r3.owner(e))).toEqual([2, 2, 2, 2, 3, 3, 3, 3]);
  });

  it('refuses a group size that does not divide the world or exceeds the experts', () => {
    expect(() => new ExpertPlacement(8, 3, 0, 4)).toThrow(/expert_parallel \(3\) must divide the world size \(4\)/);
    expect(() => new ExpertPlacement(2, 4, 0, 4)).toThrow(/exceeds the model's 2 routed experts/);
  });
});

describe('the launcher\'s world', () => {
  it('is read from Open MPI, PMI or Slurm variables, and is null without them', () => {
    expect(launcherWorld({ OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_RANK: '2' })).toEqual({ size: 4, rank: 2, launcher: 'Open MPI' });
    expect(launcherWorld({ PMI_SIZE: '2', PMI_RANK: '1' })?.size).toBe(2);
    expect(launcherWorld({ SLURM_STEP_NUM_TASKS: '8', SLURM_PROCID: '7' })?.launcher).toBe('Slurm');
    expect(launcherWorld({ SLURM_NTASKS: '8', SLURM_PROCID: '0' })).toBeNull(); // a batch script, not a step
    expect(launcherWorld({})).toBeNull();
    expect(launcherWorld({ OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '5' })).toBeNull();
  });
});
