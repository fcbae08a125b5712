// Weight formats against hand-computed bytes, and quantisation round trips within their bounds.
import { describe, expect, it } from 'vitest';
import {
  bf16Decode, bf16Encode, dequantFp4, dequantFp8Block, e8m0Decode, e8m0ScaleFor, f16Decode, f16Encode,
  fp4e2m1Decode, fp4e2m1Encode, fp8e4m3Decode, fp8e4m3Encode, quantFp4, quantFp8Block,
} from '../../src/model/formats.js';

describe('FP8 e4m3fn', () => {
  it('encodes to the hand-computed bytes (nearest, ties to even, saturating, no inf)', () => {
    const cases: Array<[number, number]> = [
      [0, 0x00], [-0, 0x80], [1, 0x38], [-2, 0xc0], [448, 0x7e], [500, 0x7e], [Infinity, 0x7e], [-1000, 0xfe],
      [0.1, 0x1d], // 0.1 = 1.6·2^-4 -> e=3, m=round(4.8)=5 -> 0b0_0011_101
      [1.0625, 0x38], // mantissa 0.5 exactly: tie -> even 0
      [1.1875, 0x3a], // mantissa 1.5: tie -> even 2
      [1.9999, 0x40], // mantissa rounds to 8: carries into the exponent (2.0)
      [2 ** -9, 0x01], // smallest subnormal
      [2 ** -10, 0x00], // half the smallest subnormal: tie -> 0
      [3 * 2 ** -10, 0x02], // 1.5 subnormal steps: tie -> even 2
      [2 ** -6, 0x08], // smallest normal
      [240, 0x77], // 1.875·2^7
    ];
    for (const [x, b] of cases) expect(fp8e4m3Encode(x), `encode ${x}`).toBe(b);
    expect(fp8e4m3Encode(NaN)).toBe(0x7f);
  });
  it('decodes every byte: NaN only at 0x7f/0xff, max 448, subnormals', () => {
    expect(fp8e4m3Decode(0x7f)).toBeNaN();
    expect(fp8e4m3Decode(0xff)).toBeNaN();
    expect(fp8e4m3Decode(0x7e)).toBe(448);
    expect(fp8e4m3Decode(0xfe)).toBe(-448);
    expect(fp8e4m3Decode(0x01)).toBe(2 ** -9);
    expect(fp8e4m3Decode(0x1d)).toBe(0.1015625);
    expect(fp8e4m3Decode(0x38)).toBe(1);
    for (let b = 0; b < 256; b++) {
      if ((b & 0x7f) === 0x7f) continue;
      expect(fp8e4m3Encode(fp8e4m3Decode(b)), `byte ${b}`).toBe(b);
    }
  });
});

describe('E8M0', () => {
  it('is 2^(b-127) with 0xff NaN', () => {
    expect(e8m0Decode(127)).toBe(1);
    expect(e8m0Decode(128)).toBe(2);
    expect(e8m0Decode(120)).toBe(2 ** -7);
    expect(e8m0Decode(0)).toBe(2 ** -127);
    expect(e8m0Decode(255)).toBeNaN();
    // the decode table holds exactly the formula's value for every byte
    for (let b = 0; b < 255; b++) expect(e8m0Decode(b), `byte ${b}`).toBe(2 ** (b - 127));
  });
  it('picks the smallest power of two that fits the block max', () => {
    expect(e8m0ScaleFor(448, 448)).toBe(127);
    expect(e8m0ScaleFor(449, 448)).toBe(128);
    expect(e8m0ScaleFor(1, 448)).toBe(119); // 2^-9·448 = 0.875 < 1 <= 2^-8·448
    expect(e8m0ScaleFor(3, 6)).toBe(126);
    expect(e8m0ScaleFor(0, 448)).toBe(127);
  });
});

