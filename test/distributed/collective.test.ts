// collective.test.ts: the MPI engine's collectives give, on every rank of `mpirun -np 3`, what
// their definitions say (uneven and empty blocks included); the single-process engine is the
// identity.
import { describe, expect, it } from 'vitest';
import { SingleProcess, type Collective } from '../../src/distributed/collective.js';
import { ROOT, run, mpirunArgs, skipWithoutMpi } from './helpers.js';

describe('the single-process collective', () => {
  it('is rank 0 of 1, and every collective hands back what it was given', async () => {
    const c: Collective = new SingleProcess();
    const x = Float32Array.of(1, 2, 3);
    await c.allreduceSum(x);
    expect(Array.from(x)).toEqual([1, 2, 3]);
    expect(Array.from(await c.allgatherv(Int32Array.of(4, 5, 6), [2]))).toEqual([4, 5]);
    const a = await c.alltoallv(Float64Array.of(7, 8), [2]);
    expect(Array.from(a.recv)).toEqual([7, 8]);
    expect(Array.from(a.recvCounts)).toEqual([2]);
    expect([c.rank, c.size, c.traffic.bytes]).toEqual([0, 1, 0]);
  });
});

describe.skipIf(skipWithoutMpi())('the MPI collective under mpirun -np 3', () => {
  it('allreduce (f32, f64), allgatherv, alltoallv, broadcast and barrier give their definitions on every rank', async () => {
    const P = 3;
    const r = await run('mpirun', [...mpirunArgs(P), process.execPath, 'test/distributed/collectives-check.mjs'], { cwd: ROOT, timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    const ranks = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).sort((a, b) => (a.rank as number) - (b.rank as number));
    expect(ranks.map((x) => x.rank)).toEqual([0, 1, 2]);
    for (const x of ranks) {
      const me = x.rank as number;
      expect(x.size).toBe(P);
      expect(x.engine).toMatch(/^MPI \(/);
      expect(x.allreduceF32).toEqual([0, 1, 2, 3, 4].map((i) => 30 + 3 * i + 1.5));
      expect(x.allreduceF64).toEqual([6e-17, 3 * 2 ** 40 + 3]);
      expect(x.allgatherv).toEqual([0, 100, 101, 200, 201, 202]);
      // from rank q: (q + me) % 3 values 100·q + 10·me + i
      const want: number[] = [];
      const counts: number[] = [];
      for (let q = 0; q < P; q++) {
        counts.push((q + me) % 3);
        for (let i = 0; i < (q + me) % 3; i++) want.push(100 * q + 10 * me + i);
      }
      expect(x.alltoallv).toEqual(want);
      expect(x.alltoallvCounts).toEqual(counts);
      expect(x.broadcast).toEqual([7, 8, 9]);
      expect(x.badCounts).toMatch(/sendCounts has 4 entries, the world has 3 ranks/);
      expect((x.traffic as { calls: number }).calls).toBeGreaterThan(0);
    }
  }, 120_000);
});
