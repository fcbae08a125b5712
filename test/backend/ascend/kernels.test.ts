// The Ascend C kernels (built against the CPU shim, driven through the host code and the fake ACL
// table; or, under npm run test:ascend, on a device) equal the CPU kernels on random inputs:
// the grouped routed-expert SwiGLU with LoRA (forward, dx, the routing-weight gradient and every
// dA / dB) with F32, FP8 and FP4 base weights, uneven expert loads and empty experts, for several
// core counts; linear with LoRA, plain and grouped; and the Sinkhorn backward against float64
// central differences. A tiling that overflows a memory level fails naming the buffer.
//
// Tolerances: max |ascend − cpu| / max |cpu| ≤ 1e-4 for every output (both compute in float32
// with different summation orders; the measured gap is near 1e-6). Sinkhorn: ≤ 1e-4 against
// float64 central differences (h = 1e-6) of a float64 forward.
import { describe, expect, it } from 'vitest';
import { rawWeight, type RawExpert, type RawExpertGrads, type RawWeight } from '../../../src/backend/native/addon.js';
import { quantFp4, quantFp8Block } from '../../../src/model/formats.js';
import { A, randn, rng, skipNative } from '../native/helpers.js';
import { fdGrad, relErr } from '../../ref64.js';
import { onDevice, runCase, type Arr } from './harness.js';

const TOL = 1e-4;
type Fmt = 'f32' | 'fp8' | 'fp4';
const FMT_CODE: Record<Fmt, number> = { f32: 0, fp8: 2, fp4: 3 };

interface Weight { raw: RawWeight; files: Record<string, Arr>; fmt: number }
function weight(fmt: Fmt, rows: number, cols: number, r: () => number, scale: number): Weight {
  const v = randn(rows * cols, r, scale);
  if (fmt === 'f32') return { raw: rawWeight('f32', v, null, rows, cols), files: { data: new Uint8Array(v.buffer) }, fmt: 0 };
  const q = fmt === 'fp8' ? quantFp8Block(v, rows, cols) : quantFp4(v, rows, cols);
  return { raw: rawWeight(fmt, q.weight, q.scale, rows, cols), files: { data: q.weight, scale: q.scale }, fmt: FMT_CODE[fmt] };
}
function put(arrays: Record<string, Arr>, kv: Record<string, number | string>, prefix: string, w: Weight): void {
  kv[`${prefix}.fmt`] = w.fmt;
  for (const [k, a] of Object.entries(w.files)) arrays[`${prefix}.${k}`] = a;
}

