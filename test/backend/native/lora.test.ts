// Linear-with-LoRA (plain and grouped) and the grouped routed-expert kernel: forwards against
// their float64 references (test/ref64.ts), backwards against float64 central differences of
// those references.
import { describe, expect, it } from 'vitest';
import { rawWeight, type RawExpert, type RawExpertGrads } from '../../../src/backend/native/addon.js';
import { dequantFp8Block, quantFp4, quantFp8Block } from '../../../src/model/formats.js';
import { A, addon, randn, rng, skipNative, whyUnavailable } from './helpers.js';
import * as R from '../../ref64.js';
import { contract, fdGrad, f64, relErr } from '../../ref64.js';

interface ExpertRef { w1: Float32Array; w2: Float32Array; w3: Float32Array; lora: { A: Float64Array; B: Float64Array; r: number; s: number }[] }
// the grouped kernel's (token, expert, weight) pairs: out[t] += w · swiglu_e(x[t]) (test/ref64.ts swiglu)
function expertRef(x: ArrayLike<number>, T: number, d: number, I: number, pairs: { t: number; e: number; w: number }[], ex: ExpertRef[], L: number): Float64Array {
  const out = new Float64Array(T * d);
  for (const p of pairs) {
    const e = ex[p.e];
    const y = R.swiglu(f64(x).subarray(p.t * d, (p.t + 1) * d), { w1: f64(e.w1), w2: f64(e.w2), w3: f64(e.w3), lora: { w1: e.lora[0], w2: e.lora[1], w3: e.lora[2] } }, 1, d, I, L);
    for (let j = 0; j < d; j++) out[p.t * d + j] += p.w * y[j];
  }
  return out;
}

// The grouped kernel's routing: every token t to experts t % used and (t + 1) % used (weight
// 0.3 + 0.1·t), the pairs sorted by expert; experts ≥ used get none.
function routing(T: number, E: number, used: number) {
  const pairs: { t: number; e: number; w: number }[] = [];
  for (let t = 0; t < T; t++) for (const e of [t % used, (t + 1) % used]) pairs.push({ t, e, w: 0.3 + 0.1 * t });
  pairs.sort((a, b) => a.e - b.e || a.t - b.t);
  const off = new Int32Array(E + 1);
  for (const p of pairs) off[p.e + 1]++;
  for (let e = 0; e < E; e++) off[e + 1] += off[e];
  return { pairs, idx: Int32Array.from(pairs, (p) => p.t), w: Float32Array.from(pairs, (p) => p.w), off };
}

