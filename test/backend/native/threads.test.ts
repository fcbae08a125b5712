// Results do not depend on the thread count: 1 and 2 threads agree to 1e-6 relative (the
// kernels never split a reduction across threads, so in practice they agree exactly).
import { afterAll, describe, expect, it } from 'vitest';
import { rawWeight, type RawExpert } from '../../../src/backend/native/addon.js';
import { quantFp4, quantFp8Block } from '../../../src/model/formats.js';
import { A, addon, bitsDiffer, randn, rng, skipNative, whyUnavailable } from './helpers.js';
import { relErr } from '../../ref64.js';

async function withThreads<T>(n: number, f: () => Promise<T>): Promise<T> {
  A().setThreads(n);
  return f();
}

describe.skipIf(skipNative)('native thread-count and instruction-set independence', () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });
  afterAll(() => {
    addon?.setThreads(0);
    addon?.setIsa('avx512');
  });

  it('grouped expert backward (dx, dw, LoRA grads) agrees between 1 and 2 threads', async () => {
    const r = rng(40);
    const [T, d, I, E, rk] = [40, 128, 96, 4, 4];
    const ex: RawExpert[] = [];
    for (let e = 0; e < E; e++) {
      const q1 = quantFp4(randn(I * d, r, 0.2), I, d);
      const q2 = quantFp4(randn(d * I, r, 0.2), d, I);
      const q3 = quantFp4(randn(I * d, r, 0.2), I, d);
      ex.push({
        w1: rawWeight('fp4', q1.weight, q1.scale, I, d), w2: rawWeight('fp4', q2.weight, q2.scale, d, I), w3: rawWeight('fp4', q3.weight, q3.scale, I, d),
        a1: randn(rk * d, r), b1: randn(I * rk, r), r1: rk, s1: 0.5, a2: randn(rk * I, r), b2: randn(d * rk, r), r2: rk, s2: 0.5, a3: randn(rk * d, r), b3: randn(I * rk, r), r3: rk, s3: 0.5,
      });
    }
    const P = T * 2;
    const idx = new Int32Array(P);
    const off = new Int32Array(E + 1);
    let p = 0;
    for (let e = 0; e < E; e++) {
      for (let t = 0; t < T; t++) if (t % E === e || (t + 1) % E === e) idx[p++] = t;
      off[e + 1] = p;
    }
    const w = randn(P, r);
    const x = randn(T * d, r);
    const g = randn(T * d, r);
    const run = async (): Promise<Float32Array[]> => {
      const dx = new Float32Array(T * d);
      const dw = new Float32Array(P);
      const grads = ex.map(() => ({ da1: new Float32Array(rk * d), db1: new Float32Array(I * rk), da2: new Float32Array(rk * I), db2: new Float32Array(d * rk), da3: new Float32Array(rk * d), db3: new Float32Array(I * rk) }));
      await A().routedExpertsBackward(dx, dw, grads, g, x, T, d, I, idx, off, w, ex, 10);
      return [dx, dw, ...grads.flatMap((gg) => Object.values(gg))];
    };
    const one = await withThreads(1, run);
    const two = await withThreads(2, run);
    one.forEach((a, i) => expect(relErr(two[i], a), `output ${i}`).toBeLessThan(1e-6));
  });

  // The experts run in waves of at most 16M floats of pair rows (kernels/cpu/lora.cpp): a wave
  // with two busy experts a thread or more runs one expert per task, others one expert after
  // another with each GEMM across the pool. Here d = 4096 and experts of 500 pairs, then one of
  // 3000: the first four experts make a wave (2000 pairs · 4096 < 16M; with the fifth, 5000
  // would not fit), the last two another. 1 thread runs both waves per task, 2 threads the first
  // per task and the second one expert after another, 8 threads both one after another: the
  // bits must not move (each token's row gets its pairs in pair order either way).
  it('expert waves, run per task or one expert after another, give the same bits (forward, kept h1/h3, backward)', async () => {
    const r = rng(44);
    const [d, I, rk] = [4096, 32, 4];
    const sizes = [500, 500, 500, 500, 3000, 500];
    const T = 3000;
    const E = sizes.length;
    const ex: RawExpert[] = sizes.map(() => {
      const q1 = quantFp4(randn(I * d, r, 0.05), I, d);
      const q2 = quantFp4(randn(d * I, r, 0.2), d, I);
      const q3 = quantFp4(randn(I * d, r, 0.05), I, d);
      return {
        w1: rawWeight('fp4', q1.weight, q1.scale, I, d), w2: rawWeight('fp4', q2.weight, q2.scale, d, I), w3: rawWeight('fp4', q3.weight, q3.scale, I, d),
        a1: randn(rk * d, r, 0.05), b1: randn(I * rk, r), r1: rk, s1: 0.5, a2: randn(rk * I, r), b2: randn(d * rk, r), r2: rk, s2: 0.5, a3: randn(rk * d, r, 0.05), b3: randn(I * rk, r), r3: rk, s3: 0.5,
      };
    });
    const off = new Int32Array(E + 1);
    sizes.forEach((n, e) => { off[e + 1] = off[e]! + n; });
    const P = off[E]!;
    // expert e takes n tokens from a rotating start, each token at most once per expert
    const idx = new Int32Array(P);
    sizes.forEach((n, e) => { for (let j = 0; j < n; j++) idx[off[e]! + j] = (e * 700 + j) % T; });
    const w = randn(P, r);
    const x = randn(T * d, r);
    const g = randn(T * d, r);
    const run = async (): Promise<Float32Array[]> => {
      const out = new Float32Array(T * d);
      const h13 = new Float32Array(2 * P * I);
      await A().routedExpertsForward(out, x, T, d, I, idx, off, w, ex, 10, h13);
      const dx = new Float32Array(T * d);
      const dw = new Float32Array(P);
      const grads = ex.map(() => ({ da1: new Float32Array(rk * d), db1: new Float32Array(I * rk), da2: new Float32Array(rk * I), db2: new Float32Array(d * rk), da3: new Float32Array(rk * d), db3: new Float32Array(I * rk) }));
      await A().routedExpertsBackward(dx, dw, grads, g, x, T, d, I, idx, off, w, ex, 10, h13);
      return [out, h13, dx, dw, ...grads.flatMap((gg) => Object.values(gg))];
    };
    const serial = await withThreads(8, run);
    expect(serial[0]!.some((v) => v !== 0)).toBe(true);
    for (const n of [1, 2]) {
      const got = await withThreads(n, run);
      got.forEach((a, i) => expect(bitsDiffer(a, serial[i]!), `${n} thread(s), output ${i}`).toBeNull());
    }
  });

  it('attention backward, FP8 linear backward and the chunked LM-head agree between 1 and 2 threads', async () => {
    const r = rng(41);
    const [T, H, D, M, K] = [33, 8, 32, 40, 12];
    const q = randn(T * H * D, r);
    const kv = randn(M * D, r);
    const sink = randn(H, r);
    const idx = Int32Array.from({ length: T * K }, (_, i) => ((i * 7) % (M + 3)) - 3);
    const g = randn(T * H * D, r);
    const [inF, outF, rk] = [256, 200, 8];
    const q8 = quantFp8Block(randn(outF * inF, r, 0.2), outF, inF);
    const W8 = rawWeight('fp8', q8.weight, q8.scale, outF, inF);
    const xl = randn(T * inF, r);
    const gl = randn(T * outF, r);
    const Al = randn(rk * inF, r);
    const Bl = randn(outF * rk, r);
    const V = 1000;
    const head = randn(V * inF, r, 0.1);
    const tg = Int32Array.from({ length: T }, (_, t) => (t * 31) % V);
    const wts = new Float32Array(T).fill(1 / T);
    const run = async (): Promise<Float32Array[]> => {
      const o = new Float32Array(T * H * D);
      const lse = new Float32Array(T * H);
      await A().attentionForward(o, lse, q, kv, idx, sink, T, H, D, M, K, 0.2);
      const dq = new Float32Array(q.length);
      const dkv = new Float32Array(kv.length);
      const ds = new Float32Array(H);
      await A().attentionBackward(dq, dkv, ds, g, lse, q, kv, idx, sink, T, H, D, M, K, 0.2);
      const dx = new Float32Array(xl.length);
      const dA = new Float32Array(Al.length);
      const dB = new Float32Array(Bl.length);
      await A().linearBackward(dx, dA, dB, gl, xl, W8, Al, Bl, rk, 0.5, T, 1);
      const loss = new Float32Array(T);
      const dh = new Float32Array(T * inF);
      await A().lmheadCe(loss, dh, xl, rawWeight('f32', head, null, V, inF), tg, wts, T, 256);
      return [o, dq, dkv, ds, dx, dA, dB, loss, dh];
    };
    const one = await withThreads(1, run);
    const two = await withThreads(2, run);
    one.forEach((a, i) => expect(relErr(two[i], a), `output ${i}`).toBeLessThan(1e-6));
  });

  // the scalar, AVX2 and AVX-512 paths differ only in summation order and the exp polynomial
  it('scalar, AVX2 and AVX-512 paths give the same expert forward and attention (1e-5)', async () => {
    const r = rng(42);
    const [T, d, I, rk] = [9, 64, 48, 2];
    const q1 = quantFp8Block(randn(I * d, r, 0.2), I, d);
    const q2 = quantFp8Block(randn(d * I, r, 0.2), d, I);
    const ex: RawExpert[] = [{
      w1: rawWeight('fp8', q1.weight, q1.scale, I, d), w2: rawWeight('fp8', q2.weight, q2.scale, d, I), w3: rawWeight('fp8', q1.weight, q1.scale, I, d),
      a1: randn(rk * d, r), b1: randn(I * rk, r), r1: rk, s1: 0.5, a2: randn(rk * I, r), b2: randn(d * rk, r), r2: rk, s2: 0.5,
    }];
    const x = randn(T * d, r);
    const idx = Int32Array.from({ length: T }, (_, i) => i);
    const off = Int32Array.from([0, T]);
    const w = randn(T, r);
    const [H, D, M, K] = [3, 32, 12, 5];
    const q = randn(T * H * D, r);
    const kv = randn(M * D, r);
    const sink = randn(H, r);
    const aidx = Int32Array.from({ length: T * K }, (_, i) => ((i * 5) % (M + 2)) - 2);
    const run = async (): Promise<Float32Array[]> => {
      const out = new Float32Array(T * d);
      await A().routedExpertsForward(out, x, T, d, I, idx, off, w, ex, 1.5);
      const o = new Float32Array(T * H * D);
      const lse = new Float32Array(T * H);
      await A().attentionForward(o, lse, q, kv, aidx, sink, T, H, D, M, K, 0.3);
      return [out, o, lse];
    };
    const best = await run();
    for (const isa of ['avx2', 'scalar'] as const) {
      A().setIsa(isa);
      const got = await run();
      got.forEach((g, i) => expect(relErr(g, best[i]), `${isa} output ${i}`).toBeLessThan(1e-5));
    }
    A().setIsa('avx512');
  });
});