// ---- the grouped routed experts ----
interface ExpertCase {
  T: number; d: number; I: number; E: number; L: number;
  x: Float32Array; dout: Float32Array; idx: Int32Array; off: Int32Array; w: Float32Array;
  experts: RawExpert[]; kv: Record<string, number | string>; arrays: Record<string, Arr>;
  ranks: number[][];
}
// Token loads are uneven (expert 0 takes about half the pairs) and experts 2 and 5 get none
// (their adapter gradients must stay zero). Ranks per expert and projection (w1, w2, w3): r = 4
// is padded to 8 on the way in; 0 is no adapter.
const RANKS = [[4, 4, 4], [8, 16, 0], [4, 4, 4], [0, 0, 0], [8, 16, 0], [4, 4, 4]];
function expertCase(fmt: Fmt, seed: number): ExpertCase {
  const r = rng(seed);
  const T = 13, d = 128, I = 192, E = 6, k = 2, L = 6;
  const load = [0.5, 0.2, 0, 0.2, 0.1, 0];
  const pairs: { t: number; e: number; w: number }[] = [];
  for (let t = 0; t < T; t++) {
    const chosen = new Set<number>();
    while (chosen.size < k) {
      let u = r(), e = 0;
      while (u >= load[e] || load[e] === 0) u -= load[e++];
      chosen.add(e);
    }
    for (const e of chosen) pairs.push({ t, e, w: 0.1 + 0.9 * r() });
  }
  pairs.sort((a, b) => a.e - b.e || a.t - b.t);
  const off = new Int32Array(E + 1);
  for (const p of pairs) off[p.e + 1]++;
  for (let e = 0; e < E; e++) off[e + 1] += off[e];
  const kv: Record<string, number | string> = { T, d, I, E, L };
  const arrays: Record<string, Arr> = {};
  const experts: RawExpert[] = [];
  const ranks: number[][] = [];
  for (let e = 0; e < E; e++) {
    const w1 = weight(fmt, I, d, r, 3 / Math.sqrt(d)), w2 = weight(fmt, d, I, r, 1 / Math.sqrt(I)), w3 = weight(fmt, I, d, r, 3 / Math.sqrt(d));
    put(arrays, kv, `e${e}.w1`, w1), put(arrays, kv, `e${e}.w2`, w2), put(arrays, kv, `e${e}.w3`, w3);
    const ex: RawExpert = { w1: w1.raw, w2: w2.raw, w3: w3.raw };
    const rk = RANKS[e];
    const dims = [[d, I], [I, d], [d, I]];
    rk.forEach((rank, j) => {
      if (!rank) return;
      const a = randn(rank * dims[j][0], r, 0.3), b = randn(dims[j][1] * rank, r, 0.3), s = 8 / rank;
      Object.assign(ex, { [`a${j + 1}`]: a, [`b${j + 1}`]: b, [`r${j + 1}`]: rank, [`s${j + 1}`]: s });
      kv[`e${e}.l${j + 1}.r`] = rank, kv[`e${e}.l${j + 1}.s`] = s;
      arrays[`e${e}.l${j + 1}.A.f32`] = a, arrays[`e${e}.l${j + 1}.B.f32`] = b;
    });
    experts.push(ex);
    ranks.push(rk);
  }
  const x = randn(T * d, r), dout = randn(T * d, r);
  const idx = Int32Array.from(pairs.map((p) => p.t)), w = Float32Array.from(pairs.map((p) => p.w));
  Object.assign(arrays, { 'x.f32': x, 'dout.f32': dout, 'idx.i32': idx, 'off.i32': off, 'w.f32': w });
  return { T, d, I, E, L, x, dout, idx, off, w, experts, kv, arrays, ranks };
}

async function cpuRoutedExpertsForward(c: ExpertCase): Promise<Float32Array> {
  const out = new Float32Array(c.T * c.d);
  await A().routedExpertsForward(out, c.x, c.T, c.d, c.I, c.idx, c.off, c.w, c.experts, c.L);
  return out;
}
async function cpuRoutedExpertsBackward(c: ExpertCase): Promise<{ dx: Float32Array; dw: Float32Array; grads: RawExpertGrads[] }> {
  const dx = new Float32Array(c.T * c.d), dw = new Float32Array(c.idx.length);
  const dims = [[c.d, c.I], [c.I, c.d], [c.d, c.I]];
  const grads: RawExpertGrads[] = c.ranks.map((rk) => {
    const g: RawExpertGrads = {};
    rk.forEach((rank, j) => {
      if (rank) Object.assign(g, { [`da${j + 1}`]: new Float32Array(rank * dims[j][0]), [`db${j + 1}`]: new Float32Array(dims[j][1] * rank) });
    });
    return g;
  });
  await A().routedExpertsBackward(dx, dw, grads, c.dout, c.x, c.T, c.d, c.I, c.idx, c.off, c.w, c.experts, c.L);
  return { dx, dw, grads };
}
function gradFiles(c: ExpertCase): string[] {
  const names: string[] = [];
  c.ranks.forEach((rk, e) => rk.forEach((rank, j) => { if (rank) names.push(`e${e}.l${j + 1}.dA.f32`, `e${e}.l${j + 1}.dB.f32`); }));
  return names;
}
function ascend(c: ExpertCase, op: string, outputs: string[], extra: Record<string, number | string> = {}): Record<string, Float32Array> {
  const res = runCase({ op, ...c.kv, ...extra }, c.arrays, outputs);
  if (res.error) throw new Error(res.error);
  return res.out;
}

