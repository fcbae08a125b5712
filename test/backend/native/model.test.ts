// The whole model on the native backend: the fixture's `lora` case against its independent
// float64 reference (tolerances from the fixture's README: loss 1e-5, logits 1e-4, gradients
// 1e-3), and the tiny preset's whole-model LoRA gradients native vs tfjs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../../src/model/load.js';
import { createAdapter } from '../../../src/lora/adapter.js';
import { loadAdapter } from '../../../src/lora/peft.js';
import type { ModelAdapter, V4Model } from '../../../src/model/v4/model.js';
import { cases, FIXTURE, readF32, readI32, readU8, loraGradMismatches } from '../../model/fixture.js';
import { addon, randn, rng, skipNative, whyUnavailable } from './helpers.js';
import { relErr } from '../../ref64.js';
import { tinyPresetPair } from './model-pair.js';

describe.skipIf(skipNative)('whole model on the native backend', { timeout: 120_000 }, () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });

  describe('fixture v4-tiny-ref lora case', () => {
    const L = cases().lora;
    let model: V4Model;
    let adapter: ModelAdapter;
    beforeAll(async () => {
      model = await loadModel(join(FIXTURE, 'checkpoint'), { backend: 'native' });
      adapter = await loadAdapter(join(FIXTURE, L.adapter), { warn: () => {} });
    }, 60_000);
    afterAll(() => model?.dispose());

    it('loads on the native backend', () => {
      expect(model.backend.name).toMatch(/^native/);
    });

    it('logits with the adapter within 1e-4 of the reference', async () => {
      const out = await model.logits(readI32(L.ids), { segments: L.segments, adapter });
      expect(relErr(out, readF32(L.logits))).toBeLessThanOrEqual(1e-4);
    });

    it('loss within 1e-5 and every LoRA gradient within 1e-3 of the reference', async () => {
      const { loss, grads } = await model.lossAndGrads(readI32(L.ids), readU8(L.loss_mask), { segments: L.segments, adapter });
      expect(Math.abs(loss - L.loss) / Math.abs(L.loss)).toBeLessThanOrEqual(1e-5);
      expect(loraGradMismatches(grads)).toEqual([]);
    });

    it("the gradients that meet are summed with the backend's addInto (the tape is given it), the same loss", async () => {
      const be = model.backend;
      const own = be.addInto!.bind(be);
      let calls = 0;
      be.addInto = (dst, src) => {
        calls++;
        own(dst, src);
      };
      try {
        const { loss } = await model.lossAndGrads(readI32(L.ids), readU8(L.loss_mask), { segments: L.segments, adapter });
        expect(Math.abs(loss - L.loss) / Math.abs(L.loss)).toBeLessThanOrEqual(1e-5);
      } finally {
        delete (be as { addInto?: unknown }).addInto; // the class's method again
      }
      expect(be.addInto).toBeTypeOf('function');
      expect(calls).toBeGreaterThan(0);
    });
  });

  describe('tiny preset (FP8 attention, FP4 experts): native vs tfjs', () => {
    const pair = tinyPresetPair('v4tune-native-');

    // both float32 with different summation orders through ~all layers: loss 1e-5, grads 1e-3
    it('whole-model loss and every LoRA gradient agree (packed row of two segments)', async () => {
      const adapter = createAdapter(pair.nat(), { r: 4, alpha: 8, seed: 3 });
      const r = rng(9);
      for (const l of adapter.layers.values()) l.B.set(randn(l.B.length, r, 0.05));
      const T = 40;
      const ids = Int32Array.from({ length: T }, (_, i) => (i * 37 + 11) % pair.nat().config.vocab_size);
      const mask = Uint8Array.from({ length: T }, (_, i) => (i % 5 === 0 ? 0 : 1));
      const opts = { segments: [25, 15], adapter };
      const a = await pair.nat().lossAndGrads(ids, mask, opts);
      const b = await pair.tfm().lossAndGrads(ids, mask, opts);
      expect(Math.abs(a.loss - b.loss) / Math.abs(b.loss)).toBeLessThan(1e-5);
      expect([...a.grads.keys()].sort()).toEqual([...b.grads.keys()].sort());
      const bad: string[] = [];
      for (const [k, g] of b.grads) {
        const e = relErr(a.grads.get(k) as Float32Array, g);
        if (!(e <= 1e-3)) bad.push(`${k}: ${e}`);
      }
      expect(bad).toEqual([]);
    });
  });
});
