// Whole-model properties on the reference checkpoint: determinism, packed rows behave as their
// documents alone, and FP8/FP4 weights give the logits of their dequantised BF16 copy.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Checkpoint, writeCheckpointFiles, type TensorPlan } from '../../src/model/checkpoint.js';
import { f32ToBf16Bytes } from '../../src/model/formats.js';
import { loadModel } from '../../src/model/load.js';
import type { V4Model } from '../../src/model/v4/model.js';
import { cases, FIXTURE, readI32 } from './fixture.js';

/** per-token next-token losses from logits [T, V] (float64), NaN at the last token */
function tokenLosses(logits: Float32Array, ids: Int32Array, V: number): number[] {
  const out: number[] = [];
  for (let t = 0; t < ids.length; t++) {
    if (t + 1 >= ids.length) {
      out.push(NaN);
      continue;
    }
    const row = logits.subarray(t * V, (t + 1) * V);
    let mx = -Infinity;
    for (const v of row) mx = Math.max(mx, v);
    let s = 0;
    for (const v of row) s += Math.exp(v - mx);
    out.push(mx + Math.log(s) - row[ids[t + 1]]);
  }
  return out;
}

describe('V4 model on the fixture checkpoint (tfjs)', { timeout: 60_000 }, () => {
  let model: V4Model;
  const V = 1000;
  const ids = readI32(cases().cases.find((c) => c.name === 't300')!.ids);
  beforeAll(async () => {
    model = await loadModel(join(FIXTURE, 'checkpoint'), { backend: 'tfjs' });
  }, 60_000);
  afterAll(() => model.dispose());

  it('is deterministic: the same input gives bit-identical logits', async () => {
    const a = await model.logits(ids.subarray(0, 40));
    const b = await model.logits(ids.subarray(0, 40));
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
  });

  it('a packed row of two documents gives each document its per-token losses run alone (1e-5)', async () => {
    const docA = ids.slice(0, 70);
    const docB = ids.slice(70, 160);
    const packed = await model.logits(ids.slice(0, 160), { segments: [70, 90] });
    const lp = tokenLosses(packed, ids.slice(0, 160), V);
    const la = tokenLosses(await model.logits(docA), docA, V);
    const lb = tokenLosses(await model.logits(docB), docB, V);
    for (let t = 0; t < 69; t++) expect(Math.abs(lp[t] - la[t])).toBeLessThan(1e-5);
    for (let t = 0; t < 89; t++) expect(Math.abs(lp[70 + t] - lb[t])).toBeLessThan(1e-5);
    const { loss, count } = await model.loss(ids.slice(0, 160), null, { segments: [70, 90] });
    expect(count).toBe(69 + 89);
    const mean = [...la.slice(0, 69), ...lb.slice(0, 89)].reduce((x, y) => x + y, 0) / 158;
    expect(Math.abs(loss - mean)).toBeLessThan(1e-5);
  });

  it('MTP logits: one row per (t, t+1) pair inside a segment; a packed row equals its documents alone', async () => {
    const docA = ids.slice(0, 40);
    const docB = ids.slice(40, 100);
    const packed = await model.mtpLogits(ids.slice(0, 100), { segments: [40, 60] });
    expect(Array.from(packed.rows)).toEqual([...Array(39).keys(), ...Array.from({ length: 59 }, (_, i) => 40 + i)]);
    expect(packed.logits.length).toBe(98 * V);
    const a = await model.mtpLogits(docA);
    const b = await model.mtpLogits(docB);
    let maxd = 0;
    let maxv = 0;
    const both = [...a.logits, ...b.logits];
    both.forEach((v, i) => {
      maxd = Math.max(maxd, Math.abs(v - packed.logits[i]));
      maxv = Math.max(maxv, Math.abs(v));
    });
    expect(maxd / maxv).toBeLessThan(1e-5);
  });

  it('FP8/FP4 weights give the same logits as their dequantised BF16 copy', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-bf16-'));
    try {
      const src = await Checkpoint.open(join(FIXTURE, 'checkpoint'));
      const plans: TensorPlan[] = [];
      for (const name of src.names()) {
        const m = src.meta(name);
        const quant = m.format === 'fp8' || m.format === 'fp4';
        const raw = await src.raw(name);
        plans.push({ name, dtype: quant ? 'BF16' : (m.dtype as TensorPlan['dtype']), shape: quant ? m.logicalShape : m.shape, scaleShape: quant ? null : raw.scaleShape });
      }
      await writeCheckpointFiles(dir, plans, async (name) => {
        const m = src.meta(name);
        if (m.format === 'fp8' || m.format === 'fp4') return { data: f32ToBf16Bytes(await src.f32(name)), scale: null };
        const raw = await src.raw(name);
        return { data: raw.data, scale: raw.scale };
      });
      const cfg = JSON.parse(readFileSync(join(FIXTURE, 'checkpoint', 'config.json'), 'utf8')) as Record<string, unknown>;
      delete cfg.quantization_config;
      delete cfg.expert_dtype;
      writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
      await src.close();
      const copy = await Checkpoint.open(dir);
      expect(copy.meta('layers.0.attn.wq_a.weight').format).toBe('bf16');
      expect(copy.meta('layers.0.ffn.experts.0.w1.weight').format).toBe('bf16');
      await copy.close();
      const bf16 = await loadModel(dir, { backend: 'tfjs' });
      const x = ids.subarray(0, 64);
      const a = await model.logits(x);
      const b = await bf16.logits(x);
      bf16.dispose();
      let maxd = 0;
      for (let i = 0; i < a.length; i++) maxd = Math.max(maxd, Math.abs(a[i] - b[i]));
      expect(maxd).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