describe.skipIf(skipNative)('Ascend grouped expert LoRA kernels equal the CPU kernels', () => {
  for (const fmt of ['f32', 'fp8', 'fp4'] as const) {
    it(`forward, ${fmt} base, uneven loads and empty experts, 1 / 4 / 16 cores`, async () => {
      const c = expertCase(fmt, 11);
      expect(c.off[3] - c.off[2]).toBe(0);
      expect(c.off[6] - c.off[5]).toBe(0);
      const ref = await cpuRoutedExpertsForward(c);
      for (const blockDim of [1, 4, 16]) {
        const out = ascend(c, 'routed_experts_forward', ['out.f32'], { blockDim })['out.f32'];
        expect(relErr(out, ref), `blockDim ${blockDim}`).toBeLessThan(TOL);
      }
    }, 600_000);
    it(`backward: dx, dw and every dA / dB, ${fmt} base`, async () => {
      const c = expertCase(fmt, 23);
      const ref = await cpuRoutedExpertsBackward(c);
      const got = ascend(c, 'routed_experts_backward', ['dx.f32', 'dw.f32', ...gradFiles(c)], { blockDim: 4 });
      expect(relErr(got['dx.f32'], ref.dx), 'dx').toBeLessThan(TOL);
      expect(relErr(got['dw.f32'], ref.dw), 'dw').toBeLessThan(TOL);
      let checked = 0;
      c.ranks.forEach((rk, e) => rk.forEach((rank, j) => {
        if (!rank) return;
        const g = ref.grads[e] as Record<string, Float32Array>;
        expect(relErr(got[`e${e}.l${j + 1}.dA.f32`], g[`da${j + 1}`]), `e${e} dA${j + 1}`).toBeLessThan(TOL);
        expect(relErr(got[`e${e}.l${j + 1}.dB.f32`], g[`db${j + 1}`]), `e${e} dB${j + 1}`).toBeLessThan(TOL);
        checked += 2;
      }));
      expect(checked).toBe(26);
    }, 600_000);
  }
  it.skipIf(onDevice)('the A3 (Ascend910_93) limits run the same kernels', async () => {
    const c = expertCase('fp8', 5);
    const out = ascend(c, 'routed_experts_forward', ['out.f32'], { chip: 1 })['out.f32'];
    expect(relErr(out, await cpuRoutedExpertsForward(c))).toBeLessThan(TOL);
  }, 600_000);
  it.skipIf(onDevice)('a vector tiling that overflows the Unified Buffer fails naming the queue', () => {
    const c = expertCase('f32', 5);
    const res = runCase({ op: 'routed_experts_forward', ...c.kv, 'tiling.cols': 16384 }, c.arrays, []);
    expect(res.error).toContain('ACL_ERROR_RT_AICORE_EXCEPTION (507015)');
    expect(res.error).toContain('UB overflow on Ascend910B: VECIN buffer inQ[1] needs 196608 B, 0 B of 196608 B left');
  }, 600_000);
  it.skipIf(onDevice)('a Cube tiling that overflows L1 fails naming the matmul tiles', () => {
    const c = expertCase('f32', 5);
    const res = runCase({ op: 'routed_experts_backward', ...c.kv, 'tiling.depthA1': 16 }, c.arrays, []);
    expect(res.error).toContain('L1 overflow on Ascend910B: Matmul mm A1/B1 tiles');
  }, 600_000);
});

// ---- linear with LoRA ----
interface LinearCase { T: number; G: number; inG: number; outG: number; r: number; s: number; W: Weight; A: Float32Array; B: Float32Array; x: Float32Array; dy: Float32Array }
function linearCase(fmt: Fmt, G: number, inG: number, outG: number, seed: number): LinearCase {
  const r = rng(seed);
  const T = 9, rank = 4;
  return {
    T, G, inG, outG, r: rank, s: 2,
    W: weight(fmt, G * outG, inG, r, 1 / Math.sqrt(inG)), A: randn(rank * inG, r, 0.3), B: randn(G * outG * rank, r, 0.3),
    x: randn(T * G * inG, r), dy: randn(T * G * outG, r),
  };
}
function linearRun(c: LinearCase, op: string, outputs: string[], extra: Record<string, number> = {}): Record<string, Float32Array> {
  const kv: Record<string, number | string> = { op, T: c.T, G: c.G, inG: c.inG, outG: c.outG, r: c.r, s: c.s, blockDim: 3, ...extra };
  const arrays: Record<string, Arr> = { 'A.f32': c.A, 'B.f32': c.B, 'x.f32': c.x, 'dy.f32': c.dy };
  put(arrays, kv, 'W', c.W);
  const res = runCase(kv, arrays, outputs);
  if (res.error) throw new Error(res.error);
  return res.out;
}

