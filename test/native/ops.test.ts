// Per-op kernels: each forward against a float64 reference written here, each backward against
// float64 central differences of that reference. Bounds are stated per op.
import { describe, expect, it } from 'vitest';
import { rawWeight } from '../../src/backend/native/addon.js';
import { f32ToBf16Bytes, bf16BytesToF32 } from '../../src/model/formats.js';
import { A, addon, contract, fdGrad, f64, randn, relErr, rng, sigmoid, skipNative, whyUnavailable } from './helpers.js';

type Arr = ArrayLike<number>;

// y = x / sqrt(mean(x²) + eps) · w
function rmsRef(x: Arr, w: Arr | null, T: number, C: number, eps: number): Float64Array {
  const y = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) y[t * C + c] = x[t * C + c] * r * (w ? w[c] : 1);
  }
  return y;
}

// o = Σ_j p_j kv_j, p = e^s / (Σ e^s + e^sink), s = scale·q·kv_j over idx[t] (−1 none)
function attnRef(q: Arr, kv: Arr, idx: Int32Array, sink: Arr, T: number, H: number, D: number, K: number, scale: number): Float64Array {
  const o = new Float64Array(T * H * D);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const js: number[] = [];
      for (let k = 0; k < K; k++) if (idx[t * K + k] >= 0) js.push(idx[t * K + k]);
      const s = js.map((j) => {
        let v = 0;
        for (let c = 0; c < D; c++) v += q[(t * H + h) * D + c] * kv[j * D + c];
        return v * scale;
      });
      const m = Math.max(sink[h], ...s);
      const e = s.map((v) => Math.exp(v - m));
      const z = e.reduce((a, b) => a + b, 0) + Math.exp(sink[h] - m);
      js.forEach((j, i) => {
        for (let c = 0; c < D; c++) o[(t * H + h) * D + c] += (e[i] / z) * kv[j * D + c];
      });
    }
  return o;
}

// Sinkhorn: row softmax + eps; columns / (sum + eps); then iters−1 × (rows, columns)
function sinkhornRef(L: Arr, n: number, iters: number, eps: number): Float64Array {
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const m = Math.max(...Array.from({ length: n }, (_, j) => L[i * n + j]));
    let z = 0;
    for (let j = 0; j < n; j++) z += (c[i * n + j] = Math.exp(L[i * n + j] - m));
    for (let j = 0; j < n; j++) c[i * n + j] = c[i * n + j] / z + eps;
  }
  const norm = (cols: boolean): void => {
    for (let a = 0; a < n; a++) {
      let s = 0;
      for (let b = 0; b < n; b++) s += cols ? c[b * n + a] : c[a * n + b];
      for (let b = 0; b < n; b++) (cols ? (c[b * n + a] /= s + eps) : (c[a * n + b] /= s + eps));
    }
  };
  norm(true);
  for (let it = 1; it < iters; it++) {
    norm(false);
    norm(true);
  }
  return c;
}

// mHC pre: [y (T,d) | post (T,hc) | comb (T,hc,hc)] concatenated (full), or y only (hc_head)
function mhcPreRef(X: Arr, fn: Arr, scale: Arr, base: Arr, T: number, hc: number, d: number, full: boolean, iters: number, eps: number, normEps: number): Float64Array[] {
  const nm = full ? (2 + hc) * hc : hc;
  const n = hc * d;
  const y = new Float64Array(T * d);
  const post = new Float64Array(T * hc);
  const comb = new Float64Array(T * hc * hc);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += X[t * n + i] ** 2;
    const r = 1 / Math.sqrt(ss / n + normEps);
    const m = new Float64Array(nm);
    for (let k = 0; k < nm; k++) {
      let v = 0;
      for (let i = 0; i < n; i++) v += fn[k * n + i] * X[t * n + i];
      m[k] = v * r;
    }
    for (let i = 0; i < hc; i++) {
      const pre = sigmoid(m[i] * scale[0] + base[i]) + eps;
      for (let c = 0; c < d; c++) y[t * d + c] += pre * X[t * n + i * d + c];
    }
    if (!full) continue;
    for (let j = 0; j < hc; j++) post[t * hc + j] = 2 * sigmoid(m[hc + j] * scale[1] + base[hc + j]);
    const L = Array.from({ length: hc * hc }, (_, k) => m[2 * hc + k] * scale[2] + base[2 * hc + k]);
    comb.set(sinkhornRef(L, hc, iters, eps), t * hc * hc);
  }
  return full ? [y, post, comb] : [y];
}

