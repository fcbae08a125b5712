// ggml's Q8_0 and Q5_0 blocks, against the rounding re-derived here from ggml-quants.c
// (quantize_row_q8_0_ref / quantize_row_q5_0_ref); llama.cpp reading them back is proven by
// test/interop/gguf-llama.test.ts.
import { describe, expect, it } from 'vitest';
import { dequantizeQ5_0, dequantizeQ8_0, Q5_0_BYTES, Q8_0_BYTES, quantizeQ5_0, quantizeQ8_0 } from '../../src/export/ggml-quants.js';
import { f16Decode } from '../../src/model/formats.js';

function gaussian(n: number, seed: number): Float32Array {
  let s = seed;
  const r = (): number => { s = (s * 1664525 + 1013904223) >>> 0; return (s + 0.5) / 4294967296; };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(r())) * Math.cos(2 * Math.PI * r());
  return out;
}

describe('Q8_0', () => {
  it('d = f16(amax / 127), codes round(x / d), every weight within d/2 (+ the f16 rounding of d)', () => {
    const x = gaussian(32 * 64, 1);
    const q = quantizeQ8_0(x);
    expect(q.length).toBe(64 * Q8_0_BYTES);
    const back = dequantizeQ8_0(q, x.length);
    for (let b = 0; b < 64; b++) {
      const blk = x.subarray(b * 32, b * 32 + 32);
      const amax = Math.max(...blk.map(Math.abs));
      const d = f16Decode(q[b * Q8_0_BYTES]! | (q[b * Q8_0_BYTES + 1]! << 8));
      expect(Math.abs(d - amax / 127)).toBeLessThanOrEqual((amax / 127) * 2 ** -11);
      for (let j = 0; j < 32; j++) {
        const code = (q[b * Q8_0_BYTES + 2 + j]! << 24) >> 24;
        const v = Math.fround(blk[j]! * Math.fround(1 / Math.fround(amax / 127)));
        expect(code).toBe(Math.sign(v) * Math.round(Math.abs(v)) + 0); // roundf: halves away from zero
        expect(Math.abs(back[b * 32 + j]! - blk[j]!)).toBeLessThanOrEqual(d / 2 + 127 * d * 2 ** -10);
      }
    }
  });

  it('keeps an all-zero block exact and refuses a length that is not a multiple of 32', () => {
    expect(Array.from(dequantizeQ8_0(quantizeQ8_0(new Float32Array(32)), 32))).toEqual(new Array(32).fill(0));
    expect(() => quantizeQ8_0(new Float32Array(33))).toThrow(/not a multiple of 32/);
  });
});

describe('Q5_0', () => {
  it('d = m / −16 (m the value of largest magnitude), 5-bit codes split into nibbles and a high-bit word, every weight within |d| of its value', () => {
    const x = gaussian(32 * 64, 2);
    const q = quantizeQ5_0(x);
    expect(q.length).toBe(64 * Q5_0_BYTES);
    const back = dequantizeQ5_0(q, x.length);
    for (let b = 0; b < 64; b++) {
      const blk = x.subarray(b * 32, b * 32 + 32);
      let m = 0;
      for (const v of blk) if (Math.abs(v) > Math.abs(m)) m = v;
      const d = f16Decode(q[b * Q5_0_BYTES]! | (q[b * Q5_0_BYTES + 1]! << 8));
      expect(Math.abs(d - m / -16)).toBeLessThanOrEqual(Math.abs(m / 16) * 2 ** -11);
      for (let j = 0; j < 32; j++) expect(Math.abs(back[b * 32 + j]! - blk[j]!)).toBeLessThanOrEqual(Math.abs(d) * (1 + 2 ** -8));
      // the largest-magnitude value maps to code 0 (−16·d = m) exactly up to the f16 rounding of d
      const jm = blk.findIndex((v) => v === m);
      expect(Math.abs(back[b * 32 + jm]! - m)).toBeLessThanOrEqual(Math.abs(m) * 2 ** -10);
    }
  });
});
