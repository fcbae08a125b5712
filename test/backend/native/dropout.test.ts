// LoRA dropout on the native backend: the kernels' mask is src/backend/dropout.ts's, element for
// element, on every ISA path (vector body and scalar tail); each op with dropout agrees with the
// tfjs backend (same masks, float32 both: forward 2e-5, backward 1e-4 of the largest entry), at
// widths that run the vector paths and several threads; and the tiny preset's whole-model loss
// and every LoRA gradient with dropout agree native vs tfjs within the tolerances of
// test/backend/native/model.test.ts (loss 1e-5, gradients 1e-3).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropoutMask, dropoutScale, loraDropout } from '../../../src/backend/dropout.js';
import { createNativeBackend } from '../../../src/backend/native/index.js';
import type { Backend, ExpertLora, ExpertWeights, LoraFactors } from '../../../src/backend/ops.js';
import { createTfjsBackend } from '../../../src/backend/tfjs/index.js';
import { createAdapter } from '../../../src/lora/adapter.js';
import { A, addon, randn, rng, skipNative, whyUnavailable } from './helpers.js';
import { relErr } from '../../ref64.js';
import { tinyPresetPair } from './model-pair.js';

const FWD = 2e-5;
const BWD = 1e-4;

describe.skipIf(skipNative)('LoRA dropout on the native backend', { timeout: 120_000 }, () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });

  it('the kernels draw the TS mask exactly: every p, seed, width and row list, on each ISA path', () => {
    const isa = A().info().isa;
    const r = rng(1);
    try {
      for (const path of ['avx512', 'avx2', 'scalar'] as const) {
        A().setIsa(path);
        for (const p of [0.01, 0.1, 0.5, 0.9]) {
          for (const C of [1, 15, 16, 17, 1031]) {
            const N = 37;
            const d = loraDropout(p, Math.floor(r() * 2 ** 32));
            const rows = Int32Array.from({ length: N }, () => Math.floor(r() * (1 << 20)));
            for (const rs of [null, rows]) {
              const want = dropoutMask(d, rs, N, C);
              const got = new Float32Array(N * C);
              A().dropoutMask(got, rs, N, C, { threshold: d.threshold, scale: dropoutScale(p), seed: d.seed });
              const bad = want.findIndex((v, i) => v !== got[i]);
              expect(bad, `${path} p ${p} C ${C} rows ${rs ? 'given' : 'none'}: first difference at ${bad}`).toBe(-1);
            }
          }
        }
      }
    } finally {
      A().setIsa(isa);
    }
  });

  describe('each op with dropout: native vs tfjs', () => {
    let nat: Backend;
    let tfb: Backend;
    const threadsBefore = addon?.info().threads ?? 0;
    beforeAll(async () => {
      addon?.setThreads(2);
      nat = await createNativeBackend();
      tfb = await createTfjsBackend();
    });
    afterAll(() => {
      addon?.setThreads(threadsBefore);
      nat?.dispose();
      tfb?.dispose();
    });
    const r = rng(7);
    const lora = (inF: number, outF: number, rk: number, seed: number, p = 0.15): LoraFactors => ({
      A: randn(rk * inF, r, 0.3), B: randn(outF * rk, r, 0.3), r: rk, scaling: 0.5, dropout: loraDropout(p, seed),
    });
    const weights = (name: string, data: Float32Array, shape: number[]) => [nat.weightFromArray(name, data, shape), tfb.weightFromArray(name, data, shape)];
    const both = <T>(f: (be: Backend, i: number) => Promise<T>): Promise<[T, T]> => Promise.all([f(nat, 0), f(tfb, 1)]);
    const near = (a: Float32Array | undefined, b: Float32Array | undefined, tol: number, what: string) => {
      expect(a && b, what).toBeTruthy();
      expect(relErr(a!, b!), what).toBeLessThan(tol);
    };

    it('linear and grouped linear (widths past the vector length, odd tails)', async () => {
      for (const [N, G, inG, outG] of [[33, 1, 70, 24], [9, 4, 40, 8]] as const) {
        const x = randn(N * G * inG, r);
        const W = weights('W', randn(G * outG * inG, r, 0.2), [G * outG, inG]);
        const l = lora(inG, G * outG, 3, 1000 + G);
        const dy = randn(N * G * outG, r);
        const [a, b] = await both(async (be, i) => {
          const f = G === 1 ? await be.linearForward(x, W[i], l, N, inG, outG) : await be.groupedLinearForward(x, W[i], l, N, G, inG, outG);
          const g = G === 1 ? await be.linearBackward(f.saved, dy) : await be.groupedLinearBackward(f.saved, dy);
          return { y: f.y, ...g };
        });
        near(a.y, b.y, FWD, `G ${G} y`);
        near(a.dx, b.dx, BWD, `G ${G} dx`);
        near(a.lora?.dA, b.lora?.dA, BWD, `G ${G} dA`);
        near(a.lora?.dB, b.lora?.dB, BWD, `G ${G} dB`);
      }
    });

    it('routed experts and the shared expert (each projection its own mask)', async () => {
      const [N, d, I, E, k, L] = [24, 48, 40, 4, 2, 2];
      const ex: ExpertWeights[][] = [[], []];
      const lo: ExpertLora[] = [];
      for (let e = 0; e < E; e++) {
        const [w1, w2, w3] = [randn(I * d, r, 0.2), randn(d * I, r, 0.2), randn(I * d, r, 0.2)];
        for (const [i, be] of [nat, tfb].entries()) ex[i].push({ w1: be.weightFromArray(`w1.${e}`, w1, [I, d]), w2: be.weightFromArray(`w2.${e}`, w2, [d, I]), w3: be.weightFromArray(`w3.${e}`, w3, [I, d]) });
        // expert 1 without an adapter on w3, expert 3 without dropout on w2
        lo.push({ w1: lora(d, I, 2, 10 * e + 1), w2: lora(I, d, 2, 10 * e + 2, e === 3 ? 0 : 0.15), ...(e === 1 ? {} : { w3: lora(d, I, 2, 10 * e + 3) }) });
      }
      const x = randn(N * d, r);
      const idx = Int32Array.from({ length: N * k }, (_, i) => (i * 7 + (i >> 3)) % E);
      for (let n = 0; n < N; n++) if (idx[n * k] === idx[n * k + 1]) idx[n * k + 1] = (idx[n * k + 1] + 1) % E;
      const w = Float32Array.from({ length: N * k }, () => 0.2 + r());
      const dy = randn(N * d, r);
      const [a, b] = await both(async (be, i) => {
        const f = await be.routedExpertsForward(x, idx, w, ex[i], lo, N, d, I, k, L);
        return { y: f.y, ...(await be.routedExpertsBackward(f.saved, dy)) };
      });
      near(a.y, b.y, FWD, 'moe y');
      near(a.dx, b.dx, BWD, 'moe dx');
      near(a.dweights, b.dweights, BWD, 'moe dweights');
      for (let e = 0; e < E; e++) {
        for (const p of ['w1', 'w2', 'w3'] as const) {
          if (!lo[e][p]) continue;
          near(a.lora[e][p]?.dA, b.lora[e][p]?.dA, BWD, `expert ${e} ${p} dA`);
          near(a.lora[e][p]?.dB, b.lora[e][p]?.dB, BWD, `expert ${e} ${p} dB`);
        }
      }
      const [sa, sb] = await both(async (be, i) => {
        const f = await be.swigluForward(x, ex[i][0], lo[0], N, d, I, L);
        return { y: f.y, ...(await be.swigluBackward(f.saved, dy)) };
      });
      near(sa.y, sb.y, FWD, 'shared y');
      near(sa.dx, sb.dx, BWD, 'shared dx');
      for (const p of ['w1', 'w2', 'w3'] as const) {
        near(sa.lora[p]?.dA, sb.lora[p]?.dA, BWD, `shared ${p} dA`);
        near(sa.lora[p]?.dB, sb.lora[p]?.dB, BWD, `shared ${p} dB`);
      }
    });
  });

  describe('tiny preset (FP8 attention, FP4 experts) with lora dropout 0.1: native vs tfjs', () => {
    const pair = tinyPresetPair('v4tune-native-dropout-');

    // both float32 with different summation orders through ~all layers: loss 1e-5, grads 1e-3
    it('whole-model loss and every LoRA gradient agree (packed row of two segments, the same masks)', async () => {
      const adapter = createAdapter(pair.nat(), { r: 4, alpha: 8, seed: 3, dropout: 0.1 });
      const r = rng(9);
      for (const l of adapter.layers.values()) l.B.set(randn(l.B.length, r, 0.05));
      const T = 40;
      const ids = Int32Array.from({ length: T }, (_, i) => (i * 37 + 11) % pair.nat().config.vocab_size);
      const mask = Uint8Array.from({ length: T }, (_, i) => (i % 5 === 0 ? 0 : 1));
      const opts = { segments: [25, 15], adapter, dropoutSeed: 42 };
      const a = await pair.nat().lossAndGrads(ids, mask, opts);
      const b = await pair.tfm().lossAndGrads(ids, mask, opts);
      const plain = await pair.nat().lossAndGrads(ids, mask, { ...opts, adapter: { factors: (m: string) => adapter.factors(m), modules: () => adapter.modules() } });
      expect(a.loss).not.toBe(plain.loss);
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