describe('FP4 e2m1', () => {
  it('encodes nibbles: sign bit 3, ties to the even code, saturating at 6', () => {
    const cases: Array<[number, number]> = [
      [0, 0], [0.5, 1], [1, 2], [1.5, 3], [2, 4], [3, 5], [4, 6], [6, 7], [100, 7],
      [0.25, 0], [0.75, 2], [1.25, 2], [1.75, 4], [2.5, 4], [3.5, 6], [5, 6],
      [-0.5, 9], [-6, 15], [-5.1, 15],
    ];
    for (const [x, n] of cases) expect(fp4e2m1Encode(x), `encode ${x}`).toBe(n);
    const values = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
    for (let n = 0; n < 16; n++) expect(fp4e2m1Decode(n)).toBe(n & 8 ? -values[n & 7]! : values[n & 7]!);
  });
  it('packs two a byte, low nibble first, with one E8M0 scale per 32 inputs', () => {
    // row 0: 3, -6·0.5... -> amax 3 -> scale 0.5 (byte 126); 3/0.5 = 6 (code 7), -1/0.5 = -2 (code 0xc)
    const x = new Float32Array(64);
    x[0] = 3; x[1] = -1; x[2] = 0.5; x[3] = 0;
    x[32] = 12; x[33] = 3;  // second group: amax 12 -> scale 2 (byte 128): 6 (7), 1.5 (3)
    const q = quantFp4(x, 1, 64);
    expect(Array.from(q.scale)).toEqual([126, 128]);
    expect(q.weight[0]).toBe(0x7 | (0xc << 4));
    expect(q.weight[1]).toBe(0x2); // 0.5/0.5 = 1 -> code 2, then 0
    expect(q.weight[16]).toBe(0x7 | (0x3 << 4));
    const d = dequantFp4(q.weight, q.scale, 1, 64);
    expect(Array.from(d.slice(0, 4))).toEqual([3, -1, 0.5, 0]);
    expect(Array.from(d.slice(32, 34))).toEqual([12, 3]);
  });
  it('round-trips random weights within half a grid step of the group scale', () => {
    const rows = 5, cols = 96;
    const x = new Float32Array(rows * cols).map((_, i) => Math.sin(i * 1.7) * (1 + (i % 7)));
    const q = quantFp4(x, rows, cols);
    expect(q.scaleShape).toEqual([rows, cols / 32]);
    const d = dequantFp4(q.weight, q.scale, rows, cols);
    for (let i = 0; i < x.length; i++) {
      const s = e8m0Decode(q.scale[Math.floor(i / cols) * 3 + Math.floor((i % cols) / 32)]!);
      // grid gaps: 0.5 below 2, 1 in [2,4], 2 in [4,6] -> error <= max(0.25·s, 0.2·|x|)
      expect(Math.abs(d[i]! - x[i]!)).toBeLessThanOrEqual(Math.max(0.25 * s, 0.2 * Math.abs(x[i]!)) + 1e-7);
    }
  });
});

describe('block-scaled FP8 weights', () => {
  it('uses one E8M0 scale per 128x128 block, [ceil(out/128), ceil(in/128)]', () => {
    const rows = 130, cols = 200;
    const x = new Float32Array(rows * cols).map((_, i) => Math.cos(i * 0.37) * (i % 11));
    x[0] = 1000; // block (0,0) amax 1000 -> scale 4 (byte 129)
    x[129 * cols + 199] = -0.3; // block (1,1) amax small
    const q = quantFp8Block(x, rows, cols);
    expect(q.scaleShape).toEqual([2, 2]);
    expect(q.scale[0]).toBe(129);
    expect(q.weight[0]).toBe(fp8e4m3Encode(250));
    const d = dequantFp8Block(q.weight, q.scale, rows, cols);
    for (let i = 0; i < x.length; i++) {
      const r = Math.floor(i / cols), c = i % cols;
      const s = e8m0Decode(q.scale[(r >> 7) * 2 + (c >> 7)]!);
      // 3 mantissa bits: relative error <= 2^-4 for normals, absolute <= 2^-10·s for subnormals
      expect(Math.abs(d[i]! - x[i]!)).toBeLessThanOrEqual(Math.max(Math.abs(x[i]!) * 2 ** -4, 2 ** -10 * s) * (1 + 1e-6));
    }
  });
});

describe('BF16 and F16', () => {
  it('BF16 rounds to nearest even', () => {
    expect(bf16Encode(1)).toBe(0x3f80);
    expect(bf16Encode(-2)).toBe(0xc000);
    expect(bf16Encode(1 + 2 ** -8)).toBe(0x3f80); // tie -> even
    expect(bf16Encode(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie -> even (up)
    expect(bf16Encode(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(bf16Encode(Infinity)).toBe(0x7f80);
    expect(bf16Encode(NaN)).toBe(0x7fc0);
    expect(bf16Decode(0x3f81)).toBe(1.0078125);
    expect(bf16Decode(0xc000)).toBe(-2);
  });
  it('F16 rounds to nearest even, overflows to inf, has subnormals', () => {
    expect(f16Encode(1)).toBe(0x3c00);
    expect(f16Encode(-2)).toBe(0xc000);
    expect(f16Encode(65504)).toBe(0x7bff);
    expect(f16Encode(65520)).toBe(0x7c00);
    expect(f16Encode(0.1)).toBe(0x2e66);
    expect(f16Encode(2 ** -24)).toBe(0x0001);
    expect(f16Encode(2 ** -25)).toBe(0x0000);
    expect(f16Encode(NaN)).toBe(0x7e00);
    expect(f16Decode(0x2e66)).toBeCloseTo(0.0999755859375, 12);
    expect(f16Decode(0x0001)).toBe(2 ** -24);
    expect(f16Decode(0x7c00)).toBe(Infinity);
    for (let h = 0; h < 0x7c00; h += 7) expect(f16Encode(f16Decode(h))).toBe(h);
  });
});
