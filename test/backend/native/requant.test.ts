// Native merge (kernels/cpu/requant.cpp) against the TypeScript path of src/export/merge.ts it
// replaces: dequantise, add the adapter's delta (adapter.ts `delta`), encode (formats.ts) — the
// same bytes and scales, exactly, for FP8 (128×128 blocks, a partial block at the edge), FP4 (16
// groups of a row at a time, and alone) and
// BF16 weights, written in their own format and as BF16; a non-finite merged value is reported at
// the same element.
import { describe, expect, it } from 'vitest';
import { mergeRequantNative } from '../../../src/backend/native/requant.js';
import { loraDelta } from '../../../src/lora/adapter.js';
import { dequantStored, requantise } from '../../../src/export/merge.js';
import { bf16BytesToF32, f32ToBf16Bytes, quantFp4, quantFp8Block } from '../../../src/model/formats.js';
import type { RawTensor, TensorMeta } from '../../../src/model/checkpoint.js';
import { firstNonFinite } from '../../../src/errors.js';
import { randn, rng, skipNative } from './helpers.js';

/** a stored tensor of `format` holding x [rows, cols] */
function stored(format: 'fp8' | 'fp4' | 'bf16', x: Float32Array, rows: number, cols: number): RawTensor {
  const meta = (dtype: string, shape: number[]): TensorMeta => ({ name: 't.weight', dtype, shape, file: 'f', format, logicalShape: [rows, cols] });
  if (format === 'fp8') {
    const q = quantFp8Block(x, rows, cols);
    return { meta: meta('F8_E4M3', [rows, cols]), data: q.weight, scale: q.scale, scaleShape: q.scaleShape };
  }
  if (format === 'fp4') {
    const q = quantFp4(x, rows, cols);
    return { meta: meta('I8', [rows, cols / 2]), data: q.weight, scale: q.scale, scaleShape: q.scaleShape };
  }
  return { meta: meta('BF16', [rows, cols]), data: f32ToBf16Bytes(x), scale: null, scaleShape: null };
}

/** merge.ts's TypeScript path: dequantise, + delta (adapter.ts order), encode */
function reference(t: RawTensor, l: { A: Float32Array; B: Float32Array; r: number; scaling: number } | null, dtype: 'original' | 'bf16', rows: number, cols: number) {
  const x = dequantStored(t);
  if (l) {
    const d = loraDelta({ ...l, in: cols, out: rows });
    for (let i = 0; i < x.length; i++) x[i] = x[i]! + d[i]!;
  }
  const bad = firstNonFinite(x);
  if (bad >= 0) return { bad };
  return { bytes: dtype === 'bf16' ? { data: f32ToBf16Bytes(x), scale: null } : requantise(x, t.meta, t.scale !== null) };
}

const same = (a: Uint8Array | null, b: Uint8Array | null): boolean => (a === null ? b === null : b !== null && Buffer.from(a).equals(Buffer.from(b)));

