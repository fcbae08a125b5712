// The acceptance test of the forward pass: logits of a V4 checkpoint that v4tune did not write,
// against an independent float64 implementation (tolerance from the fixture's README).
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/model/load.js';
import type { V4Model } from '../../src/model/v4/model.js';
import { cases, FIXTURE, readF32, readI32 } from './fixture.js';
import { relErr } from '../ref64.js';

describe('v4-tiny-ref logits (tfjs backend)', { timeout: 60_000 }, () => {
  let model: V4Model;
  beforeAll(async () => {
    model = await loadModel(join(FIXTURE, 'checkpoint'), { backend: 'tfjs' });
  }, 60_000);
  afterAll(() => model.dispose());

  for (const c of cases().cases) {
    it(`${c.name}: max|Δ|/max|ref| ≤ 1e-4`, async () => {
      const ids = readI32(c.ids);
      const ref = readF32(c.logits);
      const out = await model.logits(ids, { segments: c.segments });
      expect(out.length).toBe(c.logits_shape[0] * c.logits_shape[1]);
      const err = relErr(out, ref);
      expect(err).toBeLessThanOrEqual(1e-4);
    });
  }
});
