// Per-op kernels: each forward against its float64 reference (test/ref64.ts), each backward
// against float64 central differences of that reference. Bounds are stated per op.
import { describe, expect, it } from 'vitest';
import { rawWeight } from '../../../src/backend/native/addon.js';
import { NativeBackend } from '../../../src/backend/native/index.js';
import { Tape } from '../../../src/backend/tape.js';
import { f32ToBf16Bytes, bf16BytesToF32 } from '../../../src/model/formats.js';
import { A, addon, randn, rng, skipNative, whyUnavailable } from './helpers.js';
import * as R from '../../ref64.js';
import { contract, fdGrad, f64, relErr } from '../../ref64.js';

type Arr = ArrayLike<number>;

describe.skipIf(skipNative)('native op kernels', () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });

  // the tape's gradient sums: the same float adds as the JS loop, so the same bits
  it('addInto sums element-wise across the pool, bit for bit the JS loop; a length mismatch is refused', () => {
    const r = rng(31);
    const n = 200_003;
    const dst = randn(n, r);
    const src = randn(n, r, 1e-3);
    dst[5] = 1e30;
    src[5] = -1e30; // cancels exactly
    src[7] = Number.NaN;
    const want = dst.slice();
    for (let i = 0; i < n; i++) want[i] += src[i];
    A().addInto(dst, src);
    expect(Buffer.from(dst.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    expect(() => A().addInto(dst, src.subarray(1))).toThrow('addInto: dst and src differ in length');
  });

  it('the tape sums the gradients that meet at a buffer with the backend\'s addInto, the JS loop\'s bits', async () => {
    const be = new NativeBackend(A());
    for (const n of [100, 70_001]) { // under and over the length the native backend hands to the pool
      const r = rng(32 + n);
      const x = randn(n, r);
      const [ga, gb] = [randn(n, r), randn(n, r)];
      const calls: number[] = [];
      const tape = new Tape(null, (dst, src) => {
        calls.push(src.length);
        be.addInto(dst, src);
      });
      // x feeds two ops: its gradient is the sum of theirs
      const [ya, yb] = [new Float32Array(n), new Float32Array(n)];
      tape.record([x], [ya], async () => [ga.slice()]);
      tape.record([x], [yb], async () => [gb.slice()]);
      const grads = await tape.backward([[ya, new Float32Array(n)], [yb, new Float32Array(n)]]);
      const want = gb.slice();
      for (let i = 0; i < n; i++) want[i] += ga[i];
      expect(calls).toEqual([n]);
      expect(Buffer.from(grads.get(x)!.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    }
  });

  it('rmsnorm: forward 1e-6, dx 1e-4 vs float64 differences', async () => {
    const r = rng(20);
    const T = 5;
    const C = 24;
    const x = randn(T * C, r);
    const w = randn(C, r);
    const y = new Float32Array(T * C);
    const rstd = new Float32Array(T);
    await A().rmsnormForward(y, rstd, x, w, T, C, 1e-6);
    expect(relErr(y, R.rmsnorm(x, w, T, C, 1e-6))).toBeLessThan(1e-6);
    const g = randn(T * C, r);
    const dx = new Float32Array(T * C);
    const dw = new Float32Array(C);
    await A().rmsnormBackward(dx, dw, g, x, w, rstd, T, C);
    expect(relErr(dx, fdGrad((v) => contract(R.rmsnorm(v, w, T, C, 1e-6), g), x))).toBeLessThan(1e-4);
    expect(relErr(dw, fdGrad((v) => contract(R.rmsnorm(x, v, T, C, 1e-6), g), w))).toBeLessThan(1e-4);
  });

  it('rope: rotates interleaved pairs of the last rd dims at each position (1e-6); inverse undoes it', async () => {
    const r = rng(21);
    const T = 4;
    const H = 2;
    const D = 10;
    const rd = 6;
    const maxPos = 9;
    const cos = new Float32Array(maxPos * 3);
    const sin = new Float32Array(maxPos * 3);
    for (let p = 0; p < maxPos; p++)
      for (let k = 0; k < 3; k++) {
        cos[p * 3 + k] = Math.cos(p * (k + 1) * 0.3);
        sin[p * 3 + k] = Math.sin(p * (k + 1) * 0.3);
      }
    const pos = Int32Array.from([0, 5, 8, 2]);
    const x = randn(T * H * D, r);
    const y = x.slice();
    await A().rope(y, pos, cos, sin, maxPos, T, H, D, rd, false);
    const want = f64(x);
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++)
        for (let k = 0; k < 3; k++) {
          const o = (t * H + h) * D + D - rd + 2 * k;
          const c = cos[pos[t] * 3 + k];
          const s = sin[pos[t] * 3 + k];
          want[o] = x[o] * c - x[o + 1] * s;
          want[o + 1] = x[o] * s + x[o + 1] * c;
        }
    expect(relErr(y, want)).toBeLessThan(1e-6);
    // out of place (y2 = x rotated, x untouched) gives the same bits as in place
    const y2 = new Float32Array(x.length);
    const x0 = x.slice();
    await A().rope(y2, pos, cos, sin, maxPos, T, H, D, rd, false, x);
    expect(y2).toEqual(y);
    expect(x).toEqual(x0);
    await A().rope(y, pos, cos, sin, maxPos, T, H, D, rd, true);
    expect(relErr(y, x)).toBeLessThan(1e-6);
  });

  it('embedding gathers BF16 rows exactly', async () => {
    const r = rng(22);
    const E = randn(7 * 5, r);
    const bytes = f32ToBf16Bytes(E);
    const deq = bf16BytesToF32(bytes);
    const ids = Int32Array.from([3, 0, 6, 3]);
    const out = new Float32Array(4 * 5);
    await A().embedding(out, ids, rawWeight('bf16', bytes, null, 7, 5), 4);
    const want = new Float32Array(20);
    ids.forEach((id, t) => want.set(deq.subarray(id * 5, id * 5 + 5), t * 5));
    expect(Array.from(out)).toEqual(Array.from(want));
  });

  it('sparse sink attention: forward 1e-5; dq, dkv, dsink 1e-4 vs float64 differences', async () => {
    const r = rng(23);
    const T = 5;
    const H = 3;
    const D = 8;
    const M = 9;
    const K = 4;
    const scale = 1 / Math.sqrt(D);
    const q = randn(T * H * D, r);
    const kv = randn(M * D, r);
    const sink = randn(H, r);
    const idx = new Int32Array(T * K).fill(-1);
    for (let t = 0; t < T; t++) for (let k = 0; k <= Math.min(t, K - 1); k++) idx[t * K + k] = (t * 2 + k * 3) % M;
    const o = new Float32Array(T * H * D);
    const lse = new Float32Array(T * H);
    await A().attentionForward(o, lse, q, kv, idx, sink, T, H, D, M, K, scale);
    expect(relErr(o, R.attention(q, kv, sink, idx, T, H, D, K, scale))).toBeLessThan(1e-5);
    const g = randn(o.length, r);
    const dq = new Float32Array(q.length);
    const dkv = new Float32Array(kv.length);
    const dsink = new Float32Array(H);
    await A().attentionBackward(dq, dkv, dsink, g, lse, q, kv, idx, sink, T, H, D, M, K, scale);
    expect(relErr(dq, fdGrad((v) => contract(R.attention(v, kv, sink, idx, T, H, D, K, scale), g), q))).toBeLessThan(1e-4);
    expect(relErr(dkv, fdGrad((v) => contract(R.attention(q, v, sink, idx, T, H, D, K, scale), g), kv))).toBeLessThan(1e-4);
    expect(relErr(dsink, fdGrad((v) => contract(R.attention(q, kv, v, idx, T, H, D, K, scale), g), sink))).toBeLessThan(1e-4);
  });

  // bf16 mode gathers kv as bf16 rounded once per call, packed straight into the GEMM's pairs:
  // the bits bf16 mode gives on kv rounded to bf16 beforehand (rounding twice is rounding once),
  // which fails if the per-call rounding is not the GEMM's own (nearest even at bit 16). The
  // backward's per-block dkv accumulators are kept between calls and only the rows a block
  // touches are zeroed: a call after one on other inputs gives the same bits as before it.
  it('sparse sink attention: bf16 mode on kv equals bf16 mode on bf16(kv) bit for bit, within 2e-2 of fp32; backward repeatable across calls', async () => {
    const r = rng(31);
    const [T, H, D, M, K] = [14, 4, 96, 40, 12];
    const scale = 1 / Math.sqrt(D);
    const inputs = () => {
      const q = randn(T * H * D, r);
      const kv = randn(M * D, r);
      const sink = randn(H, r);
      const g = randn(T * H * D, r);
      const idx = new Int32Array(T * K).fill(-1);
      for (let t = 0; t < T; t++) for (let k = 0; k < K; k++) if ((t + k) % 5 !== 4) idx[t * K + k] = (t * 7 + k * 3) % (t < 6 ? 17 : M);
      return { q, kv, sink, g, idx };
    };
    const run = async (x: ReturnType<typeof inputs>, kv = x.kv) => {
      const o = new Float32Array(T * H * D);
      const lse = new Float32Array(T * H);
      await A().attentionForward(o, lse, x.q, kv, x.idx, x.sink, T, H, D, M, K, scale);
      const dq = new Float32Array(T * H * D);
      const dkv = new Float32Array(M * D);
      const dsink = new Float32Array(H);
      await A().attentionBackward(dq, dkv, dsink, x.g, lse, x.q, kv, x.idx, x.sink, T, H, D, M, K, scale);
      return { o, lse, dq, dkv, dsink };
    };
    const X = inputs();
    const Y = inputs();
    const first = await run(X);
    await run(Y);
    expect(await run(X)).toEqual(first);
    if (!addon?.info().cpuBf16) return;
    const bf = (v: Float32Array): Float32Array => bf16BytesToF32(f32ToBf16Bytes(v));
    expect(A().setBf16(true)).toBe(true);
    try {
      const b = await run(X);
      expect(await run(X, bf(X.kv))).toEqual(b);
      for (const k of ['o', 'dq', 'dkv'] as const) expect(relErr(b[k], first[k]), k).toBeLessThan(2e-2);
    } finally {
      A().setBf16(false);
    }
  });

  it('mHC pre with the 20-round Sinkhorn: forward 1e-5; dX through pre, post and comb 2e-4 vs float64 differences', async () => {
    const r = rng(24);
    const T = 3;
    const hc = 4;
    const d = 6;
    const nm = (2 + hc) * hc;
    const X = randn(T * hc * d, r);
    const fn = randn(nm * hc * d, r, 0.3);
    const scale = Float32Array.from([0.8, 1.1, 0.9]);
    const base = randn(nm, r, 0.5);
    const [iters, eps, ne] = [20, 1e-6, 1e-6];
    const y = new Float32Array(T * d);
    const post = new Float32Array(T * hc);
    const comb = new Float32Array(T * hc * hc);
    const mix = new Float32Array(T * nm);
    await A().mhcPreForward(y, post, comb, mix, X, fn, scale, base, T, hc, d, true, iters, eps, ne);
    const { y: wy, post: wp, comb: wc } = R.mhcPre(X, fn, scale, base, T, hc, d, iters, eps, ne);
    expect(relErr(y, wy)).toBeLessThan(1e-5);
    expect(relErr(post, wp)).toBeLessThan(1e-5);
    expect(relErr(comb, wc)).toBeLessThan(1e-5);
    const gy = randn(y.length, r);
    const gp = randn(post.length, r);
    const gc = randn(comb.length, r);
    const dX = new Float32Array(X.length);
    await A().mhcPreBackward(dX, gy, gp, gc, mix, X, fn, scale, base, T, hc, d, true, iters, eps, ne);
    const loss = (v: Float64Array): number => {
      const { y: a, post: b, comb: c } = R.mhcPre(v, fn, scale, base, T, hc, d, iters, eps, ne);
      return contract(a, gy) + contract(b, gp) + contract(c, gc);
    };
    expect(relErr(dX, fdGrad(loss, X))).toBeLessThan(2e-4);
  });

  // mhc_pre runs its tokens four at a time (each row of fn read once for the four): a token's
  // bits must not depend on its neighbours, so T = 9 at once (groups of 4, 4, 1) equals nine
  // single-token calls, forward and backward, with n = hc·d = 400 (the vector body and a tail)
  it('mHC pre: a token\'s mixes, output and dX do not depend on the tokens beside it (bit for bit)', async () => {
    const r = rng(26);
    const [T, hc, d, iters, eps, ne] = [9, 4, 100, 20, 1e-6, 1e-6];
    const nm = (2 + hc) * hc;
    const n = hc * d;
    const X = randn(T * n, r);
    const fn = randn(nm * n, r, 0.05);
    const scale = Float32Array.from([0.8, 1.1, 0.9]);
    const base = randn(nm, r, 0.5);
    const gy = randn(T * d, r);
    const gp = randn(T * hc, r);
    const gc = randn(T * hc * hc, r);
    const run = async (t0: number, t1: number) => {
      const k = t1 - t0;
      const [y, post, comb, mix, dX] = [new Float32Array(k * d), new Float32Array(k * hc), new Float32Array(k * hc * hc), new Float32Array(k * nm), new Float32Array(k * n)];
      const Xs = X.slice(t0 * n, t1 * n);
      await A().mhcPreForward(y, post, comb, mix, Xs, fn, scale, base, k, hc, d, true, iters, eps, ne);
      await A().mhcPreBackward(dX, gy.slice(t0 * d, t1 * d), gp.slice(t0 * hc, t1 * hc), gc.slice(t0 * hc * hc, t1 * hc * hc), mix, Xs, fn, scale, base, k, hc, d, true, iters, eps, ne);
      return [y, post, comb, mix, dX];
    };
    const all = await run(0, T);
    const alone = [[], [], [], [], []] as number[][];
    for (let t = 0; t < T; t++) (await run(t, t + 1)).forEach((a, i) => alone[i]!.push(...a));
    all.forEach((a, i) => expect(Buffer.from(a.buffer).equals(Buffer.from(Float32Array.from(alone[i]!).buffer)), `output ${i}`).toBe(true));
  });

  // The AVX-512 path runs four tokens' Sinkhorn projections in one set of registers and keeps
  // dX's rows in registers across fn's rows; each add, divide and FMA is the scalar path's, in
  // its order. Inputs whose dot products are exact in float32 (small integers, fn in 64ths) take
  // the one place the paths may differ (the order of a dot product's sum) out of play, so the
  // outputs must match bit for bit: T = 9 (groups of 4, 4, 1), n = 400 (a half-vector tail).
  it('mHC pre: every ISA path gives the same bits as the scalar path', async () => {
    const r = rng(27);
    const [T, hc, d, iters, eps, ne] = [9, 4, 100, 20, 1e-6, 1e-6];
    const nm = (2 + hc) * hc;
    const n = hc * d;
    const ints = (len: number, k: number, div = 1): Float32Array => Float32Array.from({ length: len }, () => (Math.floor(r() * (2 * k + 1)) - k) / div);
    const X = ints(T * n, 3);
    const fn = ints(nm * n, 4, 64);
    const scale = Float32Array.from([0.8, 1.1, 0.9]);
    const base = randn(nm, r, 0.5);
    const [gy, gp, gc] = [ints(T * d, 3), randn(T * hc, r), randn(T * hc * hc, r)];
    const run = async () => {
      const [y, post, comb, mix, dX] = [new Float32Array(T * d), new Float32Array(T * hc), new Float32Array(T * hc * hc), new Float32Array(T * nm), new Float32Array(T * n)];
      await A().mhcPreForward(y, post, comb, mix, X, fn, scale, base, T, hc, d, true, iters, eps, ne);
      await A().mhcPreBackward(dX, gy, gp, gc, mix, X, fn, scale, base, T, hc, d, true, iters, eps, ne);
      return { y, post, comb, mix, dX };
    };
    const cpu = A().info().isa;
    const got = new Map<string, Record<string, Float32Array>>();
    try {
      for (const isa of ['scalar', 'avx2', 'avx512'] as const) {
        A().setIsa(isa);
        got.set(isa, await run());
      }
    } finally {
      A().setIsa(cpu);
    }
    const want = got.get('scalar')!;
    for (const [isa, outs] of got)
      for (const [name, a] of Object.entries(outs)) expect(Buffer.from(a.buffer).equals(Buffer.from(want[name]!.buffer)), `${isa} ${name}`).toBe(true);
    // and the comb is a projection (rows and columns sum to about 1), not a copy of zeros
    expect(Math.abs(want.comb!.slice(0, 4).reduce((s, v) => s + v, 0) - 1)).toBeLessThan(1e-3);
  });

  it('hc_head: forward 1e-5, dX 1e-4 vs float64 differences', async () => {
    const r = rng(25);
    const T = 3;
    const hc = 4;
    const d = 5;
    const X = randn(T * hc * d, r);
    const fn = randn(hc * hc * d, r, 0.3);
    const scale = Float32Array.from([0.7]);
    const base = randn(hc, r);
    const y = new Float32Array(T * d);
    const mix = new Float32Array(T * hc);
    await A().mhcPreForward(y, null, null, mix, X, fn, scale, base, T, hc, d, false, 20, 1e-6, 1e-6);
    expect(relErr(y, R.hcHead(X, fn, scale, base, T, hc, d, 1e-6, 1e-6))).toBeLessThan(1e-5);
    const g = randn(y.length, r);
    const dX = new Float32Array(X.length);
    await A().mhcPreBackward(dX, g, null, null, mix, X, fn, scale, base, T, hc, d, false, 20, 1e-6, 1e-6);
    expect(relErr(dX, fdGrad((v) => contract(R.hcHead(v, fn, scale, base, T, hc, d, 1e-6, 1e-6), g), X))).toBeLessThan(1e-4);
  });

  it('mHC post: forward 1e-6; dF, dX, dpost, dcomb 1e-5 vs float64 differences', async () => {
    const r = rng(26);
    const T = 2;
    const hc = 3;
    const d = 4;
    const F = randn(T * d, r);
    const X = randn(T * hc * d, r);
    const post = randn(T * hc, r);
    const comb = randn(T * hc * hc, r);
    const out = new Float32Array(T * hc * d);
    await A().mhcPostForward(out, F, X, post, comb, T, hc, d);
    expect(relErr(out, R.mhcPost(F, X, post, comb, T, hc, d))).toBeLessThan(1e-6);
    const g = randn(out.length, r);
    const [dF, dX, dp, dc] = [new Float32Array(F.length), new Float32Array(X.length), new Float32Array(post.length), new Float32Array(comb.length)];
    await A().mhcPostBackward(dF, dX, dp, dc, g, F, X, post, comb, T, hc, d);
    const L = (f: Arr, x: Arr, p: Arr, c: Arr): number => contract(R.mhcPost(f, x, p, c, T, hc, d), g);
    expect(relErr(dF, fdGrad((v) => L(v, X, post, comb), F))).toBeLessThan(1e-5);
    expect(relErr(dX, fdGrad((v) => L(F, v, post, comb), X))).toBeLessThan(1e-5);
    expect(relErr(dp, fdGrad((v) => L(F, X, v, comb), post))).toBeLessThan(1e-5);
    expect(relErr(dc, fdGrad((v) => L(F, X, post, v), comb))).toBeLessThan(1e-5);
  });

  it('compressor pooling per segment, plain (ratio 3) and overlapping (ratio 4): forward 1e-6, da/dz 1e-4', async () => {
    const r = rng(27);
    for (const [m, overlap, segs] of [[3, false, [7, 6]], [4, true, [9, 12, 3]]] as const) {
      const hd = 5;
      const W = overlap ? 2 * hd : hd;
      const T = segs.reduce((a, b) => a + b, 0);
      const a = randn(T * W, r);
      const z = randn(T * W, r);
      const ape = randn(m * W, r);
      const want = R.compressor(a, z, ape, [...segs], m, hd, overlap);
      const out = new Float32Array(want.length);
      await A().compressorForward(out, a, z, ape, Int32Array.from(segs), m, hd, overlap);
      expect(relErr(out, want)).toBeLessThan(1e-6);
      const g = randn(out.length, r);
      const da = new Float32Array(a.length);
      const dz = new Float32Array(z.length);
      await A().compressorBackward(da, dz, g, a, z, ape, Int32Array.from(segs), m, hd, overlap);
      expect(relErr(da, fdGrad((v) => contract(R.compressor(v, z, ape, [...segs], m, hd, overlap), g), a))).toBeLessThan(1e-4);
      expect(relErr(dz, fdGrad((v) => contract(R.compressor(a, v, ape, [...segs], m, hd, overlap), g), z))).toBeLessThan(1e-4);
    }
  });

  it('LM head + cross-entropy in vocabulary chunks: per-position loss 1e-5, dh 1e-4 vs float64 differences', async () => {
    const r = rng(28);
    const T = 4;
    const d = 8;
    const V = 300; // three chunks of 128
    const h = randn(T * d, r);
    const W = randn(V * d, r, 0.5);
    const tg = Int32Array.from([5, 299, 0, 130]);
    const wts = Float32Array.from([1, 1, 0, 0.5]);
    const loss = new Float32Array(T);
    const dh = new Float32Array(T * d);
    await A().lmheadCe(loss, dh, h, rawWeight('f32', W, null, V, d), tg, wts, T, 128);
    const want = R.crossEntropyRows(h, W, tg, T, d, V);
    want[2] = 0;
    expect(relErr(loss, want)).toBeLessThan(1e-5);
    const lossW = (v: Float64Array): number => contract(R.crossEntropyRows(v, W, tg, T, d, V), wts);
    expect(relErr(dh, fdGrad(lossW, h))).toBeLessThan(1e-4);
    // with top1 (the eval's pass): every row's first largest logit, the uncounted row 2 too, and
    // the same loss and dh bits. Position 3's largest logit is at vocabulary rows 40, 200 and 260
    // alike (a tie across the three chunks: the lowest id wins), position 1's at row 0
    const W2 = W.slice();
    for (let c = 0; c < d; c++) {
      W2[40 * d + c] = W2[200 * d + c] = W2[260 * d + c] = 4 * h[3 * d + c]!;
      W2[c] = 4 * h[d + c]!;
    }
    const run = async (top1: Int32Array | null) => {
      const [l, g] = [new Float32Array(T), new Float32Array(T * d)];
      await A().lmheadCe(l, g, h, rawWeight('f32', W2, null, V, d), tg, wts, T, 128, top1);
      return [l, g];
    };
    const top1 = new Int32Array(T);
    const [l1, g1] = await run(top1);
    const [l0, g0] = await run(null);
    expect(Buffer.from(l1!.buffer).equals(Buffer.from(l0!.buffer))).toBe(true);
    expect(Buffer.from(g1!.buffer).equals(Buffer.from(g0!.buffer))).toBe(true);
    const want1 = Array.from({ length: T }, (_, t) => {
      let best = 0;
      let top = -Infinity;
      for (let v = 0; v < V; v++) {
        let z = 0;
        for (let c = 0; c < d; c++) z += h[t * d + c]! * W2[v * d + c]!;
        if (z > top + 1e-4) [top, best] = [z, v]; // float32 noise aside, the first of equal logits
      }
      return best;
    });
    expect(Array.from(top1)).toEqual(want1);
    expect([want1[1], want1[3]]).toEqual([0, 40]);
  });

  it('indexer top-k: weighted ReLU scores over each query\'s visible entries, ties toward the lower index', async () => {
    const r = rng(29);
    const T = 4;
    const M = 6;
    const nh = 2;
    const hd = 4;
    const q = randn(T * nh * hd, r);
    const k = randn(M * hd, r);
    k.set(k.subarray(0, hd), 3 * hd); // entry 3 duplicates entry 0: an exact tie
    const w = randn(T * nh, r);
    const kStart = Int32Array.from([0, 0, 1, 0]);
    const kCount = Int32Array.from([0, 2, 5, 6]);
    const K = 3;
    const idx = new Int32Array(T * K);
    await A().indexerTopk(idx, q, k, w, kStart, kCount, T, M, nh, hd, K);
    for (let t = 0; t < T; t++) {
      const sc: [number, number][] = [];
      for (let s = kStart[t]; s < kStart[t] + kCount[t]; s++) {
        let v = 0;
        for (let h = 0; h < nh; h++) {
          let dd = 0;
          for (let c = 0; c < hd; c++) dd += q[(t * nh + h) * hd + c] * k[s * hd + c];
          v += w[t * nh + h] * Math.max(0, dd);
        }
        sc.push([v, s]);
      }
      const take = Math.min(K, sc.length);
      const chosen = take < sc.length ? sc.sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, take).map((e) => e[1]) : sc.map((e) => e[1]);
      const want = [...chosen, ...Array(K - take).fill(-1)];
      expect(Array.from(idx.subarray(t * K, (t + 1) * K)), `query ${t}`).toEqual(want);
    }
  });
});