describe.skipIf(skipNative)('native merge writes the bytes of the TypeScript merge', () => {
  const cases = [
    { format: 'fp8', rows: 300, cols: 200 },
    { format: 'fp4', rows: 96, cols: 256 },
    { format: 'bf16', rows: 64, cols: 160 },
    // rows not a multiple of 4 (the 4-row kernel's scalar tail), columns not a multiple of 32
    { format: 'fp4', rows: 99, cols: 96 },
    // 33 groups of 32 a row: two batches of 16 groups encoded together, one group alone; columns
    // not a multiple of the 4-row kernel's 64
    { format: 'fp4', rows: 37, cols: 1056 },
    { format: 'bf16', rows: 67, cols: 200 },
    // 16-row FP4 tasks and a last one of 2 rows (the 4-row kernel's whole-tail case)
    { format: 'fp4', rows: 98, cols: 512 },
  ] as const;
  for (const c of cases) {
    for (const dtype of ['original', 'bf16'] as const) {
      it(`${c.format} [${c.rows}, ${c.cols}] written ${dtype}: with a rank-4 delta and without one`, async () => {
        const r = rng(c.rows + c.cols);
        const x = randn(c.rows * c.cols, r, 0.05);
        for (let i = 0; i < 50; i++) x[Math.floor(r() * x.length)] = (r() - 0.5) * 400; // outliers set the scales
        // FP4 groups of zeros, of ±0, of subnormal floats and of tiny normal ones (scales 0 and 127 and
        // the clamp at 0), and one group whose maximum is 6·2^k exactly (a power-of-two amax/6)
        if (c.cols >= 256) {
          for (let j = 0; j < 32; j++) {
            x[j] = 0;
            x[32 + j] = j % 2 ? -0 : 0;
            x[64 + j] = (r() - 0.5) * 2 ** -140;
            x[96 + j] = (r() - 0.5) * 2 ** -120;
            x[128 + j] = (r() - 0.5) * 0.75;
          }
          x[128 + 5] = 6 * 2 ** -3;
        }
        const t = stored(c.format, x, c.rows, c.cols);
        // scaling 4/3: not a power of two, so where it is applied shows in the rounding
        const l = { A: randn(4 * c.cols, r, 0.3), B: randn(c.rows * 4, r, 0.02), r: 4, scaling: 4 / 3 };
        l.B[5] = 0;
        l.B[4 * 9 + 2] = 0;
        for (const delta of [l, null]) {
          const want = reference(t, delta, dtype, c.rows, c.cols);
          const got = await mergeRequantNative(t, delta, dtype);
          expect(got).not.toBeNull();
          expect(got!.bad).toBeNull();
          expect(same(got!.bytes.data, want.bytes!.data)).toBe(true);
          expect(same(got!.bytes.scale, want.bytes!.scale)).toBe(true);
        }
      });
    }
  }

  it('an adapter whose A holds inf: terms with B = 0 are skipped (the row stays finite), the others report inf', async () => {
    const rows = 40;
    const cols = 64;
    const x = randn(rows * cols, rng(5), 1);
    const t = stored('bf16', x, rows, cols);
    const A = randn(2 * cols, rng(6), 0.3);
    A[cols + 3] = Infinity; // row k = 1
    const B = randn(rows * 2, rng(7), 0.02);
    for (let o = 0; o < rows; o++) if (o !== 37) B[o * 2 + 1] = 0; // only row 37 uses k = 1
    const l = { A, B, r: 2, scaling: 2 };
    const want = reference(t, l, 'original', rows, cols);
    const got = await mergeRequantNative(t, l, 'original');
    expect(want.bad).toBe(37 * cols + 3);
    expect(got!.bad?.index).toBe(want.bad);
    B[37 * 2 + 1] = 0;
    const want2 = reference(t, l, 'bf16', rows, cols);
    const got2 = await mergeRequantNative(t, l, 'bf16');
    expect(got2!.bad).toBeNull();
    expect(same(got2!.bytes.data, want2.bytes!.data)).toBe(true);
  });

  it('ΔW sums in float32 with one rounding a term (a fused multiply-add), as loraDelta does', async () => {
    // one element's terms: 1·1, then (2^-24 + 2^-36·2^-24)·(1 − 2^-12 + 2^-24) = 2^-24 + 2^-60, so
    // the sum 1 + 2^-24 + 2^-60 rounds once to 1 + 2^-23; rounding it first to double (1 + 2^-24,
    // halfway) and then to float32 would give 1. x = −1 makes the difference survive the BF16 output.
    const rows = 4;
    const cols = 64;
    const x = new Float32Array(rows * cols).fill(0.5);
    x[0] = -1;
    const t = stored('bf16', x, rows, cols);
    const A = new Float32Array(2 * cols);
    const B = new Float32Array(rows * 2);
    A[0] = 1;
    A[cols] = Math.fround(2 ** -24 * (1 + 2 ** -12));
    B[0] = 1;
    B[1] = Math.fround(1 - 2 ** -12 + 2 ** -24);
    expect(B[1]).toBe(1 - 2 ** -12 + 2 ** -24);
    expect(A[cols]).toBe(2 ** -24 * (1 + 2 ** -12));
    const l = { A, B, r: 2, scaling: 1 };
    expect(loraDelta({ ...l, in: cols, out: rows })[0]).toBe(1 + 2 ** -23);
    const want = reference(t, l, 'original', rows, cols);
    const got = await mergeRequantNative(t, l, 'original');
    expect(same(got!.bytes.data, want.bytes!.data)).toBe(true);
    expect(bf16BytesToF32(got!.bytes.data)[0]).toBe(2 ** -23);
  });

  it('a merged value that overflows is reported at the first such element', async () => {
    const rows = 256;
    const cols = 128;
    const x = randn(rows * cols, rng(3), 1);
    x[200 * cols + 7] = 3e38;
    const t = stored('bf16', x, rows, cols);
    const l = { A: new Float32Array(cols).fill(1), B: new Float32Array(rows).fill(0), r: 1, scaling: 1e38 };
    l.B[200] = 1;
    l.B[230] = 1;
    const want = reference(t, l, 'original', rows, cols);
    const got = await mergeRequantNative(t, l, 'original');
    expect(want.bad).toBe(200 * cols + 7);
    expect(got!.bad?.index).toBe(want.bad);
    expect(got!.bad?.value).toBe(Infinity);
  });

  it('FP4 in and out: a merged value that overflows is reported at its element', async () => {
    const rows = 64;
    const cols = 128;
    const t = stored('fp4', randn(rows * cols, rng(8), 1), rows, cols);
    const l = { A: new Float32Array(cols).fill(2), B: new Float32Array(rows).fill(0), r: 1, scaling: 3e38 };
    l.B[41] = 1;
    l.B[50] = 1;
    const want = reference(t, l, 'original', rows, cols);
    const got = await mergeRequantNative(t, l, 'original');
    expect(want.bad).toBe(41 * cols);
    expect(got!.bad?.index).toBe(want.bad);
    expect(got!.bad?.value).toBe(Infinity);
  });

  it('FP4 out: every e2m1 midpoint, the floats next to it, both signs, ±0 and subnormals get the TypeScript codes', async () => {
    // each group of 32 holds 6 (its amax: scale 2^0, so the encoder sees the merged values as they
    // are) and, from a rank-1 delta with B = 1, scaling 1, the values to encode exactly
    const f32 = new Float32Array(1);
    const u32 = new Uint32Array(f32.buffer);
    const step = (x: number, d: number): number => {
      f32[0] = x;
      u32[0] += d;
      return f32[0]!;
    };
    const values: number[] = [0, -0, 2 ** -149, -(2 ** -149), 2 ** -126, 0.5, 1, 1.5, 2, 3, 4, -6];
    for (const mid of [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5]) {
      for (const v of [mid, step(mid, 1), step(mid, -1)]) values.push(v, -v);
    }
    const rows = 16;
    const cols = 512; // 16 groups: the 16-group encoder
    const x = new Float32Array(rows * cols);
    const A = new Float32Array(cols);
    for (let g = 0; g < cols / 32; g++) {
      for (let i = 0; i < rows; i++) x[i * cols + g * 32] = 6;
      for (let j = 1; j < 32; j++) A[g * 32 + j] = values[(g * 31 + j - 1) % values.length]!;
    }
    const t = stored('fp4', x, rows, cols);
    const l = { A, B: new Float32Array(rows).fill(1), r: 1, scaling: 1 };
    const want = reference(t, l, 'original', rows, cols);
    const got = await mergeRequantNative(t, l, 'original');
    expect(same(got!.bytes.scale, want.bytes!.scale)).toBe(true);
    expect(same(got!.bytes.data, want.bytes!.data)).toBe(true);
  });
});
