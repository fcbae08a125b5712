// Activation checkpointing per block (`lossAndGrads(..., { checkpointing: true })`) on the fixture's
// lora case (4 layers, ratios [0, 4, 128, 4], segments [80, 120]): the recomputed forward runs the
// same ops on the same inputs in the same order and replays the first forward's routing and
// indexer choices, so the loss is bit-identical and every adapter gradient is too (asserted
// exactly; 1e-6 relative is the stated worst case and would still fail a wrong recompute). The
// tape's accounting shows the saved activations drop to under half (the measured ratio is printed).
// Both backends: tfjs always; native when its addon is built (under CI=true it must be).
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/model/load.js';
import { loadAdapter } from '../../src/lora/peft.js';
import { SavedBytes, Tape, reachableBuffers } from '../../src/backend/tape.js';
import type { BackendName } from '../../src/backend/ops.js';
import type { ModelAdapter, V4Model } from '../../src/model/v4/model.js';
import { ChoiceLog } from '../../src/model/v4/graph.js';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { cases, FIXTURE, readI32, readU8 } from './fixture.js';
import { relErr } from '../ref64.js';

const skipNative = tryLoadAddon() === null && process.env.CI !== 'true';

function suite(backend: BackendName): void {
  describe(`checkpointing on the ${backend} backend (fixture lora case)`, { timeout: 120_000 }, () => {
    const L = cases().lora;
    let model: V4Model;
    let adapter: ModelAdapter;
    beforeAll(async () => {
      model = await loadModel(join(FIXTURE, 'checkpoint'), { backend });
      adapter = await loadAdapter(join(FIXTURE, L.adapter), { warn: () => {} });
    }, 60_000);
    afterAll(() => model?.dispose());

    it('same loss bit for bit, same gradients, under half the peak saved bytes', async () => {
      const ids = readI32(L.ids);
      const mask = readU8(L.loss_mask);
      // the recompute replays choices: no second indexer top-k, routing by the recorded indices
      const topk = vi.spyOn(model.backend, 'indexerTopk');
      const router = vi.spyOn(model.backend, 'routerForward');
      const given = (): number => router.mock.calls.filter((a) => a[3] !== null).length;
      const full = await model.lossAndGrads(ids, mask, { segments: L.segments, adapter, measureSavedBytes: true });
      const [topkFull, routerFull, givenFull] = [topk.mock.calls.length, router.mock.calls.length, given()];
      topk.mockClear();
      router.mockClear();
      const ckpt = await model.lossAndGrads(ids, mask, { segments: L.segments, adapter, measureSavedBytes: true, checkpointing: true });
      expect(topk.mock.calls.length).toBe(topkFull);
      expect(router.mock.calls.length).toBe(2 * routerFull);
      expect(given()).toBe(givenFull + routerFull);
      topk.mockRestore();
      router.mockRestore();
      expect(ckpt.loss).toBe(full.loss);
      expect(ckpt.count).toBe(full.count);
      expect([...ckpt.grads.keys()].sort()).toEqual([...full.grads.keys()].sort());
      const worst: string[] = [];
      let identical = 0;
      for (const [k, g] of full.grads) {
        const h = ckpt.grads.get(k) as Float32Array;
        const e = relErr(h, g);
        if (!(e <= 1e-6)) worst.push(`${k}: ${e}`);
        if (h.every((v, i) => Object.is(v, g[i]))) identical++;
      }
      expect(worst).toEqual([]);
      expect(identical).toBe(full.grads.size);
      // a gradient that is zero everywhere would make the equality vacuous
      expect([...full.grads.values()].some((g) => g.some((v) => v !== 0))).toBe(true);

      const without = full.savedPeakBytes as number;
      const withCk = ckpt.savedPeakBytes as number;
      console.log(`${backend}: peak saved bytes ${without} without checkpointing, ${withCk} with (ratio ${(withCk / without).toFixed(3)})`);
      expect(without).toBeGreaterThan(0);
      expect(withCk).toBeGreaterThan(0);
      expect(withCk / without).toBeLessThan(0.5);
    });

  });
}

suite('tfjs');
describe.skipIf(skipNative)('native', () => suite('native'));

describe('ChoiceLog', () => {
  it('replays the recorded choices in order and refuses a different kind', () => {
    const log = new ChoiceLog();
    const r = { kind: 'router' as const, idx: Int32Array.of(1, 2), K: 2 };
    const s = { kind: 'indexer' as const, idx: Int32Array.of(0), K: 1 };
    log.push(r);
    log.push(s);
    expect(log.replaying).toBe(false);
    log.replay();
    expect(log.next('router')).toBe(r);
    expect(() => log.next('router')).toThrow(/asked for a router choice where the first forward's next choice was a indexer choice/);
    log.replay();
    expect(log.next('router')).toBe(r);
    expect(log.next('indexer')).toBe(s);
    expect(() => log.next('indexer')).toThrow(/none \(it made no more choices\)/);
  });
});

describe('tape accounting', () => {
  it('counts each buffer once while any record holds it, and leaves out excluded ones', async () => {
    const acc = new SavedBytes();
    const tape = new Tape(acc);
    const w = new Float32Array(1000); // a "weight": excluded
    const x = new Float32Array(10); // 40 bytes
    const y = new Float32Array(20); // 80 bytes
    const z = new Float32Array(5); // 20 bytes
    tape.record([x], [y], async ([dy]) => [dy.subarray(0, 10)], [{ w, again: x }]);
    tape.record([y], [z], async ([dz]) => [new Float32Array(20).fill(dz[0])], [{ sub: y.subarray(2) }]);
    const child = tape.child();
    const t = new Float32Array(100); // 400 bytes, held by the child while the parent still holds x, y, z
    child.record([z], [t], async () => [null]);
    await child.backward([[t, new Float32Array(100)]]);
    await tape.backward([[z, new Float32Array(5).fill(1)]]);
    expect(acc.peak([w])).toBe(40 + 80 + 20 + 400);
    expect(acc.peak()).toBe(4000 + 40 + 80 + 20 + 400);
  });

  it('reachableBuffers walks objects, arrays, Maps and views once per buffer', () => {
    const a = new Float32Array(4);
    const b = new Int32Array(3);
    const seen: number[] = [];
    const cyc: { self?: unknown; a: Float32Array } = { a };
    cyc.self = cyc;
    reachableBuffers([cyc, [a.subarray(1)], new Map([['k', b]]), () => new Float32Array(9)], (buf) => seen.push(buf.byteLength));
    expect(seen.sort()).toEqual([12, 16]);
  });
});
