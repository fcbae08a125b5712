// INT4 group quantisation (src/export/int4.ts) against a float64 reference written here.
import { describe, expect, it } from 'vitest';
import { dequantizeInt4, groupGrid, quantizeRtn } from '../../src/export/int4.js';

// smallest IEEE half ≥ x (x > 0, normal range), computed from the exponent in float64
function f16Up(x: number): number {
  const e = Math.floor(Math.log2(x));
  const ulp = 2 ** (Math.max(e, -14) - 10);
  return Math.ceil(x / ulp) * ulp;
}

// float64 reference of the documented grid: s = f16↑((max−min)/15), z = round(−min/s) ≥ 1
function refGrid(vals: number[]): { s: number; z: number } {
  const lo = Math.min(0, ...vals);
  const hi = Math.max(0, ...vals);
  if (lo === hi) return { s: 1, z: 8 };
  let s = f16Up((hi - lo) / 15);
  let z = Math.round(-lo / s);
  if (z < 1) {
    z = 1;
    if (hi > 14.5 * s) s = f16Up(hi / 14.5);
  }
  return { s, z: Math.min(z, 15) };
}

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('INT4 round-to-nearest, group-wise over the input dimension', () => {
  const out = 12;
  const inF = 256;
  const gs = 64;
  const r = rng(7);
  const w = new Float32Array(out * inF);
  for (let i = 0; i < w.length; i++) w[i] = (r() - 0.5) * 0.2 * (1 + (i % 5));
  // row 3: a group with no negative weight; row 4: an all-zero group; row 5: a huge outlier
  for (let c = 0; c < gs; c++) {
    w[3 * inF + c] = r() * 0.05;
    w[4 * inF + c] = 0;
  }
  w[5 * inF + 70] = 40;

  const x = quantizeRtn(w, out, inF, gs);
  const back = dequantizeInt4(x);

  it('gives the reference grid (fp16 scale rounded up, zero in 1..15) for every (row, group)', () => {
    for (let row = 0; row < out; row++) {
      for (let g = 0; g < inF / gs; g++) {
        const vals = Array.from(w.subarray(row * inF + g * gs, row * inF + (g + 1) * gs));
        const ref = refGrid(vals);
        expect(x.scales[row * (inF / gs) + g]).toBe(ref.s);
        expect(x.zeros[row * (inF / gs) + g]).toBe(ref.z);
      }
    }
  });

  it('reconstructs every weight within half a step (≤ s/2, float64 rounding slack 1e-6·s)', () => {
    for (let row = 0; row < out; row++) {
      for (let c = 0; c < inF; c++) {
        const g = row * (inF / gs) + Math.floor(c / gs);
        const s = x.scales[g]!;
        const ref = refGrid(Array.from(w.subarray(row * inF + Math.floor(c / gs) * gs, row * inF + Math.floor(c / gs + 1) * gs)));
        const q64 = Math.min(15, Math.max(0, Math.round(w[row * inF + c]! / ref.s) + ref.z));
        expect(x.q[row * inF + c]).toBe(q64);
        expect(Math.abs(back[row * inF + c]! - w[row * inF + c]!)).toBeLessThanOrEqual(s / 2 + 1e-6 * s);
      }
    }
  });

  it('keeps an all-zero group exact and a non-negative group on the z = 1 grid', () => {
    for (let c = 0; c < gs; c++) expect(back[4 * inF + c]).toBe(0);
    expect(x.zeros[3 * (inF / gs)]).toBe(1);
  });

  it('refuses a group size that does not divide the input size', () => {
    expect(() => quantizeRtn(w, out, inF, 48)).toThrow(/not a multiple of the group size 48/);
  });

  it('refuses a non-finite weight, naming its row and column', () => {
    const bad = w.slice();
    bad[2 * inF + 9] = NaN;
    expect(() => quantizeRtn(bad, out, inF, gs)).toThrow(/row 2, column 9/);
  });

  it('rounds the scale up so the top of the range is never clamped by more than s/2', () => {
    const g = groupGrid(-1, 1.0000001);
    expect(g.scale * (15 - g.zero) + g.scale / 2).toBeGreaterThanOrEqual(1.0000001);
    expect(g.scale * g.zero + g.scale / 2).toBeGreaterThanOrEqual(1);
  });
});
