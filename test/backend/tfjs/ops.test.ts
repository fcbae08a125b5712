// Every op of the tfjs backend against a float64 reference written in the test (ref64.ts):
// forward on fresh random inputs, backward against central finite differences in float64.
// Tolerances (max|Δ|/max|ref|): forward 2e-5, backward 1e-4 (float32 compute vs float64).
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend, LoraFactors } from '../../../src/backend/ops.js';
import { createTfjsBackend } from '../../../src/backend/tfjs/index.js';
import { ropeFreqs, ropeTable } from '../../../src/model/v4/rope.js';
import * as R from '../../ref64.js';

const FWD = 2e-5;
const BWD = 1e-4;
const f32 = (a: ArrayLike<number>): Float32Array => Float32Array.from(a);
/** random values already rounded to float32, as float64 */
const rnd = (n: number, seed: number, scale = 1): Float64Array => Float64Array.from(f32(R.rand(n, seed, scale)));

let be: Backend;
beforeAll(async () => {
  be = await createTfjsBackend();
});

const W = (name: string, a: Float64Array, shape: number[]) => be.weightFromArray(name, f32(a), shape);
const lora64 = (A: Float64Array, B: Float64Array, r: number, s: number) => ({ A, B, r, s });
const loraF = (A: Float64Array, B: Float64Array, r: number, s: number): LoraFactors => ({ A: f32(A), B: f32(B), r, scaling: s });

describe('rmsnorm', () => {
  it('forward and backward, with and without a weight', async () => {
    const [N, C, eps] = [3, 8, 1e-6];
    const x = rnd(N * C, 1, 2);
    const w = rnd(C, 2);
    for (const wt of [w, null]) {
      const { y, saved } = await be.rmsnormForward(f32(x), wt ? W('w', wt, [C]) : null, N, C, eps);
      expect(R.relErr(y, R.rmsnorm(x, wt, N, C, eps))).toBeLessThan(FWD);
      const dy = rnd(N * C, 3);
      const { dx } = await be.rmsnormBackward(saved, f32(dy));
      expect(R.relErr(dx, R.fdGrad((xx) => R.rmsnorm(xx, wt, N, C, eps), x, dy))).toBeLessThan(BWD);
    }
  });
});

