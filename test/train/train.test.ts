// Training on the tiny preset (a generated pump-log corpus, seq_len 32): gradient accumulation
// equals one packed step over the same tokens, the loss goes down, a saved adapter reloads to the
// same logits, activation checkpointing changes no number, Ctrl-C stops with a checkpoint and
// `--resume` ends bit-identical to a run never stopped (with LoRA dropout too: every micro-batch's
// masks come from (seed, step, micro-batch)), and every setting this version cannot honour is
// refused by name.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { trainRecipe, trainSettings } from '../../src/stages/train.js';
import { cli } from '../cli/capture.js';
import { openDataset, type DatasetRow } from '../../src/data/dataset.js';
import { InputError, V4tuneError } from '../../src/errors.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { loadAdapter, saveAdapter } from '../../src/lora/peft.js';
import { loadModel } from '../../src/model/load.js';
import type { V4Model } from '../../src/model/v4/model.js';
import { stepGradients, Trainer } from '../../src/train/trainer.js';
import { fixtureRecipe, makeFixture, quietContext, type Fixture } from './helpers.js';
import { relErr } from '../ref64.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

let fx: Fixture;
let model: V4Model;
let trainRows: DatasetRow[];
let evalRows: DatasetRow[];

const addon = tryLoadAddon();
const threadsBefore = addon?.info().threads ?? 0;

beforeAll(async () => {
  addon?.setThreads(1);
  fx = await makeFixture();
  model = await loadModel(fx.modelDir, { backend: 'auto', note: () => {} });
  const ds = openDataset(fx.dataDir);
  trainRows = [...ds.rows('train')];
  evalRows = [...ds.rows('eval')];
});
afterAll(() => {
  addon?.setThreads(threadsBefore);
  model?.dispose();
  fx?.cleanup();
});