describe.skipIf(skipNative)('native LoRA kernels', () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });

  // forward: fp32 sums of ≤ 40 terms, 1e-5 relative; backward vs float64 differences: 1e-4
  it('linear with LoRA (plain and grouped): forward vs float64, dx/dA/dB vs float64 finite differences', async () => {
    const r = rng(10);
    for (const [T, G, inG, outG, rk] of [[5, 1, 12, 9, 3], [4, 3, 8, 6, 2]] as const) {
      const x = randn(T * G * inG, r);
      const W = randn(G * outG * inG, r);
      const Al = randn(rk * inG, r);
      const B = randn(G * outG * rk, r);
      const s = 0.7;
      const w = rawWeight('f32', W, null, G * outG, inG);
      const y = new Float32Array(T * G * outG);
      await A().linearForward(y, x, w, Al, B, rk, s, T, G);
      expect(relErr(y, R.groupedLinear(x, W, T, G, inG, outG, { A: Al, B, r: rk, s }))).toBeLessThan(1e-5);
      const dy = randn(y.length, r);
      const dx = new Float32Array(x.length);
      const dA = new Float32Array(Al.length);
      const dB = new Float32Array(B.length);
      await A().linearBackward(dx, dA, dB, dy, x, w, Al, B, rk, s, T, G);
      const loss = (xx: ArrayLike<number>, aa: ArrayLike<number>, bb: ArrayLike<number>): number => contract(R.groupedLinear(xx, W, T, G, inG, outG, { A: aa, B: bb, r: rk, s }), dy);
      expect(relErr(dx, fdGrad((v) => loss(v, Al, B), x))).toBeLessThan(1e-4);
      expect(relErr(dA, fdGrad((v) => loss(x, v, B), Al))).toBeLessThan(1e-4);
      expect(relErr(dB, fdGrad((v) => loss(x, Al, v), B))).toBeLessThan(1e-4);
    }
  });

  // group g reads rows g·outG … of an FP8 weight whose 128-row scale blocks do not line up with
  // the groups (outG = 96): every row must use its own block's scale
  it('grouped linear on FP8 with groups straddling 128-row scale blocks matches float64 on the dequantised weight (1e-5)', async () => {
    const r = rng(12);
    const [T, G, inG, outG, rk] = [3, 3, 160, 96, 2];
    const q = quantFp8Block(randn(G * outG * inG, r, 0.2), G * outG, inG);
    const deq = dequantFp8Block(q.weight, q.scale, G * outG, inG);
    const x = randn(T * G * inG, r);
    const Al = randn(rk * inG, r);
    const B = randn(G * outG * rk, r);
    const y = new Float32Array(T * G * outG);
    await A().linearForward(y, x, rawWeight('fp8', q.weight, q.scale, G * outG, inG), Al, B, rk, 0.5, T, G);
    expect(relErr(y, R.groupedLinear(x, deq, T, G, inG, outG, { A: Al, B, r: rk, s: 0.5 }))).toBeLessThan(1e-5);
    const dy = randn(y.length, r);
    const dx = new Float32Array(x.length);
    await A().linearBackward(dx, null, null, dy, x, rawWeight('fp8', q.weight, q.scale, G * outG, inG), Al, B, rk, 0.5, T, G);
    expect(relErr(dx, fdGrad((v) => contract(R.groupedLinear(v, deq, T, G, inG, outG, { A: Al, B, r: rk, s: 0.5 }), dy), x))).toBeLessThan(1e-4);
  });

  it('grouped experts with fused LoRA on FP4 weights: forward vs float64, dx/dw/dA/dB vs float64 finite differences', async () => {
    const r = rng(11);
    const T = 6;
    const d = 32;
    const I = 64;
    const E = 3;
    const L = 1.5; // small, so some values clamp
    const rk = 2;
    const ex: ExpertRef[] = [];
    const raw: RawExpert[] = [];
    for (let e = 0; e < E; e++) {
      const q1 = quantFp4(randn(I * d, r, 0.3), I, d);
      const q2 = quantFp4(randn(d * I, r, 0.3), d, I);
      const q3 = quantFp4(randn(I * d, r, 0.3), I, d);
      const w1 = rawWeight('fp4', q1.weight, q1.scale, I, d);
      const w2 = rawWeight('fp4', q2.weight, q2.scale, d, I);
      const w3 = rawWeight('fp4', q3.weight, q3.scale, I, d);
      const deq = (w: typeof w1): Float32Array => {
        const o = new Float32Array(w.rows * w.cols);
        A().decodeWeight(w, o);
        return o;
      };
      const lora = [
        { A: randn(rk * d, r, 0.3), B: randn(I * rk, r, 0.3), r: rk, s: 0.5 },
        { A: randn(rk * I, r, 0.3), B: randn(d * rk, r, 0.3), r: rk, s: 0.25 },
        { A: randn(rk * d, r, 0.3), B: randn(I * rk, r, 0.3), r: rk, s: 0.75 },
      ];
      ex.push({ w1: deq(w1), w2: deq(w2), w3: deq(w3), lora: lora.map((l) => ({ ...l, A: f64(l.A), B: f64(l.B) })) });
      raw.push({ w1, w2, w3, a1: lora[0].A, b1: lora[0].B, r1: rk, s1: 0.5, a2: lora[1].A, b2: lora[1].B, r2: rk, s2: 0.25, a3: lora[2].A, b3: lora[2].B, r3: rk, s3: 0.75 });
    }
    // every token to 2 experts; expert 2 gets none of some tokens
    const { pairs, idx, w, off } = routing(T, E, E);
    const x = randn(T * d, r);
    const out = new Float32Array(T * d);
    await A().routedExpertsForward(out, x, T, d, I, idx, off, w, raw, L);
    expect(relErr(out, expertRef(x, T, d, I, pairs, ex, L))).toBeLessThan(1e-5);

    const g = randn(T * d, r);
    const dx = new Float32Array(T * d);
    const dw = new Float32Array(pairs.length);
    const grads: RawExpertGrads[] = raw.map((e) => ({
      da1: new Float32Array(e.a1!.length), db1: new Float32Array(e.b1!.length), da2: new Float32Array(e.a2!.length),
      db2: new Float32Array(e.b2!.length), da3: new Float32Array(e.a3!.length), db3: new Float32Array(e.b3!.length),
    }));
    await A().routedExpertsBackward(dx, dw, grads, g, x, T, d, I, idx, off, w, raw, L);
    const lossX = (v: ArrayLike<number>): number => contract(expertRef(v, T, d, I, pairs, ex, L), g);
    expect(relErr(dx, fdGrad(lossX, x))).toBeLessThan(1e-4);
    const wantDw = fdGrad((v) => contract(expertRef(x, T, d, I, pairs.map((p, i) => ({ ...p, w: v[i] })), ex, L), g), w);
    expect(relErr(dw, wantDw)).toBeLessThan(1e-4);
    for (const e of [0, 2]) {
      for (const [j, key] of [[0, '1'], [1, '2'], [2, '3']] as const) {
        const lo = ex[e].lora[j];
        const f = (which: 'A' | 'B') => (v: Float64Array): number => {
          const saved = lo[which];
          lo[which] = v;
          const res = contract(expertRef(x, T, d, I, pairs, ex, L), g);
          lo[which] = saved;
          return res;
        };
        const gA = grads[e][`da${key}` as keyof RawExpertGrads] as Float32Array;
        const gB = grads[e][`db${key}` as keyof RawExpertGrads] as Float32Array;
        expect(relErr(gA, fdGrad(f('A'), lo.A)), `expert ${e} A${key}`).toBeLessThan(1e-4);
        expect(relErr(gB, fdGrad(f('B'), lo.B)), `expert ${e} B${key}`).toBeLessThan(1e-4);
      }
    }
  });

  // A training forward keeps h1 and h3 (2·P·I floats) and the backward reads them instead of
  // recomputing w1·x and w3·x: the same bits for out, dx, dw and every LoRA gradient as the
  // recomputing backward, with one expert per pool task (d·I ≤ 2^20) and each GEMM across the
  // pool (d·I > 2^20), LoRA dropout on, an expert without adapters and one without tokens.
  it('the backward from the forward\'s kept h1/h3 equals the recomputing backward, bit for bit', async () => {
    const r = rng(12);
    for (const [d, I] of [[32, 64], [1024, 1152]] as const) {
      const T = 7;
      const E = 4;
      const rk = 3;
      const drop = (seed: number) => ({ threshold: Math.floor(0.2 * 2 ** 24), scale: 1.25, seed });
      const raw: RawExpert[] = [];
      for (let e = 0; e < E; e++) {
        const w = (rows: number, cols: number) => rawWeight('f32', randn(rows * cols, r, 0.05), null, rows, cols);
        const ex: RawExpert = { w1: w(I, d), w2: w(d, I), w3: w(I, d) };
        if (e !== 1) {
          Object.assign(ex, {
            a1: randn(rk * d, r, 0.1), b1: randn(I * rk, r, 0.1), r1: rk, s1: 0.5, d1: drop(10 + e),
            a2: randn(rk * I, r, 0.1), b2: randn(d * rk, r, 0.1), r2: rk, s2: 0.25, d2: drop(20 + e),
            a3: randn(rk * d, r, 0.1), b3: randn(I * rk, r, 0.1), r3: rk, s3: 0.75,
          });
        }
        raw.push(ex);
      }
      // every token to 2 of experts 0–2; expert 3 gets none
      const { pairs, idx, w, off } = routing(T, E, 3);
      const P = pairs.length;
      const x = randn(T * d, r);
      const g = randn(T * d, r);
      const run = async (keep: boolean) => {
        const out = new Float32Array(T * d);
        const h13 = keep ? new Float32Array(2 * P * I) : null;
        await A().routedExpertsForward(out, x, T, d, I, idx, off, w, raw, 2, h13);
        const dx = new Float32Array(T * d);
        const dw = new Float32Array(P);
        const grads: RawExpertGrads[] = raw.map((e) => (e.a1 ? {
          da1: new Float32Array(e.a1.length), db1: new Float32Array(e.b1!.length), da2: new Float32Array(e.a2!.length),
          db2: new Float32Array(e.b2!.length), da3: new Float32Array(e.a3!.length), db3: new Float32Array(e.b3!.length),
        } : {}));
        await A().routedExpertsBackward(dx, dw, grads, g, x, T, d, I, idx, off, w, raw, 2, h13);
        return { out, dx, dw, grads, h13 };
      };
      const kept = await run(true);
      const recomputed = await run(false);
      expect(kept.h13!.some((v) => v !== 0), `${d}×${I}: h13 filled`).toBe(true);
      expect(kept.out, `${d}×${I} out`).toEqual(recomputed.out);
      expect(kept.dx, `${d}×${I} dx`).toEqual(recomputed.dx);
      expect(kept.dw, `${d}×${I} dw`).toEqual(recomputed.dw);
      expect(kept.grads, `${d}×${I} LoRA gradients`).toEqual(recomputed.grads);
      // h1 of pair 0 is x[idx[0]] W1ᵀ + its LoRA term: check its base part on the expert without adapters
      const p1 = off[1];
      const t1 = idx[p1]!;
      const W1 = raw[1]!.w1.data as Float32Array;
      let h = 0;
      for (let j = 0; j < d; j++) h += x[t1 * d + j]! * W1[j]!;
      expect(Math.abs(kept.h13![p1 * I]! - h)).toBeLessThan(1e-4 * (1 + Math.abs(h)));
    }
  });
});
