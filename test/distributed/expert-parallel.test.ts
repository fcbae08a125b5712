// expert-parallel.test.ts: routed experts split across 2 ranks (each loads only its experts'
// base weights) give the single-process step's loss and LoRA gradients, with and without
// activation checkpointing; a 2-rank expert-parallel training run ends with the 1-rank adapter
// and logs placement, tokens and bytes moved per step.
//
// Tolerances: the step's loss to 1e-6 relative; every gradient to 1e-5 of the largest gradient
// of its kind (routed experts / the rest). The two computations differ only in the order of
// float32 sums (an expert's output added per token after the alltoallv instead of inside the
// kernel; dy scaled by the micro-batch weight before the owner's backward, unscaled after).
// Measured here: loss 7e-9 relative, gradients 5e-7 of their scale.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeFixture, maxDiff, mpirunArgs, readSafetensors, ROOT, run, skipWithoutMpi, v4tune, writeRecipe, type Fixture } from './helpers.js';

interface Check {
  rank: number;
  placement: string;
  local: number[];
  held: number[];
  loss: { want: number; got: number; count: [number, number]; tokens: [number, number] };
  expert: { diff: number; scale: number };
  other: { diff: number; scale: number };
  keys: [number, number];
  stats: { pairsSent: number; pairsKept: number; pairsComputed: number };
}

describe.skipIf(skipWithoutMpi())('expert parallel under mpirun -np 2', () => {
  let fx: Fixture;
  beforeAll(async () => { fx = await makeFixture(); });
  afterAll(() => fx?.cleanup());

  for (const mode of ['plain', 'checkpointing'] as const) {
    it(`one step gives the single-process loss and LoRA gradients (${mode === 'plain' ? 'activations kept' : 'activation checkpointing'})`, async () => {
      const r = await run('mpirun', [...mpirunArgs(2), process.execPath, 'test/distributed/expert-check.mjs', fx.dir, mode], { cwd: ROOT, timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
      const ranks = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Check).sort((a, b) => a.rank - b.rank);
      expect(ranks).toHaveLength(2);
      // the tiny preset has 8 routed experts per layer: 4 on each rank, and only those are loaded
      expect(ranks.map((x) => x.local)).toEqual([[0, 1, 2, 3], [4, 5, 6, 7]]);
      expect(ranks.map((x) => x.held)).toEqual([[0, 1, 2, 3], [4, 5, 6, 7]]);
      expect(ranks[0]!.placement).toBe('8 routed experts per layer: 0–3 on rank 0, 4–7 on rank 1');
      for (const x of ranks) {
        expect(x.loss.count[1]).toBe(x.loss.count[0]);
        expect(x.loss.tokens[1]).toBe(x.loss.tokens[0]);
        expect(Math.abs(x.loss.got - x.loss.want) / x.loss.want).toBeLessThan(1e-6);
        expect(x.keys[1]).toBe(x.keys[0]);
        expect(x.expert.scale).toBeGreaterThan(1e-3);
        expect(x.other.scale).toBeGreaterThan(1e-3);
        expect(x.expert.diff).toBeLessThanOrEqual(1e-5 * x.expert.scale);
        expect(x.other.diff).toBeLessThanOrEqual(1e-5 * x.other.scale);
        // tokens really travelled: some pairs went to the other rank, some stayed
        expect(x.stats.pairsSent).toBeGreaterThan(0);
        expect(x.stats.pairsKept).toBeGreaterThan(0);
      }
    }, 180_000);
  }

  it('a 2-rank expert-parallel run of 3 steps ends with the 1-rank adapter and logs placement, tokens and bytes per step', async () => {
    const train = 'steps: 3, batch_rows: 2, grad_accum: 2';
    // 3 eval rows: rank 1 evaluates one and runs it again, uncounted, beside rank 0's second
    const one = await v4tune(1, ['train', writeRecipe(fx, 'one.yaml', 'out-one', train), '--eval-rows', '3'], { cwd: fx.dir });
    expect(one.code, one.stderr).toBe(0);
    const two = await v4tune(2, ['train', writeRecipe(fx, 'ep.yaml', 'out-ep', train, 'distributed: { expert_parallel: 2 }'), '--eval-rows', '3'], { cwd: fx.dir });
    expect(two.code, two.stderr).toBe(0);
    expect(two.stdout).toContain('expert parallel ×2: 8 routed experts per layer: 0–3 on rank 0, 4–7 on rank 1');
    const a = readSafetensors(join(fx.dir, 'out-one', 'adapter', 'adapter_model.safetensors'));
    const b = readSafetensors(join(fx.dir, 'out-ep', 'adapter', 'adapter_model.safetensors'));
    expect(maxDiff(a, b).diff).toBeLessThanOrEqual(1e-3); // as data-parallel.test.ts: 3 AdamW steps at lr 0.01
    const evalOf = (out: string) => (JSON.parse(readFileSync(join(fx.dir, out, 'train.json'), 'utf8')) as { eval_after: { loss: number; tokens: number; rows: number } }).eval_after;
    const [e1, e2] = [evalOf('out-one'), evalOf('out-ep')];
    expect(e2.rows).toBe(3);
    expect(e2.tokens).toBe(e1.tokens);
    expect(Math.abs(e2.loss - e1.loss) / e1.loss).toBeLessThan(1e-4);
    const log = readFileSync(join(fx.dir, 'out-ep', 'distributed-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number> & { placement: string });
    expect(log).toHaveLength(3);
    for (const s of log) {
      expect(s.placement).toBe('8 routed experts per layer: 0–3 on rank 0, 4–7 on rank 1');
      expect(s.alltoallv_bytes).toBeGreaterThan(0);
      expect(s.pairs_sent).toBeGreaterThan(0);
      // every (token, expert) pair of the step is routed once per MoE layer: 2 per token (k = 2)
      expect((s.pairs_sent! + s.pairs_kept!) % (2 * 128)).toBe(0);
    }
  }, 300_000);
});