// out_j = post_j F + Σ_i comb_ij X_i
function mhcPostRef(F: Arr, X: Arr, post: Arr, comb: Arr, T: number, hc: number, d: number): Float64Array {
  const out = new Float64Array(T * hc * d);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < hc; j++)
      for (let c = 0; c < d; c++) {
        let v = post[t * hc + j] * F[t * d + c];
        for (let i = 0; i < hc; i++) v += comb[(t * hc + i) * hc + j] * X[(t * hc + i) * d + c];
        out[(t * hc + j) * d + c] = v;
      }
  return out;
}

// compressor pooling per segment (see kernels/cpu/compressor.h)
function compRef(a: Arr, z: Arr, ape: Arr, segs: number[], m: number, hd: number, overlap: boolean): Float64Array {
  const W = overlap ? 2 * hd : hd;
  const outs: number[] = [];
  let s0 = 0;
  for (const len of segs) {
    for (let w = 0; w < Math.floor(len / m); w++) {
      const rows: [number, number, number][] = [];
      if (overlap && w > 0) for (let k = 0; k < m; k++) rows.push([s0 + (w - 1) * m + k, 0, k]);
      for (let k = 0; k < m; k++) rows.push([s0 + w * m + k, overlap ? hd : 0, k]);
      for (let c = 0; c < hd; c++) {
        const zz = rows.map(([t, o, p]) => z[t * W + o + c] + ape[p * W + o + c]);
        const mx = Math.max(...zz);
        const e = zz.map((v) => Math.exp(v - mx));
        const sum = e.reduce((x, y) => x + y, 0);
        outs.push(rows.reduce((acc, [t, o], i) => acc + (e[i] / sum) * a[t * W + o + c], 0));
      }
    }
    s0 += len;
  }
  return Float64Array.from(outs);
}

// loss_t = logsumexp(h_t Wᵀ) − h_t·W[target_t]
function ceRef(h: Arr, W: Arr, tg: Int32Array, T: number, d: number, V: number): Float64Array {
  const loss = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    const l = Array.from({ length: V }, (_, v) => {
      let s = 0;
      for (let c = 0; c < d; c++) s += h[t * d + c] * W[v * d + c];
      return s;
    });
    const m = Math.max(...l);
    loss[t] = m + Math.log(l.reduce((acc, v) => acc + Math.exp(v - m), 0)) - l[tg[t]];
  }
  return loss;
}

