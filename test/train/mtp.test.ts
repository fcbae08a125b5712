// The optional MTP loss: lossAndGrads with mtpWeight w adds w · (the MTP block's mean loss on
// token t+2) — its gradient on the MTP block's LoRA matches a finite difference, the trunk's LoRA
// gradients are unchanged (the trunk's streams enter the MTP block as constants) — and
// mtpAgreement counts the MTP top-1 that equals the main head's; training with
// train.mtp_loss_weight moves the MTP LoRA (without it, it stays put) and eval reports the
// agreement before and after.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import type { Backend } from '../../src/backend/ops.js';
import { evaluate } from '../../src/train/evaluate.js';
import { trainRecipe } from '../../src/stages/train.js';
import { openDataset, type DatasetRow } from '../../src/data/dataset.js';
import { createAdapter, type Adapter } from '../../src/lora/adapter.js';
import { loadAdapter } from '../../src/lora/peft.js';
import { loadModel } from '../../src/model/load.js';
import type { V4Model } from '../../src/model/v4/model.js';
import { fixtureRecipe, makeFixture, quietContext, type Fixture } from './helpers.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const MTP_TARGETS = ['mtp.*.attn.wq_a', 'mtp.*.attn.wo_b', 'mtp.*.ffn.shared_experts.w2'];
let fx: Fixture;
let model: V4Model;
let row: DatasetRow;
const addon = tryLoadAddon();
const threadsBefore = addon?.info().threads ?? 0;
beforeAll(async () => {
  addon?.setThreads(1);
  fx = await makeFixture(20); // 20 distinct documents: the hash-drawn eval split is not empty
  model = await loadModel(fx.modelDir, { backend: 'auto', note: () => {} });
  row = [...openDataset(fx.dataDir).rows('train')][0]!;
});
afterAll(() => {
  addon?.setThreads(threadsBefore);
  model?.dispose();
  fx?.cleanup();
});

