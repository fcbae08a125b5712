// The acceptance test of the backward pass: the fixture's `lora` case — loss, logits and the
// gradient of every adapter tensor against an independent float64 implementation
// (tolerances from the fixture's README: loss relative 1e-5, logits 1e-4, gradients 1e-3).
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/model/load.js';
import type { ModelAdapter, V4Model } from '../../src/model/v4/model.js';
import { loadAdapter } from '../../src/lora/peft.js';
import { cases, FIXTURE, readF32, readI32, readU8, loraGradMismatches } from './fixture.js';
import { relErr } from '../ref64.js';

describe('v4-tiny-ref lora case (tfjs backend)', { timeout: 60_000 }, () => {
  const L = cases().lora;
  let model: V4Model;
  let adapter: ModelAdapter;
  beforeAll(async () => {
    model = await loadModel(join(FIXTURE, 'checkpoint'), { backend: 'tfjs' });
    adapter = await loadAdapter(join(FIXTURE, L.adapter), { warn: () => {} });
  }, 60_000);
  afterAll(() => model.dispose());

  it('logits with the adapter: max|Δ|/max|ref| ≤ 1e-4', async () => {
    const out = await model.logits(readI32(L.ids), { segments: L.segments, adapter });
    expect(relErr(out, readF32(L.logits))).toBeLessThanOrEqual(1e-4);
  });

  it('loss within 1e-5 relative and every LoRA gradient within 1e-3 (max|Δ|/max|ref|)', async () => {
    const { loss, grads } = await model.lossAndGrads(readI32(L.ids), readU8(L.loss_mask), { segments: L.segments, adapter });
    expect(Math.abs(loss - L.loss) / Math.abs(L.loss)).toBeLessThanOrEqual(1e-5);
    expect(loraGradMismatches(grads)).toEqual([]);
  });
});