function seededAdapter() {
  const adapter = createAdapter(model, { r: 4, alpha: 8, seed: 1 });
  // B ≠ 0 so that every factor, A included, gets a gradient
  let s = 7;
  for (const l of adapter.layers.values()) for (let i = 0; i < l.B.length; i++) l.B[i] = (((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5) * 0.1;
  return adapter;
}

describe('a training step', () => {
  it('2 micro-batches of 1 row give the gradient of 1 micro-batch over both rows (mean over all counted tokens)', async () => {
    const adapter = seededAdapter();
    const r1 = trainRows[0]!;
    // the second row counts far fewer tokens, so a plain mean of the two micro-batch means is wrong
    const r2: DatasetRow = { ...trainRows[1]!, loss_mask: trainRows[1]!.loss_mask.map((v, i) => (i < 24 ? 0 : v)) };
    const accum = await stepGradients(model, adapter, [[r1], [r2]]);
    const packed = await stepGradients(model, adapter, [[r1, r2]]);
    expect(accum.count).toBe(packed.count);
    expect(Math.abs(accum.lossSum - packed.lossSum) / packed.lossSum).toBeLessThan(1e-5);
    const g1 = await model.lossAndGrads(r1.input_ids, r1.loss_mask, { segments: r1.segments, adapter });
    const g2 = await model.lossAndGrads(r2.input_ids, r2.loss_mask, { segments: r2.segments, adapter });
    expect(g1.count).toBeGreaterThan(3 * g2.count);
    let worst = 0;
    let naiveBest = Infinity;
    for (const [k, g] of packed.grads) {
      if (globalMax(g) === 0) continue;
      worst = Math.max(worst, relErr(accum.grads.get(k)!, g));
      const naive = g1.grads.get(k)!.map((x, i) => 0.5 * x + 0.5 * g2.grads.get(k)![i]!);
      naiveBest = Math.min(naiveBest, relErr(naive, g));
    }
    // float32 sums in another order through the whole model: 1e-4 of each tensor's largest entry
    expect(worst).toBeLessThan(1e-4);
    // the equal-weight mean of micro-batch means misses by far more on every tensor
    expect(naiveBest).toBeGreaterThan(1e-2);
  });

  it('the loss goes down: 6 steps lower the loss on the rows trained on by more than 1 nat', async () => {
    const adapter = createAdapter(model, { r: 4, alpha: 8, seed: 0 });
    const rows = trainRows.slice(0, 4);
    const t = new Trainer(model, adapter, rows, {
      steps: 6, batchRows: 1, gradAccum: 1, lr: 1e-2, schedule: 'constant', warmupSteps: 0, weightDecay: 0, maxGradNorm: 1, seed: 0,
    });
    const before = await t.evaluate(rows);
    const recs = [];
    for (let i = 0; i < 6; i++) recs.push(await t.step());
    const after = await t.evaluate(rows);
    // the untrained adapter is the base (B = 0): about ln(vocab) ≈ 11.8 nats
    expect(after.loss).toBeLessThan(before.loss - 1);
    expect(recs.every((r) => r.loss !== null && Number.isFinite(r.gradNorm) && r.gradNorm > 0)).toBe(true);
    expect(t.state()).toMatchObject({ step: 6, order: { epoch: 1, cursor: 2 }, tokensSeen: 6 * 32 });

    // a saved adapter reloads to the very same logits (F32 round trip), which differ from the base's
    const dir = join(fx.dir, 'saved-adapter');
    await saveAdapter(adapter, dir);
    const back = await loadAdapter(dir);
    const ids = rows[0]!.input_ids;
    const a = await model.logits(ids, { segments: rows[0]!.segments, adapter });
    const b = await model.logits(ids, { segments: rows[0]!.segments, adapter: back });
    const base = await model.logits(ids, { segments: rows[0]!.segments });
    expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
    expect(relErr(base, a)).toBeGreaterThan(1e-2);
  });
});

describe('activation checkpointing', () => {
  it('a step with train.activation_checkpointing makes the same update, bit for bit', async () => {
    const settings = { steps: 1, batchRows: 2, gradAccum: 1, lr: 1e-2, schedule: 'constant' as const, warmupSteps: 0, weightDecay: 0, maxGradNorm: 1, seed: 0 };
    const plain = new Trainer(model, seededAdapter(), trainRows, settings);
    const ckpt = new Trainer(model, seededAdapter(), trainRows, { ...settings, activationCheckpointing: true });
    const a = await plain.step();
    const b = await ckpt.step();
    expect(b.loss).toBe(a.loss);
    expect(b.gradNorm).toBe(a.gradNorm);
    for (const [k, p] of plain.params) expect(Buffer.from(ckpt.params.get(k)!.buffer).equals(Buffer.from(p.buffer))).toBe(true);
  });

  it('train.attention_chunk reaches the model: attention runs in chunks of 8 rows, with the same gradients (1e-5)', async () => {
    const settings = { steps: 1, batchRows: 2, gradAccum: 1, lr: 1e-2, schedule: 'constant' as const, warmupSteps: 0, weightDecay: 0, maxGradNorm: 1, seed: 0 };
    expect(trainSettings(fixtureRecipe(fx, join(fx.dir, 'unused'), { attention_chunk: 8 }), 10).attentionChunk).toBe(8);
    const spy = vi.spyOn(model.backend, 'attentionForward');
    await new Trainer(model, seededAdapter(), trainRows, { ...settings, activationCheckpointing: true, attentionChunk: 8 }).step();
    expect(spy.mock.calls.length).toBeGreaterThan(0);
    expect(Math.max(...spy.mock.calls.map((c) => c[4]))).toBe(8);
    spy.mockRestore();
    // the gradients themselves (one AdamW step maps each to about ±lr, which hides their size)
    const micro = [trainRows.slice(0, 2)];
    const adapter = seededAdapter();
    const a = await stepGradients(model, adapter, micro, true);
    const b = await stepGradients(model, adapter, micro, true, () => 0, 0, 8);
    expect(Math.abs(b.lossSum - a.lossSum)).toBeLessThanOrEqual(1e-6 * a.lossSum);
    for (const [k, g] of a.grads) expect(relErr(b.grads.get(k)!, g), k).toBeLessThan(1e-5);
  });
});

function globalMax(g: Float32Array): number {
  let m = 0;
  for (const x of g) m = Math.max(m, Math.abs(x));
  return m;
}

describe('v4tune train: checkpoints, Ctrl-C and resume', () => {
  const train = { steps: 4, batch_rows: 2, grad_accum: 2, checkpoint_every: 3, eval_every: 2, lr: 5e-3, warmup_steps: 1, weight_decay: 0.01 };
  const logSteps = (out: string) => readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
  const bytes = (p: string) => readFileSync(p);

  it('stops on SIGINT after the step with a checkpoint (exit 130), and --resume ends bit-identical to a straight run', async () => {
    const straight = join(fx.dir, 'straight');
    const s = await trainRecipe(fixtureRecipe(fx, straight, train), quietContext(), { evalRows: 2 });
    expect(s).toMatchObject({ ok: true, step: 4, interrupted: false });
    expect(readdirSync(join(straight, 'checkpoints')).sort()).toEqual(['step-3', 'step-4']);
    // 4 steps × 4 rows cross into the second epoch of the train split
    expect(trainRows.length).toBeLessThan(16);
    expect(JSON.parse(readFileSync(join(straight, 'checkpoints/step-4/state.json'), 'utf8')).data.epoch).toBe(1);

    const stopped = join(fx.dir, 'stopped');
    const listeners = process.listenerCount('SIGINT');
    const err = await trainRecipe(fixtureRecipe(fx, stopped, train), quietContext((done) => { if (done === 2) process.emit('SIGINT'); }), { evalRows: 2 })
      .then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(V4tuneError);
    expect((err as V4tuneError).exitCode).toBe(130);
    expect((err as Error).message).toContain('--resume');
    expect(readdirSync(join(stopped, 'checkpoints')).sort()).toEqual(['step-2']);
    expect(existsSync(join(stopped, 'adapter'))).toBe(false);
    expect(readdirSync(stopped).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    expect(JSON.parse(readFileSync(join(stopped, 'train.json'), 'utf8'))).toMatchObject({ ok: false, interrupted: true, step: 2 });
    expect(process.listenerCount('SIGINT')).toBe(listeners);

    // a fresh run refuses to write over the stopped one's checkpoints
    await expect(trainRecipe(fixtureRecipe(fx, stopped, train), quietContext())).rejects.toThrow(/--resume to continue it or --overwrite/);
    // a resume under another setting is refused, naming it
    await expect(trainRecipe(fixtureRecipe(fx, stopped, { ...train, lr: 1e-3 }), quietContext(), { resume: true })).rejects.toThrow(/train\.lr is 0\.001 .* made with 0\.005/);

    const r = await trainRecipe(fixtureRecipe(fx, stopped, train), quietContext(), { resume: true, evalRows: 2 });
    expect(r).toMatchObject({ ok: true, step: 4, resumed_from: 2 });
    const st = 'adapter/adapter_model.safetensors';
    expect(bytes(join(stopped, st)).equals(bytes(join(straight, st)))).toBe(true);
    for (const f of ['optimizer.safetensors', 'adapter/adapter_model.safetensors']) {
      expect(bytes(join(stopped, 'checkpoints/step-4', f)).equals(bytes(join(straight, 'checkpoints/step-4', f)))).toBe(true);
    }
    // the log reads as one run: steps 0…4 once each, with the straight run's numbers
    const a = logSteps(straight);
    const b = logSteps(stopped);
    expect(b.map((l) => l.step)).toEqual([0, 1, 2, 3, 4]);
    expect(b.map((l) => [l.loss, l.lr, l.grad_norm, l.eval_loss])).toEqual(a.map((l) => [l.loss, l.lr, l.grad_norm, l.eval_loss]));
    expect(a[0]!.eval_loss).toBeGreaterThan(a[4]!.eval_loss!);
    expect(Object.keys(a[2]!)).toEqual(expect.arrayContaining(['step', 'loss', 'lr', 'grad_norm', 'tokens', 'loss_tokens', 'tokens_per_s', 'eval_loss']));
  });

  it('--resume without a checkpoint; --overwrite starts over; auto (for `run`) reuses or starts over', async () => {
    const out = join(fx.dir, 'fresh');
    await expect(trainRecipe(fixtureRecipe(fx, out, { steps: 1 }), quietContext(), { resume: true })).rejects.toThrow(/no checkpoint in .* to resume from/);
    await trainRecipe(fixtureRecipe(fx, out, { steps: 2, checkpoint_every: 1 }), quietContext(), { evalRows: 1 });
    const r = await trainRecipe(fixtureRecipe(fx, out, { steps: 1 }), quietContext(), { overwrite: true, evalRows: 1 });
    expect(r).toMatchObject({ ok: true, reused: false, step: 1 });
    expect(readdirSync(join(out, 'checkpoints'))).toEqual(['step-1']);

    // `run`'s mode: a finished run with unchanged settings is reused, a changed setting starts over
    const same = await trainRecipe(fixtureRecipe(fx, out, { steps: 1 }), quietContext(), { auto: true, evalRows: 1 });
    expect(same).toMatchObject({ ok: true, reused: true, step: 1 });
    const ctx = quietContext();
    const changed = await trainRecipe(fixtureRecipe(fx, out, { steps: 1, lr: 2e-2 }), ctx, { auto: true, evalRows: 1 });
    expect(changed).toMatchObject({ ok: true, reused: false, step: 1 });
    expect(ctx.lines.join('\n')).toMatch(/train\.lr is 0\.02, the run in .* was made with 0\.01: starting over/);
  });
});

describe('v4tune train with lora.dropout', () => {
  const train = { steps: 3, batch_rows: 1, grad_accum: 2, checkpoint_every: 1, eval_every: 0, lr: 5e-3, warmup_steps: 0 };
  const adapterBytes = (out: string) => readFileSync(join(out, 'adapter/adapter_model.safetensors'));

  it('trains with lora.dropout 0.1 (recorded in the adapter config), and --resume ends bit-identical to a straight run', async () => {
    const straight = join(fx.dir, 'dropout-straight');
    const s = await trainRecipe(fixtureRecipe(fx, straight, train, { dropout: 0.1 }), quietContext(), { evalRows: 1 });
    expect(s).toMatchObject({ ok: true, step: 3 });
    // the transformers layout (PEFT's target_parameters has no dropout) records it in its v4tune block
    expect(JSON.parse(readFileSync(join(straight, 'adapter/adapter_config.json'), 'utf8')).v4tune.options.lora_dropout).toBe(0.1);

    // dropout changes the update (dB is taken against the masked input): a run without it ends elsewhere
    const plain = join(fx.dir, 'dropout-none');
    await trainRecipe(fixtureRecipe(fx, plain, train), quietContext(), { evalRows: 1 });
    expect(adapterBytes(plain).equals(adapterBytes(straight))).toBe(false);

    const stopped = join(fx.dir, 'dropout-stopped');
    const err = await trainRecipe(fixtureRecipe(fx, stopped, train, { dropout: 0.1 }), quietContext((done) => { if (done === 1) process.emit('SIGINT'); }), { evalRows: 1 })
      .then(() => null, (e: unknown) => e);
    expect((err as V4tuneError).exitCode).toBe(130);
    expect(readdirSync(join(stopped, 'checkpoints'))).toEqual(['step-1']);
    const r = await trainRecipe(fixtureRecipe(fx, stopped, train, { dropout: 0.1 }), quietContext(), { resume: true, evalRows: 1 });
    expect(r).toMatchObject({ ok: true, step: 3, resumed_from: 1 });
    expect(adapterBytes(stopped).equals(adapterBytes(straight))).toBe(true);
  });
});

describe('v4tune train: what it refuses', () => {
  const refuse = (train: Record<string, unknown>, lora: Record<string, unknown>, re: RegExp) =>
    expect(trainRecipe(fixtureRecipe(fx, join(fx.dir, 'refused'), train, lora), quietContext())).rejects.toThrow(re);

  it('settings this version cannot honour, each named (never silently ignored)', async () => {
    await refuse({}, { experts: 'profiled' }, /lora\.experts: profiled needs .*expert-profile\.json \(run `v4tune profile-experts /);
    await refuse({}, { experts_per_layer: 2 }, /lora\.experts_per_layer only applies/);
    await refuse({ backend: 'tfjs', precision: 'bf16' }, {}, /train\.precision: bf16 needs the native backend/);
    expect(existsSync(join(fx.dir, 'refused'))).toBe(false);
  });

  it('a dataset that is not prepared, with the command to run', async () => {
    const recipe = fixtureRecipe(fx, join(fx.dir, 'nodata'));
    const e = await trainRecipe({ ...recipe, data: { ...recipe.data, output: join(fx.dir, 'nodata', 'data') } }, quietContext()).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect((e as Error).message).toMatch(/dataset .* is not prepared \(run `v4tune prepare .*recipe\.yaml` or `v4tune run/);
  });

  it('the verb: exit 2 with one line on bad input, the summary with --json', async () => {
    const recipe = (lora: Record<string, unknown>) => {
      const r = fixtureRecipe(fx, join(fx.dir, 'verb'), { steps: 1 }, lora);
      const file = join(fx.dir, `verb-${Object.keys(lora).length}.yaml`);
      writeFileSync(file, JSON.stringify({ model: { path: r.model.path }, data: { sources: r.data.sources, seq_len: 32, output: r.data.output }, lora: { r: 4, ...lora }, train: { steps: 1, eval_every: 0 }, output: r.output }));
      return file;
    };
    const bad = await cli('train', recipe({ experts_per_layer: 2 }));
    expect(bad.code).toBe(2);
    expect(bad.err.trim().split('\n')).toHaveLength(1);
    expect(bad.err).toContain('lora.experts_per_layer');
    const ok = await cli('--json', 'train', recipe({}), '--eval-rows', '1');
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.out)).toMatchObject({ ok: true, step: 1, steps: 1, eval_rows: 1 });
  });
});