function adapterWithB(): Adapter {
  const a = createAdapter(model, { r: 2, alpha: 4, seed: 3, targets: ['attn.wq_a', ...MTP_TARGETS] });
  let s = 5;
  for (const l of a.layers.values()) for (let i = 0; i < l.B.length; i++) l.B[i] = (((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5) * 0.1;
  return a;
}

/** loss + w · MTP loss in float64 from the forward passes alone (model.loss, model.mtpLogits). */
async function objective(a: Adapter, w: number): Promise<number> {
  const main = await model.loss(row.input_ids, row.loss_mask, { segments: row.segments, adapter: a });
  const { logits, rows } = await model.mtpLogits(row.input_ids, { segments: row.segments, adapter: a });
  const V = model.config.vocab_size;
  const segOf: number[] = [];
  row.segments.forEach((len, s) => { for (let i = 0; i < len; i++) segOf.push(s); });
  let sum = 0;
  let n = 0;
  rows.forEach((t, i) => {
    if (t + 2 >= row.input_ids.length || segOf[t + 2] !== segOf[t] || row.loss_mask[t + 2] !== 1) return;
    let mx = -Infinity;
    for (let v = 0; v < V; v++) mx = Math.max(mx, logits[i * V + v]!);
    let z = 0;
    for (let v = 0; v < V; v++) z += Math.exp(logits[i * V + v]! - mx);
    sum += Math.log(z) + mx - logits[i * V + row.input_ids[t + 2]!]!;
    n++;
  });
  return main.loss + (w * sum) / n;
}

describe('MTP loss', () => {
  it('adds w · the MTP loss: its gradient on the MTP LoRA matches a finite difference; the trunk\'s gradients do not change', async () => {
    const a = adapterWithB();
    const opts = { segments: row.segments, adapter: a };
    const g0 = await model.lossAndGrads(row.input_ids, row.loss_mask, opts);
    const g1 = await model.lossAndGrads(row.input_ids, row.loss_mask, { ...opts, mtpWeight: 0.5 });
    expect(g0.mtp).toBeUndefined();
    expect(g1.mtp!.count).toBeGreaterThan(0);
    expect(g1.loss).toBe(g0.loss);
    for (const [k, g] of g0.grads) {
      if (k.includes('.mtp.')) expect(Math.max(...g.map(Math.abs)), k).toBe(0);
      else expect(g1.grads.get(k), k).toEqual(g);
    }
    // d(objective)/dB on a few MTP coordinates, central differences
    const module = 'mtp.0.attn.wq_a';
    const B = a.factors(module)!.B;
    const key = [...g1.grads.keys()].find((k) => k.includes(module) && k.includes('lora_B'))!;
    const grad = g1.grads.get(key)!;
    const picks = [...grad.keys()].sort((x, y) => Math.abs(grad[y]!) - Math.abs(grad[x]!)).slice(0, 3);
    for (const i of picks) {
      const h = 1e-2;
      const b0 = B[i]!;
      B[i] = b0 + h;
      const up = await objective(a, 0.5);
      B[i] = b0 - h;
      const down = await objective(a, 0.5);
      B[i] = b0;
      const fd = (up - down) / (2 * h);
      expect(Math.abs(fd - grad[i]!) / Math.abs(grad[i]!)).toBeLessThan(0.05);
    }
  });

  it('mtpAgreement counts the pairs whose MTP top-1 equals the main head\'s top-1 at t+1', async () => {
    const a = adapterWithB();
    const got = await model.mtpAgreement(row.input_ids, { segments: row.segments, adapter: a });
    const V = model.config.vocab_size;
    const main = await model.logits(row.input_ids, { segments: row.segments, adapter: a });
    const { logits, rows } = await model.mtpLogits(row.input_ids, { segments: row.segments, adapter: a });
    const top = (l: Float32Array, r: number) => { let b = 0; for (let v = 1; v < V; v++) if (l[r * V + v]! > l[r * V + b]!) b = v; return b; };
    const segOf: number[] = [];
    row.segments.forEach((len, s) => { for (let i = 0; i < len; i++) segOf.push(s); });
    let agree = 0;
    let pairs = 0;
    rows.forEach((t, i) => {
      if (t + 2 >= row.input_ids.length || segOf[t + 2] !== segOf[t]) return;
      pairs++;
      if (top(logits, i) === top(main, t + 1)) agree++;
    });
    expect(got).toEqual({ agree, pairs });
    expect(pairs).toBeGreaterThan(10);
  });

  // the pairing itself, where a random model agrees nowhere: with the head's top-1 replaced by
  // its row index (main) and rows[i] + 1 (the MTP pair i of token t = rows[i]), every pair agrees
  // exactly when pair (t, t+1) is compared with the main head at t+1
  it('evalRow compares the MTP top-1 of pair (t, t+1) with the main head\'s top-1 at t+1', async () => {
    const be = (model as unknown as { backend: Backend }).backend;
    const { rows } = await model.mtpLogits(row.input_ids, { segments: row.segments });
    const T = row.input_ids.length;
    const had = Object.prototype.hasOwnProperty.call(be, 'lmHeadLossTop1');
    const own = be.lmHeadLossTop1;
    be.lmHeadLossTop1 = async (_x, _W, _t, N) => ({ lossSum: 0, count: 0, top1: Int32Array.from({ length: N }, (_, r) => (N === T ? r : rows[r]! + 1)) });
    try {
      const { agreement } = await model.evalRow(row.input_ids, row.loss_mask, { segments: row.segments, mtp: true });
      expect(agreement!.pairs).toBeGreaterThan(10);
      expect(agreement!.agree).toBe(agreement!.pairs);
    } finally {
      if (had) be.lmHeadLossTop1 = own;
      else delete (be as { lmHeadLossTop1?: unknown }).lmHeadLossTop1;
    }
  });

  it('the eval stage (v4tune eval) sums the agreement over the eval rows', async () => {
    const a = adapterWithB();
    const rows = [...openDataset(fx.dataDir).rows('eval')].slice(0, 2);
    let agree = 0;
    let pairs = 0;
    let lossSum = 0;
    let tokens = 0;
    for (const r of rows) {
      const x = await model.mtpAgreement(r.input_ids, { segments: r.segments, adapter: a });
      agree += x.agree;
      pairs += x.pairs;
      const l = await model.loss(r.input_ids, r.loss_mask, { segments: r.segments, adapter: a });
      lossSum += l.lossSum;
      tokens += l.count;
    }
    // one trunk forward a row gives both (model.evalRow; on the native backend the main head's
    // top-1 comes from the loss's pass): the same loss bits and the same agreement
    const s = await evaluate(model, fx.dataDir, { maxRows: 2, adapter: a, mtp: true });
    expect(s).toMatchObject({ rows: 2, mtpPairs: pairs, mtpAgreement: agree / pairs, loss: lossSum / tokens });
    expect((await evaluate(model, fx.dataDir, { maxRows: 2, adapter: a })).mtpAgreement).toBeUndefined();
  });

  it('train.mtp_loss_weight trains the MTP LoRA and logs its loss; eval reports MTP agreement before and after, with and without it', async () => {
    const train = { steps: 4, eval_every: 2, lr: 2e-2, warmup_steps: 0 };
    const lora = { targets: ['attn.wq_a', 'attn.wo_b', ...MTP_TARGETS] };
    const withOut = join(fx.dir, 'mtp-on');
    const on = await trainRecipe(fixtureRecipe(fx, withOut, { ...train, mtp_loss_weight: 1 }, lora), quietContext(), { evalRows: 2 });
    const offOut = join(fx.dir, 'mtp-off');
    const off = await trainRecipe(fixtureRecipe(fx, offOut, train, lora), quietContext(), { evalRows: 2 });
    for (const r of [on, off]) {
      for (const e of [r.eval_before, r.eval_after] as Array<{ mtpAgreement: number; mtpPairs: number }>) {
        expect(e.mtpPairs).toBeGreaterThan(0);
        expect(e.mtpAgreement).toBeGreaterThanOrEqual(0);
        expect(e.mtpAgreement).toBeLessThanOrEqual(1);
      }
    }
    expect(on.eval_before).toEqual(off.eval_before);
    const log = readFileSync(join(withOut, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
    const mtp = log.filter((l) => typeof l.mtp_loss === 'number');
    expect(mtp).toHaveLength(4);
    expect(log.filter((l) => 'eval_mtp_agreement' in l).map((l) => l.step)).toEqual([0, 2, 4]);
    const mtpB = async (dir: string) => {
      const a = await loadAdapter(join(dir, 'adapter'));
      return Math.max(...a.factors('mtp.0.attn.wq_a')!.B.map(Math.abs));
    };
    expect(await mtpB(offOut)).toBe(0); // no gradient reaches the MTP block without its loss
    expect(await mtpB(withOut)).toBeGreaterThan(0);
    // the refusals: no mtp. target
    await expect(trainRecipe(fixtureRecipe(fx, join(fx.dir, 'mtp-bad'), { ...train, mtp_loss_weight: 1 }), quietContext())).rejects.toThrow(/lora\.targets has no mtp\. pattern/);
  });
});