describe('linear with LoRA', () => {
  it('forward y = xWᵀ + s(xAᵀ)Bᵀ and backward dx, dA, dB', async () => {
    const [N, inF, outF, r, s] = [4, 6, 5, 2, 1.5];
    const x = rnd(N * inF, 4);
    const Wt = rnd(outF * inF, 5);
    const A = rnd(r * inF, 6);
    const B = rnd(outF * r, 7);
    const { y, saved } = await be.linearForward(f32(x), W('W', Wt, [outF, inF]), loraF(A, B, r, s), N, inF, outF);
    expect(R.relErr(y, R.linear(x, Wt, N, inF, outF, lora64(A, B, r, s)))).toBeLessThan(FWD);
    const dy = rnd(N * outF, 8);
    const g = await be.linearBackward(saved, f32(dy));
    expect(R.relErr(g.dx, R.fdGrad((xx) => R.linear(xx, Wt, N, inF, outF, lora64(A, B, r, s)), x, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dA, R.fdGrad((aa) => R.linear(x, Wt, N, inF, outF, lora64(aa, B, r, s)), A, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dB, R.fdGrad((bb) => R.linear(x, Wt, N, inF, outF, lora64(A, bb, r, s)), B, dy))).toBeLessThan(BWD);
  });
});

describe('grouped linear (wo_a) with LoRA', () => {
  it('applies W and the delta s·B·A per group; backward dx, dA, dB', async () => {
    const [N, G, inG, outG, r, s] = [3, 2, 4, 3, 2, 2];
    const x = rnd(N * G * inG, 9);
    const Wt = rnd(G * outG * inG, 10);
    const A = rnd(r * inG, 11);
    const B = rnd(G * outG * r, 12);
    const ref = (xx: Float64Array, aa: Float64Array, bb: Float64Array) => R.groupedLinear(xx, Wt, N, G, inG, outG, lora64(aa, bb, r, s));
    const { y, saved } = await be.groupedLinearForward(f32(x), W('W', Wt, [G * outG, inG]), loraF(A, B, r, s), N, G, inG, outG);
    expect(R.relErr(y, ref(x, A, B))).toBeLessThan(FWD);
    const dy = rnd(N * G * outG, 13);
    const g = await be.groupedLinearBackward(saved, f32(dy));
    expect(R.relErr(g.dx, R.fdGrad((xx) => ref(xx, A, B), x, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dA, R.fdGrad((aa) => ref(x, aa, B), A, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.lora!.dB, R.fdGrad((bb) => ref(x, A, bb), B, dy))).toBeLessThan(BWD);
  });
});

describe('mHC', () => {
  const [N, hc, d, iters, hcEps, normEps] = [2, 4, 3, 20, 1e-6, 1e-6];
  const mix = (2 + hc) * hc;
  const X = rnd(N * hc * d, 14, 2);
  const fn = rnd(mix * hc * d, 15);
  // large comb logits: far from uniform, so Sinkhorn needs all its rounds to converge
  const scale = Float64Array.from([0.7, -0.4, 6]);
  const base = rnd(mix, 17, 3);

  it('pre: forward (y, post, Sinkhorn comb) and backward through all 20 Sinkhorn rounds', async () => {
    const { y, post, comb, saved } = await be.mhcPreForward(f32(X), W('fn', fn, [mix, hc * d]), W('s', scale, [3]), W('b', base, [mix]), N, hc, d, iters, hcEps, normEps);
    const ref = R.mhcPre(X, fn, scale, base, N, hc, d, iters, hcEps, normEps);
    expect(R.relErr(y, ref.y)).toBeLessThan(FWD);
    expect(R.relErr(post, ref.post)).toBeLessThan(FWD);
    expect(R.relErr(comb, ref.comb)).toBeLessThan(FWD);
    const [dy, dp, dc] = [rnd(N * d, 18), rnd(N * hc, 19), rnd(N * hc * hc, 20)];
    const { dX } = await be.mhcPreBackward(saved, f32(dy), f32(dp), f32(dc));
    const scalar = (xx: Float64Array): number => {
      const r = R.mhcPre(xx, fn, scale, base, N, hc, d, iters, hcEps, normEps);
      let s = 0;
      r.y.forEach((v, i) => (s += v * dy[i]));
      r.post.forEach((v, i) => (s += v * dp[i]));
      r.comb.forEach((v, i) => (s += v * dc[i]));
      return s;
    };
    expect(R.relErr(dX, R.fdGrad(scalar, X, null))).toBeLessThan(BWD);
  });

  it('Sinkhorn output is doubly stochastic (rows and columns sum to 1)', async () => {
    const mild = Float64Array.from([0.7, -0.4, 1]);
    const { comb } = await be.mhcPreForward(f32(X), W('fn', fn, [mix, hc * d]), W('s', mild, [3]), W('b', rnd(mix, 17), [mix]), N, hc, d, iters, hcEps, normEps);
    for (let n = 0; n < N; n++) {
      for (let i = 0; i < hc; i++) {
        let row = 0;
        let col = 0;
        for (let j = 0; j < hc; j++) {
          row += comb[(n * hc + i) * hc + j];
          col += comb[(n * hc + j) * hc + i];
          expect(comb[(n * hc + i) * hc + j]).toBeGreaterThan(0);
        }
        expect(Math.abs(row - 1)).toBeLessThan(1e-3); // rows converge; columns are normalised last
        expect(Math.abs(col - 1)).toBeLessThan(1e-5);
      }
    }
  });

  it('post: forward and backward for f, res, post, comb', async () => {
    const f = rnd(N * d, 21);
    const post = rnd(N * hc, 22);
    const comb = rnd(N * hc * hc, 23);
    const { out, saved } = await be.mhcPostForward(f32(f), f32(X), f32(post), f32(comb), N, hc, d);
    expect(R.relErr(out, R.mhcPost(f, X, post, comb, N, hc, d))).toBeLessThan(FWD);
    const dout = rnd(N * hc * d, 24);
    const g = await be.mhcPostBackward(saved, f32(dout));
    expect(R.relErr(g.df, R.fdGrad((v) => R.mhcPost(v, X, post, comb, N, hc, d), f, dout))).toBeLessThan(BWD);
    expect(R.relErr(g.dres, R.fdGrad((v) => R.mhcPost(f, v, post, comb, N, hc, d), X, dout))).toBeLessThan(BWD);
    expect(R.relErr(g.dpost, R.fdGrad((v) => R.mhcPost(f, X, v, comb, N, hc, d), post, dout))).toBeLessThan(BWD);
    expect(R.relErr(g.dcomb, R.fdGrad((v) => R.mhcPost(f, X, post, v, N, hc, d), comb, dout))).toBeLessThan(BWD);
  });

  it('hc_head: forward and backward', async () => {
    const hfn = rnd(hc * hc * d, 25);
    const hs = rnd(1, 26);
    const hb = rnd(hc, 27);
    const { y, saved } = await be.hcHeadForward(f32(X), W('fn', hfn, [hc, hc * d]), W('s', hs, [1]), W('b', hb, [hc]), N, hc, d, hcEps, normEps);
    expect(R.relErr(y, R.hcHead(X, hfn, hs, hb, N, hc, d, hcEps, normEps))).toBeLessThan(FWD);
    const dy = rnd(N * d, 28);
    const { dX } = await be.hcHeadBackward(saved, f32(dy));
    expect(R.relErr(dX, R.fdGrad((v) => R.hcHead(v, hfn, hs, hb, N, hc, d, hcEps, normEps), X, dy))).toBeLessThan(BWD);
  });
});

describe('rope', () => {
  it('rotates the last rd dims (YaRN table), inverse undoes it, backward is the transpose', async () => {
    const [N, nh, hd] = [5, 2, 8];
    const params = { rd: 4, base: 160000, originalSeqLen: 65536, factor: 16, betaFast: 32, betaSlow: 1 };
    const table = ropeTable(params, 64);
    const freqs = ropeFreqs(params);
    const pos = Int32Array.from([0, 3, 17, 40, 63]);
    const x = rnd(N * nh * hd, 29);
    const { y, saved } = await be.ropeForward(f32(x), pos, table, N, nh, hd, false);
    expect(R.relErr(y, R.rope(x, pos, freqs, N, nh, hd, 4, false))).toBeLessThan(FWD);
    const back = await be.ropeForward(y, pos, table, N, nh, hd, true);
    expect(R.relErr(back.y, x)).toBeLessThan(FWD);
    const dy = rnd(N * nh * hd, 30);
    const { dx } = await be.ropeBackward(saved, f32(dy));
    expect(R.relErr(dx, R.fdGrad((v) => R.rope(v, pos, freqs, N, nh, hd, 4, false), x, dy))).toBeLessThan(BWD);
  });
});

describe('compressor pooling', () => {
  for (const overlap of [true, false]) {
    it(`${overlap ? 'overlapping (ratio 4)' : 'plain (ratio 3)'} windows per segment: forward and backward`, async () => {
      const [m, hd] = [overlap ? 4 : 3, 3];
      const segs = [10, 1, 9];
      const N = 20;
      const cw = overlap ? 2 * hd : hd;
      const a = rnd(N * cw, 31);
      const z = rnd(N * cw, 32, 2);
      const ape = rnd(m * cw, 33);
      const ref = (aa: Float64Array, zz: Float64Array) => R.compressor(aa, zz, ape, segs, m, hd, overlap);
      const { out, saved } = await be.compressorForward(f32(a), f32(z), W('ape', ape, [m, cw]), Int32Array.from(segs), N, m, hd, overlap);
      const r = ref(a, z);
      expect(out.length).toBe(r.length);
      expect(R.relErr(out, r)).toBeLessThan(FWD);
      const dout = rnd(r.length, 34);
      const g = await be.compressorBackward(saved, f32(dout));
      expect(R.relErr(g.da, R.fdGrad((v) => ref(v, z), a, dout))).toBeLessThan(BWD);
      expect(R.relErr(g.dz, R.fdGrad((v) => ref(a, v), z, dout))).toBeLessThan(BWD);
    });
  }
});

describe('sparse attention with sink', () => {
  it('forward and backward dq, dkv over chosen rows (−1 = none)', async () => {
    const [N, H, D, M, K, scale] = [4, 2, 4, 6, 3, 0.5];
    const q = rnd(N * H * D, 35, 2);
    const kv = rnd(M * D, 36, 2);
    const sink = rnd(H, 37);
    const idx = Int32Array.from([0, -1, -1, 0, 1, -1, 1, 2, 4, 3, 5, 2]);
    const { o, saved } = await be.attentionForward(f32(q), f32(kv), W('sink', sink, [H]), idx, N, H, D, M, K, scale);
    expect(R.relErr(o, R.attention(q, kv, sink, idx, N, H, D, K, scale))).toBeLessThan(FWD);
    const dout = rnd(N * H * D, 38);
    const g = await be.attentionBackward(saved, f32(dout));
    expect(R.relErr(g.dq, R.fdGrad((v) => R.attention(v, kv, sink, idx, N, H, D, K, scale), q, dout))).toBeLessThan(BWD);
    expect(R.relErr(g.dkv, R.fdGrad((v) => R.attention(q, v, sink, idx, N, H, D, K, scale), kv, dout))).toBeLessThan(BWD);
  });
});

describe('indexer top-k', () => {
  it('keeps the top visible entries by Σ_h w·ReLU(q·k), ties toward the lower index', async () => {
    const [N, M, nh, hd, topk] = [4, 6, 2, 4, 2];
    const q = rnd(N * nh * hd, 39);
    q.fill(0, 3 * nh * hd); // query 3: every score 0 → a tie, the lowest indices win
    const k = rnd(M * hd, 40);
    const w = rnd(N * nh, 41);
    const kStart = Int32Array.from([0, 0, 3, 3]);
    const kCount = Int32Array.from([1, 3, 3, 3]);
    const { idx, K } = await be.indexerTopk(f32(q), f32(k), f32(w), kStart, kCount, N, M, nh, hd, topk);
    expect(K).toBe(2);
    for (let n = 0; n < N; n++) {
      const cand: [number, number][] = [];
      for (let s = kStart[n]; s < kStart[n] + kCount[n]; s++) {
        let sc = 0;
        for (let h = 0; h < nh; h++) {
          let dot = 0;
          for (let c = 0; c < hd; c++) dot += q[(n * nh + h) * hd + c] * k[s * hd + c];
          sc += w[n * nh + h] * Math.max(dot, 0);
        }
        cand.push([sc, s]);
      }
      cand.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      const want = cand.slice(0, K).map((c) => c[1]);
      while (want.length < K) want.push(-1);
      expect(Array.from(idx.subarray(n * K, (n + 1) * K))).toEqual(want);
    }
    expect(Array.from(idx.subarray(3 * K, 4 * K))).toEqual([3, 4]);
  });
});

describe('router', () => {
  it('top-k of s + bias (ties to the lower index), weights s[idx]/Σ·scale, backward dx', async () => {
    const [N, d, E, k, scale] = [3, 4, 5, 2, 1.5];
    const x = rnd(N * d, 42);
    const Wg = rnd(E * d, 43);
    const bias = Float64Array.from([0, 0.5, 0, 0, 0.5]);
    const { weights, idx, saved } = await be.routerForward(f32(x), W('g', Wg, [E, d]), W('b', bias, [E]), null, N, d, E, k, scale);
    const { scores } = R.routerWeights(x, Wg, new Int32Array(N * k), N, d, E, k, scale);
    for (let n = 0; n < N; n++) {
      const order = [...Array(E).keys()].sort((a, b) => scores[n * E + b] + bias[b] - (scores[n * E + a] + bias[a]) || a - b);
      expect(Array.from(idx.subarray(n * k, (n + 1) * k))).toEqual(order.slice(0, k));
    }
    expect(R.relErr(weights, R.routerWeights(x, Wg, idx, N, d, E, k, scale).weights)).toBeLessThan(FWD);
    const dw = rnd(N * k, 44);
    const { dx } = await be.routerBackward(saved, f32(dw));
    expect(R.relErr(dx, R.fdGrad((v) => R.routerWeights(v, Wg, idx, N, d, E, k, scale).weights, x, dw))).toBeLessThan(BWD);
  });

  it('hash layers take the given experts', async () => {
    const [N, d, E, k] = [2, 4, 5, 2];
    const hashIdx = Int32Array.from([4, 0, 2, 2]);
    const { idx } = await be.routerForward(f32(rnd(N * d, 45)), W('g', rnd(E * d, 46), [E, d]), null, hashIdx, N, d, E, k, 1);
    expect(Array.from(idx)).toEqual([4, 0, 2, 2]);
  });
});

describe('experts (clamped SwiGLU with LoRA)', () => {
  const [N, d, I, k, E, L, r, s] = [4, 4, 3, 2, 3, 0.8, 2, 2];
  const mk = (seed: number): R.Expert64 => ({
    w1: rnd(I * d, seed, 1.5), w2: rnd(d * I, seed + 1), w3: rnd(I * d, seed + 2, 1.5),
    lora: { w1: lora64(rnd(r * d, seed + 3), rnd(I * r, seed + 4), r, s), w2: lora64(rnd(r * I, seed + 5), rnd(d * r, seed + 6), r, s), w3: lora64(rnd(r * d, seed + 7), rnd(I * r, seed + 8), r, s) },
  });
  const handles = (e: R.Expert64, i: number) => ({ w1: W(`w1.${i}`, e.w1, [I, d]), w2: W(`w2.${i}`, e.w2, [d, I]), w3: W(`w3.${i}`, e.w3, [I, d]) });
  const loraOf = (e: R.Expert64) => ({
    w1: loraF(e.lora!.w1!.A, e.lora!.w1!.B, r, s), w2: loraF(e.lora!.w2!.A, e.lora!.w2!.B, r, s), w3: loraF(e.lora!.w3!.A, e.lora!.w3!.B, r, s),
  });

  it('shared expert: forward and backward dx and every LoRA factor', async () => {
    const e = mk(50);
    const x = rnd(N * d, 60, 2);
    const { y, saved } = await be.swigluForward(f32(x), handles(e, 0), loraOf(e), N, d, I, L);
    expect(R.relErr(y, R.swiglu(x, e, N, d, I, L))).toBeLessThan(FWD);
    const dy = rnd(N * d, 61);
    const g = await be.swigluBackward(saved, f32(dy));
    expect(R.relErr(g.dx, R.fdGrad((v) => R.swiglu(v, e, N, d, I, L), x, dy))).toBeLessThan(BWD);
    for (const p of ['w1', 'w2', 'w3'] as const) {
      const lo = e.lora![p]!;
      const withA = (v: Float64Array) => R.swiglu(x, { ...e, lora: { ...e.lora, [p]: { ...lo, A: v } } }, N, d, I, L);
      const withB = (v: Float64Array) => R.swiglu(x, { ...e, lora: { ...e.lora, [p]: { ...lo, B: v } } }, N, d, I, L);
      expect(R.relErr(g.lora[p]!.dA, R.fdGrad(withA, lo.A, dy))).toBeLessThan(BWD);
      expect(R.relErr(g.lora[p]!.dB, R.fdGrad(withB, lo.B, dy))).toBeLessThan(BWD);
    }
  });

  it('routed experts: forward and backward dx, dweights and LoRA of each used expert', async () => {
    const ex = [mk(70), mk(80), mk(90)];
    const x = rnd(N * d, 100, 2);
    const idx = Int32Array.from([0, 2, 2, 0, 0, 2, 2, 0]); // expert 1 unused
    const weights = rnd(N * k, 101);
    const { y, saved } = await be.routedExpertsForward(f32(x), idx, f32(weights), ex.map(handles), ex.map(loraOf), N, d, I, k, L);
    expect(R.relErr(y, R.moe(x, idx, weights, ex, N, d, I, k, L))).toBeLessThan(FWD);
    const dy = rnd(N * d, 102);
    const g = await be.routedExpertsBackward(saved, f32(dy));
    expect(R.relErr(g.dx, R.fdGrad((v) => R.moe(v, idx, weights, ex, N, d, I, k, L), x, dy))).toBeLessThan(BWD);
    expect(R.relErr(g.dweights, R.fdGrad((v) => R.moe(x, idx, v, ex, N, d, I, k, L), weights, dy))).toBeLessThan(BWD);
    expect(g.lora[1]).toEqual({});
    const lo = ex[2].lora!.w2!;
    const withB = (v: Float64Array) => R.moe(x, idx, weights, ex.map((e, i) => (i === 2 ? { ...e, lora: { ...e.lora, w2: { ...lo, B: v } } } : e)), N, d, I, k, L);
    expect(R.relErr(g.lora[2].w2!.dB, R.fdGrad(withB, lo.B, dy))).toBeLessThan(BWD);
    const lo0 = ex[0].lora!.w1!;
    const withA = (v: Float64Array) => R.moe(x, idx, weights, ex.map((e, i) => (i === 0 ? { ...e, lora: { ...e.lora, w1: { ...lo0, A: v } } } : e)), N, d, I, k, L);
    expect(R.relErr(g.lora[0].w1!.dA, R.fdGrad(withA, lo0.A, dy))).toBeLessThan(BWD);
  });
});

describe('lm head + cross-entropy in vocabulary chunks', () => {
  it('loss over counted rows and its backward, across several vocab chunks', async () => {
    const [N, d, V] = [3, 4, 8192 + 700];
    const x = rnd(N * d, 110, 2);
    const Wh = rnd(V * d, 111);
    const targets = Int32Array.from([5, -1, 8500]);
    const { lossSum, count, saved } = await be.lmHeadLossForward(f32(x), W('head', Wh, [V, d]), targets, N, d, V);
    expect(count).toBe(2);
    const ref = R.lmHeadLoss(x, Wh, targets, N, d, V);
    expect(Math.abs(lossSum - ref) / Math.abs(ref)).toBeLessThan(FWD);
    const { dx } = await be.lmHeadLossBackward(saved, 0.5);
    const fd = R.fdGrad((v) => 0.5 * R.lmHeadLoss(v, Wh, targets, N, d, V), x, null);
    expect(R.relErr(dx, fd)).toBeLessThan(BWD);
    expect(Array.from(dx.subarray(d, 2 * d))).toEqual([0, 0, 0, 0]);
    const logits = await be.logits(f32(x), W('head', Wh, [V, d]), N, d, V);
    expect(R.relErr(logits, R.linear(x, Wh, N, d, V))).toBeLessThan(FWD);
  });
});

describe('embedding', () => {
  it('gathers rows', async () => {
    const E = rnd(5 * 3, 120);
    const out = await be.embedding(W('e', E, [5, 3]), Int32Array.from([4, 0, 4]), 3, 3);
    expect(Array.from(out)).toEqual([...E.subarray(12, 15), ...E.subarray(0, 3), ...E.subarray(12, 15)].map(Math.fround));
  });
});