describe.skipIf(skipNative)('native op kernels', () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
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
    expect(relErr(y, rmsRef(x, w, T, C, 1e-6))).toBeLessThan(1e-6);
    const g = randn(T * C, r);
    const dx = new Float32Array(T * C);
    const dw = new Float32Array(C);
    await A().rmsnormBackward(dx, dw, g, x, w, rstd, T, C);
    expect(relErr(dx, fdGrad((v) => contract(rmsRef(v, w, T, C, 1e-6), g), x))).toBeLessThan(1e-4);
    expect(relErr(dw, fdGrad((v) => contract(rmsRef(x, v, T, C, 1e-6), g), w))).toBeLessThan(1e-4);
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
    expect(relErr(o, attnRef(q, kv, idx, sink, T, H, D, K, scale))).toBeLessThan(1e-5);
    const g = randn(o.length, r);
    const dq = new Float32Array(q.length);
    const dkv = new Float32Array(kv.length);
    const dsink = new Float32Array(H);
    await A().attentionBackward(dq, dkv, dsink, g, o, lse, q, kv, idx, sink, T, H, D, M, K, scale);
    expect(relErr(dq, fdGrad((v) => contract(attnRef(v, kv, idx, sink, T, H, D, K, scale), g), q))).toBeLessThan(1e-4);
    expect(relErr(dkv, fdGrad((v) => contract(attnRef(q, v, idx, sink, T, H, D, K, scale), g), kv))).toBeLessThan(1e-4);
    expect(relErr(dsink, fdGrad((v) => contract(attnRef(q, kv, idx, v, T, H, D, K, scale), g), sink))).toBeLessThan(1e-4);
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
    const [wy, wp, wc] = mhcPreRef(X, fn, scale, base, T, hc, d, true, iters, eps, ne);
    expect(relErr(y, wy)).toBeLessThan(1e-5);
    expect(relErr(post, wp)).toBeLessThan(1e-5);
    expect(relErr(comb, wc)).toBeLessThan(1e-5);
    const gy = randn(y.length, r);
    const gp = randn(post.length, r);
    const gc = randn(comb.length, r);
    const dX = new Float32Array(X.length);
    await A().mhcPreBackward(dX, gy, gp, gc, mix, X, fn, scale, base, T, hc, d, true, iters, eps, ne);
    const loss = (v: Float64Array): number => {
      const [a, b, c] = mhcPreRef(v, fn, scale, base, T, hc, d, true, iters, eps, ne);
      return contract(a, gy) + contract(b, gp) + contract(c, gc);
    };
    expect(relErr(dX, fdGrad(loss, X))).toBeLessThan(2e-4);
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
    expect(relErr(y, mhcPreRef(X, fn, scale, base, T, hc, d, false, 20, 1e-6, 1e-6)[0])).toBeLessThan(1e-5);
    const g = randn(y.length, r);
    const dX = new Float32Array(X.length);
    await A().mhcPreBackward(dX, g, null, null, mix, X, fn, scale, base, T, hc, d, false, 20, 1e-6, 1e-6);
    expect(relErr(dX, fdGrad((v) => contract(mhcPreRef(v, fn, scale, base, T, hc, d, false, 20, 1e-6, 1e-6)[0], g), X))).toBeLessThan(1e-4);
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
    expect(relErr(out, mhcPostRef(F, X, post, comb, T, hc, d))).toBeLessThan(1e-6);
    const g = randn(out.length, r);
    const [dF, dX, dp, dc] = [new Float32Array(F.length), new Float32Array(X.length), new Float32Array(post.length), new Float32Array(comb.length)];
    await A().mhcPostBackward(dF, dX, dp, dc, g, F, X, post, comb, T, hc, d);
    const L = (f: Arr, x: Arr, p: Arr, c: Arr): number => contract(mhcPostRef(f, x, p, c, T, hc, d), g);
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
      const want = compRef(a, z, ape, [...segs], m, hd, overlap);
      const out = new Float32Array(want.length);
      await A().compressorForward(out, a, z, ape, Int32Array.from(segs), m, hd, overlap);
      expect(relErr(out, want)).toBeLessThan(1e-6);
      const g = randn(out.length, r);
      const da = new Float32Array(a.length);
      const dz = new Float32Array(z.length);
      await A().compressorBackward(da, dz, g, a, z, ape, Int32Array.from(segs), m, hd, overlap);
      expect(relErr(da, fdGrad((v) => contract(compRef(v, z, ape, [...segs], m, hd, overlap), g), a))).toBeLessThan(1e-4);
      expect(relErr(dz, fdGrad((v) => contract(compRef(a, v, ape, [...segs], m, hd, overlap), g), z))).toBeLessThan(1e-4);
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
    const want = ceRef(h, W, tg, T, d, V);
    want[2] = 0;
    expect(relErr(loss, want)).toBeLessThan(1e-5);
    const lossW = (v: Float64Array): number => contract(ceRef(v, W, tg, T, d, V), wts);
    expect(relErr(dh, fdGrad(lossW, h))).toBeLessThan(1e-4);
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