describe.skipIf(skipNative)('Ascend linear LoRA kernels (attention projections) equal the CPU kernels', () => {
  for (const fmt of ['f32', 'fp8', 'fp4'] as const)
    for (const [G, inG, outG] of [[1, 128, 96], [4, 64, 40]] as const) {
      it(`${G === 1 ? 'plain' : `grouped (G = ${G})`} forward and backward, ${fmt} base`, async () => {
        const c = linearCase(fmt, G, inG, outG, 7 + G);
        const y = new Float32Array(c.T * G * outG), dx = new Float32Array(c.T * G * inG);
        const dA = new Float32Array(c.r * inG), dB = new Float32Array(G * outG * c.r);
        await A().linearForward(y, c.x, c.W.raw, c.A, c.B, c.r, c.s, c.T, G);
        await A().linearBackward(dx, dA, dB, c.dy, c.x, c.W.raw, c.A, c.B, c.r, c.s, c.T, G);
        const fw = linearRun(c, 'linear_forward', ['y.f32'], { 'tiling.slabRows': 16 });
        const bw = linearRun(c, 'linear_backward', ['dx.f32', 'dA.f32', 'dB.f32'], { 'tiling.slabRows': 16 });
        expect(relErr(fw['y.f32'], y), 'y').toBeLessThan(TOL);
        expect(relErr(bw['dx.f32'], dx), 'dx').toBeLessThan(TOL);
        expect(relErr(bw['dA.f32'], dA), 'dA').toBeLessThan(TOL);
        expect(relErr(bw['dB.f32'], dB), 'dB').toBeLessThan(TOL);
      }, 600_000);
    }
});

// ---- the Sinkhorn backward ----
// kernels/cpu/mhc.cpp sinkhorn_forward in float64: softmax rows + eps, then 2·iters − 1 line
// normalisations, columns first.
function sinkhorn64(L: ArrayLike<number>, n: number, iters: number, eps: number): Float64Array {
  const C = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    let m = -Infinity, z = 0;
    for (let j = 0; j < n; j++) m = Math.max(m, L[i * n + j]);
    for (let j = 0; j < n; j++) z += C[i * n + j] = Math.exp(L[i * n + j] - m);
    for (let j = 0; j < n; j++) C[i * n + j] = C[i * n + j] / z + eps;
  }
  for (let st = 0; st < 2 * iters - 1; st++) {
    const cols = st % 2 === 0;
    for (let a = 0; a < n; a++) {
      let s = 0;
      for (let b = 0; b < n; b++) s += C[cols ? b * n + a : a * n + b];
      for (let b = 0; b < n; b++) C[cols ? b * n + a : a * n + b] /= s + eps;
    }
  }
  return C;
}

describe('Ascend Sinkhorn backward equals float64 central differences', () => {
  for (const [T, n, iters] of [[37, 4, 20], [10, 3, 3]] as const) {
    it(`${T} tokens of ${n} × ${n}, ${iters} rounds (a partial last chunk)`, () => {
      const r = rng(31 + n);
      const eps = 1e-6;
      const L = randn(T * n * n, r), dC = randn(T * n * n, r);
      const ref = new Float64Array(T * n * n);
      for (let t = 0; t < T; t++) {
        const g = fdGrad((l) => {
          const C = sinkhorn64(l, n, iters, eps);
          let s = 0;
          for (let k = 0; k < n * n; k++) s += C[k] * dC[t * n * n + k];
          return s;
        }, L.subarray(t * n * n, (t + 1) * n * n));
        ref.set(g, t * n * n);
      }
      const res = runCase({ op: 'sinkhorn_backward', T, n, iters, eps, blockDim: 2, 'tiling.sinkTokens': 16 }, { 'L.f32': L, 'dC.f32': dC }, ['dL.f32']);
      expect(res.error).toBeNull();
      expect(relErr(res.out['dL.f32'], ref)).toBeLessThan(TOL);
    }, 600_000);
  }
  it.skipIf(onDevice)('a chunk whose trace overflows the Unified Buffer fails naming it', () => {
    const T = 8, n = 4;
    const res = runCase({ op: 'sinkhorn_backward', T, n, iters: 20, eps: 1e-6, 'tiling.sinkTokens': 128 },
      { 'L.f32': new Float32Array(T * n * n), 'dC.f32': new Float32Array(T * n * n) }, []);
    expect(res.error).toContain('UB overflow on Ascend910B: VECCALC buffer trace[0]');
  }, 600_000);
});
