// Whole-model LoRA gradients on targets the fixture's adapter does not cover: the ratio-128
// compressor's wkv / wgate (through pooling, compressor norm, RoPE and attention) and the grouped
// wo_a. Each module's gradient is checked against a central finite difference of the loss along a
// random direction (float32 forward, ε = 2e-3, agreement to 2% + 5e-5). ε is kept small so that no
// routing or indexer choice flips inside the difference (the loss is only piecewise smooth);
// the ratio-4 compressor's overlap windows are checked at op level in ops.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { LoraFactors } from '../../src/backend/ops.js';
import { loadModel } from '../../src/model/load.js';
import type { ModelAdapter, V4Model } from '../../src/model/v4/model.js';
import { cases, FIXTURE, readI32 } from './fixture.js';
import { rand } from '../ref64.js';

/** module, in, out */
const MODULES: [string, number, number][] = [
  ['layers.2.attn.compressor.wkv', 64, 64],
  ['layers.2.attn.compressor.wgate', 64, 64],
  ['layers.3.attn.wo_a', 128, 64],
];

/** The adapter with `module`'s factors moved by eps along its direction (A then B). */
function moved(base: Map<string, LoraFactors>, module: string | null, v: Float32Array | null, eps: number): ModelAdapter {
  const m = new Map<string, LoraFactors>();
  for (const [name, f] of base) {
    if (name !== module || !v) {
      m.set(name, f);
      continue;
    }
    m.set(name, { ...f, A: f.A.map((x, i) => x + eps * v[i]), B: f.B.map((x, i) => x + eps * v[f.A.length + i]) });
  }
  return { factors: (n) => m.get(n), modules: () => m.keys() };
}

describe('LoRA gradients through the compressor and the grouped wo_a', { timeout: 120_000 }, () => {
  let model: V4Model;
  beforeAll(async () => {
    model = await loadModel(join(FIXTURE, 'checkpoint'), { backend: 'tfjs' });
  }, 60_000);
  afterAll(() => model.dispose());

  it('each module: Σ grad·v equals the finite difference of the loss along v', async () => {
    const ids = readI32(cases().cases.find((c) => c.name === 't300')!.ids).slice(0, 136);
    const mask = new Uint8Array(ids.length).fill(1);
    const r = 2;
    const base = new Map<string, LoraFactors>();
    MODULES.forEach(([name, inF, out], i) => {
      base.set(name, { A: Float32Array.from(rand(r * inF, 200 + i, 0.2)), B: Float32Array.from(rand(out * r, 300 + i, 0.2)), r, scaling: 2 });
    });
    const { grads } = await model.lossAndGrads(ids, mask, { adapter: moved(base, null, null, 0) });
    const eps = 2e-3;
    for (const [[name, inF, out], i] of MODULES.map((m, j) => [m, j] as const)) {
      const v = Float32Array.from(rand(r * inF + out * r, 400 + i));
      let predicted = 0;
      (grads.get(`base_model.model.${name}.lora_A.weight`) as Float32Array).forEach((g, j) => (predicted += g * v[j]));
      (grads.get(`base_model.model.${name}.lora_B.weight`) as Float32Array).forEach((g, j) => (predicted += g * v[r * inF + j]));
      const lp = (await model.loss(ids, mask, { adapter: moved(base, name, v, eps) })).loss;
      const lm = (await model.loss(ids, mask, { adapter: moved(base, name, v, -eps) })).loss;
      const fd = (lp - lm) / (2 * eps);
      expect(Math.abs(fd)).toBeGreaterThan(1e-4);
      // 2% plus the float32 noise of a loss difference (~1e-7 relative of a loss near 7, over 2ε)
      expect(Math.abs(fd - predicted)).toBeLessThan(0.02 * Math.abs(fd) + 5e-5);
    }
  });
});
