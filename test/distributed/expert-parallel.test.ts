// expert-parallel.test.ts: routed experts split across 2 ranks (each loads only its experts'
// base weights) give the single-process step's loss and LoRA gradients, with and without
// activation checkpointing; a 2-rank expert-parallel `v4tune train` ends with the 1-rank adapter,
// each rank holding only its routed experts' LoRA factors and reading only its own train rows
// (the per-step distributed log says so), and logs placement, tokens and bytes moved per step;
// with 4 ranks (two expert-parallel groups) and resumed from a 1-process checkpoint, likewise.
//
// Tolerances: the step's loss to 1e-6 relative; every gradient to 1e-5 of the largest gradient
// of its kind (routed experts / the rest). The two computations differ only in the order of
// float32 sums (an expert's output added per token after the alltoallv instead of inside the
// kernel; dy scaled by the micro-batch weight before the owner's backward, unscaled after).
// Measured here: loss 7e-9 relative, gradients 5e-7 of their scale. The trained adapter: max |Δ|
// ≤ 1e-3 after 3 AdamW steps at lr 0.01, as data-parallel.test.ts (only the order of float32 sums
// differs, which AdamW's g/√v can amplify up to about lr where a gradient is near 0). Measured
// here: 6.9e-4 (max |factor| 0.19); each rank held 36,352 of the 54,784 LoRA values and read 2
// rows (540 bytes of the 8,754-byte train shard) per step. With 4 ranks (expert parallel ×2,
// two groups): the adapter 6.9e-4 after 2 steps, the first step's loss 8e-10 and gradient norm
// 1.3e-8 relative (tolerances 1e-5), the eval loss 4e-8 relative (tolerance 1e-4). A 1-process
// checkpoint resumed by 2 ranks: the adapter 2.8e-7 from the straight 1-process run's (tolerance 1e-3).
import { cpSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDataset } from '../../src/data/dataset.js';
import { routedExpertOf } from '../../src/distributed/shard.js';
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

  it('`mpirun -np 2 v4tune train` with expert parallel ×2 ends with the 1-rank adapter; each rank holds only its experts\' factors and reads only its rows', async () => {
    // (a constant schedule and a checkpoint every step: the resume test below continues the 1-rank run from its step 2)
    const train = 'steps: 3, batch_rows: 2, grad_accum: 2, schedule: constant, checkpoint_every: 1';
    // 3 eval rows: rank 1 evaluates one and runs it again, uncounted, beside rank 0's second
    const one = await v4tune(1, ['train', writeRecipe(fx, 'one.yaml', 'out-one', train), '--eval-rows', '3'], { cwd: fx.dir });
    expect(one.code, one.stderr).toBe(0);
    const two = await v4tune(2, ['train', writeRecipe(fx, 'ep.yaml', 'out-ep', train, 'distributed: { expert_parallel: 2 }'), '--eval-rows', '3'], { cwd: fx.dir });
    expect(two.code, two.stderr).toBe(0);
    expect(two.stdout).toContain('expert parallel ×2: 8 routed experts per layer: 0–3 on rank 0, 4–7 on rank 1');
    const a = readSafetensors(join(fx.dir, 'out-one', 'adapter', 'adapter_model.safetensors'));
    const b = readSafetensors(join(fx.dir, 'out-ep', 'adapter', 'adapter_model.safetensors'));
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort()); // rank 0 wrote the complete adapter
    const { diff, scale } = maxDiff(a, b);
    expect(scale).toBeGreaterThan(0.01);
    expect(diff).toBeLessThanOrEqual(1e-3);
    // the adapter's values by kind, from the 1-rank run's last checkpoint (the official layout: one module per routed expert)
    let replicated = 0;
    let routed = 0;
    for (const [k, v] of readSafetensors(join(fx.dir, 'out-one', 'checkpoints', 'step-3', 'adapter', 'adapter_model.safetensors'))) {
      if (routedExpertOf(k.replace(/^base_model\.model\./, '')) !== null) routed += v.length;
      else replicated += v.length;
    }
    expect(routed).toBeGreaterThan(0);
    const trainable = (out: string) => (JSON.parse(readFileSync(join(fx.dir, out, 'train.json'), 'utf8')) as { trainable_parameters: number }).trainable_parameters;
    expect(trainable('out-ep')).toBe(replicated + routed);
    expect(trainable('out-one')).toBe(replicated + routed);
    expect(two.stdout).toContain(`${(replicated + routed).toLocaleString('en-US')} trainable parameters`);
    const evalOf = (out: string) => (JSON.parse(readFileSync(join(fx.dir, out, 'train.json'), 'utf8')) as { eval_after: { loss: number; tokens: number; rows: number } }).eval_after;
    const [e1, e2] = [evalOf('out-one'), evalOf('out-ep')];
    expect(e2.rows).toBe(3);
    expect(e2.tokens).toBe(e1.tokens);
    expect(Math.abs(e2.loss - e1.loss) / e1.loss).toBeLessThan(1e-4);
    const log = readFileSync(join(fx.dir, 'out-ep', 'distributed-log.jsonl'), 'utf8').trim().split('\n')
      .map((l) => JSON.parse(l) as Record<string, number> & { placement: string; lora_values_held: number[]; rows_read: number[]; bytes_read: number[] });
    expect(log).toHaveLength(3);
    const shardBytes = openDataset(join(fx.dir, 'data')).manifest.splits.train.shards.reduce((n, f) => n + statSync(join(fx.dir, 'data', f)).size, 0);
    for (const s of log) {
      // each rank held the replicated modules and its own 4 of the 8 routed experts, and read the
      // 2 rows of its one micro-batch (of the step's 4) from the shards, a small part of their bytes
      expect(s.lora_values_held).toEqual([replicated + routed / 2, replicated + routed / 2]);
      expect(s.rows_read).toEqual([2, 2]);
      for (const bytes of s.bytes_read) {
        expect(bytes).toBeGreaterThan(0);
        expect(bytes).toBeLessThan(shardBytes / 10);
      }
      expect(s.placement).toBe('8 routed experts per layer: 0–3 on rank 0, 4–7 on rank 1');
      expect(s.alltoallv_bytes).toBeGreaterThan(0);
      expect(s.pairs_sent).toBeGreaterThan(0);
      // every (token, expert) pair of the step is routed once per MoE layer: 2 per token (k = 2)
      expect((s.pairs_sent! + s.pairs_kept!) % (2 * 128)).toBe(0);
    }
  }, 300_000);

  it('4 ranks with expert parallel ×2 (two groups: the experts\' gradients summed across them) end with the 1-rank adapter', async () => {
    // one micro-batch of 1 row per rank; the 1-rank run has the same global batch
    const train = 'steps: 2, batch_rows: 1, grad_accum: 4';
    const one = await v4tune(1, ['train', writeRecipe(fx, 'one4.yaml', 'out-one4', train), '--eval-rows', '2'], { cwd: fx.dir });
    expect(one.code, one.stderr).toBe(0);
    const four = await v4tune(4, ['train', writeRecipe(fx, 'ep4.yaml', 'out-ep4', train, 'distributed: { expert_parallel: 2 }'), '--eval-rows', '2'], { cwd: fx.dir });
    expect(four.code, four.stderr).toBe(0);
    const a = readSafetensors(join(fx.dir, 'out-one4', 'adapter', 'adapter_model.safetensors'));
    const b = readSafetensors(join(fx.dir, 'out-ep4', 'adapter', 'adapter_model.safetensors'));
    const { diff, scale } = maxDiff(a, b);
    expect(scale).toBeGreaterThan(0.01);
    expect(diff).toBeLessThanOrEqual(1e-3);
    const log = readFileSync(join(fx.dir, 'out-ep4', 'distributed-log.jsonl'), 'utf8').trim().split('\n')
      .map((l) => JSON.parse(l) as { placement: string; lora_values_held: number[]; rows_read: number[]; allreduce_bytes: number });
    expect(log).toHaveLength(2);
    for (const s of log) {
      expect(s.placement).toBe('8 routed experts per layer: 0–3 on rank 0 (+2·g), 4–7 on rank 1 (+2·g)');
      expect(s.lora_values_held).toEqual([36_352, 36_352, 36_352, 36_352]);
      expect(s.rows_read).toEqual([1, 1, 1, 1]);
    }
    // AdamW's update hardly depends on the gradient's scale, so the adapter alone would not show an
    // expert gradient summed twice or from one group only; the first step's gradient norm (the
    // experts' part after the cross-group sum) and loss do, and the eval (every group's experts
    // serve its own ranks' tokens) shows the second group's factors stayed equal to the first's
    const stepOf = (out: string) => JSON.parse(readFileSync(join(fx.dir, out, 'train-log.jsonl'), 'utf8').trim().split('\n')[1]!) as { step: number; loss: number; grad_norm: number };
    const [s1, s4] = [stepOf('out-one4'), stepOf('out-ep4')];
    expect(s4.step).toBe(1);
    expect(Math.abs(s4.loss - s1.loss) / s1.loss).toBeLessThan(1e-5);
    expect(Math.abs(s4.grad_norm - s1.grad_norm) / s1.grad_norm).toBeLessThan(1e-5);
    const evalOf = (out: string) => (JSON.parse(readFileSync(join(fx.dir, out, 'train.json'), 'utf8')) as { eval_after: { loss: number; tokens: number; rows: number } }).eval_after;
    const [e1, e4] = [evalOf('out-one4'), evalOf('out-ep4')];
    expect(e4.rows).toBe(2);
    expect(e4.tokens).toBe(e1.tokens);
    expect(Math.abs(e4.loss - e1.loss) / e1.loss).toBeLessThan(1e-4);
  }, 300_000);

  it('`mpirun -np 2 v4tune train --resume` with expert parallel ×2 continues a 1-process checkpoint, each rank reading only its experts\' part', async () => {
    // the 1-rank run of the test above, cut back to its step-2 checkpoint
    const out = join(fx.dir, 'out-resume');
    cpSync(join(fx.dir, 'out-one'), out, { recursive: true });
    for (const p of ['checkpoints/step-3', 'adapter', 'train.json']) rmSync(join(out, p), { recursive: true, force: true });
    const train = 'steps: 3, batch_rows: 2, grad_accum: 2, schedule: constant, checkpoint_every: 1';
    const two = await v4tune(2, ['train', writeRecipe(fx, 'resume-ep.yaml', 'out-resume', train, 'distributed: { expert_parallel: 2 }'), '--resume', '--eval-rows', '3'], { cwd: fx.dir });
    expect(two.code, two.stderr).toBe(0);
    expect(two.stdout).toMatch(/resuming from .*step-2/);
    const a = readSafetensors(join(fx.dir, 'out-one', 'adapter', 'adapter_model.safetensors'));
    const b = readSafetensors(join(out, 'adapter', 'adapter_model.safetensors'));
    const { diff, scale } = maxDiff(a, b);
    expect(scale).toBeGreaterThan(0.01);
    expect(diff).toBeLessThanOrEqual(1e-3);
    const log = readFileSync(join(out, 'distributed-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; lora_values_held: number[] });
    expect(log.map((l) => l.step)).toEqual([3]);
    expect(log[0]!.lora_values_held).toEqual([36_352, 36_352]);
  }, 300_000);
});
