// The quantize stage's native pieces against the TypeScript they replace: round to nearest on the
// INT4 group grid (int4.ts quantizeRtn) with the export's per-row error sums (int4.ts
// rowErrorSums), llama.cpp's Q4_K rounded to nearest (q4k.ts quantizeQ4_K, its float32 sub-block
// fits), AutoGPTQ's packing (gptq-export.ts packGptq) and the checkpoint's decode of
// FP8 / FP4 / BF16 tensors (formats.ts). All exact: the same codes, scales, zeros, sums and bytes,
// on every instruction-set path, on fresh random weights and on the grid's edge cases (all-zero,
// one-signed and tiny groups, exact half-step ties of either sign, signed zeros).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { int4RtnNative, packGptqNative, q40RtnNative, q4kRtnNative, q80RtnNative } from '../../../src/backend/native/gptq.js';
import { dequantizeQ8_0, quantizeQ8_0 } from '../../../src/export/ggml-quants.js';
import { dequantizeQ4_0, quantizeQ4_0 } from '../../../src/export/gguf.js';
import { packGptq } from '../../../src/export/gptq-export.js';
import { dequantizeInt4, quantizeRtn, rowErrorSums } from '../../../src/export/int4.js';
import { dequantizeQ4_K, quantizeQ4_K } from '../../../src/export/q4k.js';
import { Checkpoint } from '../../../src/model/checkpoint.js';
import { f32ToF16Native } from '../../../src/backend/native/formats.js';
import { bf16BytesToF32, dequantFp4, dequantFp8Block, f32ToF16Bytes, FP8_BLOCK } from '../../../src/model/formats.js';
import { initModel } from '../../../src/model/init.js';
import { A, bitsDiffer, randn, rng, skipNative } from './helpers.js';

const ISAS = ['avx512', 'avx2', 'scalar'] as const;

/** weights [out, n] in groups of gs: random rows, then rows of the grid's edge cases */
function weights(out: number, n: number, gs: number, seed: number): Float32Array {
  const r = rng(seed);
  const w = randn(out * n, r, 0.02);
  const group = (row: number, g: number, f: (c: number) => number): void => {
    if (row >= out || (g + 1) * gs > n) return;
    for (let c = 0; c < gs; c++) w[row * n + g * gs + c] = f(c);
  };
  group(0, 0, () => 0); // all zero: s = 1, z = 8
  group(0, 1, (c) => (c % 2 ? -0 : 0)); // signed zeros only
  group(1, 0, (c) => 0.01 + 0.001 * c); // no negative weight: z = 1, the grid re-cut
  group(1, 1, (c) => -0.01 - 0.001 * c); // no positive weight
  group(2, 0, (c) => 1e-7 * (c - gs / 2)); // a subnormal fp16 scale
  // ties: the range −0.5 … 0.4375 gives s = 1/16 and z = 8; (k + ½)/16 is k + ½ steps (either sign)
  group(2, 1, (c) => (c === 0 ? -0.5 : c === 1 ? 0.4375 : ((c % 15) - 7.5) / 16));
  group(3, 0, (c) => (c % 3 === 0 ? -0 : c % 3 === 1 ? 0.25 : 0)); // zeros of both signs beside positives
  return w;
}

const SHAPES = [
  { out: 37, n: 256, gs: 32, seed: 1 },
  { out: 8, n: 96, gs: 96, seed: 2 }, // one group, not a multiple of 16 columns
  { out: 16, n: 40, gs: 8, seed: 3 }, // groups of 8, a row not a multiple of 16
  { out: 6, n: 12, gs: 4, seed: 4 }, // groups narrower than a vector, a row not a multiple of 8
];

describe.skipIf(skipNative)('the quantize stage\'s native pieces equal the TypeScript they replace', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'v4tune-int4-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('round to nearest: codes, scales, zeros and the per-row error sums bit for bit, on every ISA path', async () => {
    const cpu = A().info().isa;
    try {
      for (const isa of ISAS) {
        A().setIsa(isa);
        for (const { out, n, gs, seed } of SHAPES) {
          const w = weights(out, n, gs, seed);
          const want = quantizeRtn(w, out, n, gs);
          const got = (await int4RtnNative(w, out, n, gs))!;
          const at = `${isa} ${out}×${n}/${gs}`;
          expect(got.q, at).toEqual(want.q);
          expect(got.scaleBits, at).toEqual(want.scaleBits);
          expect(got.scales, at).toEqual(want.scales);
          expect(got.zeros, at).toEqual(want.zeros);
          expect(Array.from(got.rowSums), at).toEqual(Array.from(rowErrorSums(w, dequantizeInt4(want), n)));
        }
      }
    } finally {
      A().setIsa(cpu);
    }
    // the edge rows did reach the grid's special cases
    const x = quantizeRtn(weights(37, 256, 32, 1), 37, 256, 32);
    expect([x.scales[0], x.zeros[0]]).toEqual([1, 8]);
    expect(x.zeros[8]).toBe(1);
    expect(x.scales[2 * 8 + 1]).toBe(1 / 16);
  });

  it('rowErrorSums sums each row in 8 lanes, column c in lane c mod 8, lanes pairwise', () => {
    // e = 1 in column 0, e² = 2⁻⁵⁴ in the 15 others: in column order each 2⁻⁵⁴ is lost against 1;
    // in lanes, lanes 1 … 7 reach 2⁻⁵³ first and survive
    const cols = 16;
    const orig = new Float32Array(cols).fill(2 ** -27);
    const recon = new Float32Array(cols);
    orig[0] = 0;
    recon[0] = -1;
    const s = rowErrorSums(orig, recon, cols);
    const l = [1, ...Array(7).fill(2 ** -53)] as number[];
    expect(s[1]).toBe(((l[0]! + l[1]!) + (l[2]! + l[3]!)) + ((l[4]! + l[5]!) + (l[6]! + l[7]!)));
    expect(s[1]).toBe(1 + 3 * 2 ** -52);
    expect(s[2]).toBe(1);
    expect(s[3]).toBe(15 * 2 ** -54);
  });

  it('a non-finite weight is refused naming its row and column, as quantizeRtn refuses it', async () => {
    for (const bad of [Number.NaN, Infinity, -Infinity]) {
      const w = weights(9, 64, 32, 5);
      w[4 * 64 + 37] = bad;
      w[7 * 64 + 3] = Number.NaN; // a later one: the first is named
      let want = '';
      try {
        quantizeRtn(w, 9, 64, 32);
      } catch (e) {
        want = (e as Error).message;
      }
      expect(want).toContain('row 4, column 37');
      await expect(int4RtnNative(w, 9, 64, 32)).rejects.toThrow(new RangeError(want));
    }
  });

  it('Q4_K rounded to nearest: the bytes of quantizeQ4_K and the per-row error sums bit for bit, on every ISA path', async () => {
    // rows of 3 super-blocks (the 16-lane path's two blocks, then one) and of 2
    const cases = [{ out: 7, n: 768, seed: 7 }, { out: 5, n: 512, seed: 8 }];
    const cpu = A().info().isa;
    try {
      for (const isa of ISAS) {
        A().setIsa(isa);
        for (const { out, n, seed } of cases) {
          const r = rng(seed);
          const w = randn(out * n, r, 0.03);
          const sub = (row: number, s: number, f: (i: number) => number): void => {
            for (let i = 0; i < 32; i++) w[row * n + s * 32 + i] = f(i);
          };
          for (let s = 0; s < 8; s++) sub(0, s, () => 0); // an all-zero super-block: every fit flat
          sub(1, 0, () => 0.02); // flat and positive: min clamped to 0
          sub(1, 1, () => -0.02); // flat and negative
          sub(1, 2, (i) => 0.001 * (i + 1)); // positive only
          sub(1, 3, (i) => -0.001 * (i + 1)); // negative only
          sub(2, 0, (i) => 1e-40 * (i - 16)); // subnormal weights: the fit's inverse scale overflows
          sub(2, 9, (i) => (i % 2 ? 3 : -3) * (1 + i / 64)); // one loud sub-block beside quiet ones
          sub(3, 4, (i) => (i === 5 ? 0.5 : 1e-4 * i)); // one outlier
          sub(4, 1, (i) => (i % 3 === 0 ? -0 : 0.01)); // signed zeros
          const want = quantizeQ4_K(w);
          const got = (await q4kRtnNative(w, out, n))!;
          const at = `${isa} ${out}×${n}`;
          expect(got.bytes, at).toEqual(want);
          expect(Array.from(got.rowSums), at).toEqual(Array.from(rowErrorSums(w, dequantizeQ4_K(want, w.length), n)));
        }
      }
    } finally {
      A().setIsa(cpu);
    }
  });

  // the scalar path on every ISA (no vector body), so once: blocks of every kind the grid meets
  it('Q4_0 rounded to nearest: the bytes of quantizeQ4_0 and the per-row error sums bit for bit', async () => {
    const [out, n] = [9, 96];
    const w = randn(out * n, rng(11), 0.03);
    const block = (row: number, b: number, f: (i: number) => number): void => {
      for (let i = 0; i < 32; i++) w[row * n + b * 32 + i] = f(i);
    };
    block(0, 0, () => 0); // all zero: d = 0, id = 0, every code 8
    block(1, 1, (i) => 0.001 * (i + 1)); // positive only: m > 0, d < 0
    block(2, 2, (i) => -0.001 * (i + 1)); // negative only
    block(3, 0, (i) => 1e-40 * (i - 16)); // subnormal weights: 1/d overflows to ±Infinity
    block(4, 1, (i) => (i % 3 === 0 ? -0 : 0.01)); // signed zeros
    block(5, 2, (i) => (i === 7 ? -0.25 : 0.25)); // |m| twice, the first kept (negative)
    block(6, 0, (i) => (i % 2 ? 3 : -3) * (1 + i / 64)); // loud
    block(7, 1, (i) => 2 ** -133 * (i + 1)); // the smallest subnormals: d flushes to zero in float32
    // m = −8 (d = 1, id = 1): x + 8.5 on integers and halves, 16 and 16.5 clamped to 15, and a later +8 not taken for m
    block(8, 2, (i) => (i === 0 ? -8 : i === 31 ? 8 : (i % 16) - 8 + (i % 2) * 0.5));
    const want = quantizeQ4_0(w);
    const got = (await q40RtnNative(w, out, n))!;
    expect(Buffer.from(got.bytes).equals(Buffer.from(want))).toBe(true);
    expect(Array.from(got.rowSums)).toEqual(Array.from(rowErrorSums(w, dequantizeQ4_0(want, w.length), n)));
    const bad = w.slice();
    bad[5 * n + 40] = Number.NaN;
    await expect(q40RtnNative(bad, out, n)).rejects.toThrow('non-finite weight NaN at row 5, column 40');
  });

  it('Q8_0 rounded to nearest: the bytes of quantizeQ8_0 and the per-row error sums bit for bit', async () => {
    const [out, n] = [9, 96];
    const w = randn(out * n, rng(12), 0.03);
    const block = (row: number, b: number, f: (i: number) => number): void => {
      for (let i = 0; i < 32; i++) w[row * n + b * 32 + i] = f(i);
    };
    block(0, 0, () => 0); // all zero
    block(1, 1, (i) => 0.001 * (i + 1)); // positive only
    block(2, 2, (i) => -0.001 * (i + 1)); // negative only
    block(3, 0, (i) => 1e-40 * (i - 16)); // subnormal weights: 1/d overflows
    block(4, 1, (i) => (i % 3 === 0 ? -0 : 0.01)); // signed zeros
    block(5, 2, (i) => (i - 15.5) * (127 / 16.5) / 127); // codes at exact halves: half away from zero
    block(6, 0, (i) => (i % 2 ? 3 : -3) * (1 + i / 64)); // loud
    block(7, 1, (i) => 2 ** -140 * (i + 1)); // d underflows to a subnormal or zero
    block(8, 2, (i) => (i === 0 ? 127 : (i % 2 ? 1 : -1) * (Math.floor(i / 2) + 0.5))); // d = 1: x·id at ±(k + ½) exactly
    const want = quantizeQ8_0(w);
    const got = (await q80RtnNative(w, out, n))!;
    expect(Buffer.from(got.bytes).equals(Buffer.from(want))).toBe(true);
    expect(Array.from(got.rowSums)).toEqual(Array.from(rowErrorSums(w, dequantizeQ8_0(want, w.length), n)));
    const bad = w.slice();
    bad[3 * n + 2] = -Infinity;
    await expect(q80RtnNative(bad, out, n)).rejects.toThrow('non-finite weight -Infinity at row 3, column 2');
  });

  it('Q4_K refuses a non-finite weight naming its row and column', async () => {
    const w = randn(3 * 256, rng(9), 0.02);
    w[2 * 256 + 17] = Infinity;
    await expect(q4kRtnNative(w, 3, 256)).rejects.toThrow('non-finite weight Infinity at row 2, column 17');
  });

  it('the GPTQ packing equals packGptq byte for byte', async () => {
    const r = rng(6);
    for (const { out, n, gs } of [{ out: 24, n: 64, gs: 32 }, { out: 8, n: 8, gs: 8 }, { out: 72, n: 256, gs: 128 }, { out: 136, n: 96, gs: 96 }]) {
      const G = n / gs;
      const x = {
        out, inF: n, groupSize: gs,
        q: Uint8Array.from({ length: out * n }, () => Math.floor(r() * 16)),
        zeros: Uint8Array.from({ length: out * G }, () => 1 + Math.floor(r() * 15)),
        scaleBits: Uint16Array.from({ length: out * G }, () => Math.floor(r() * 0x7c00)),
        scales: new Float32Array(out * G),
      };
      const want = packGptq(x);
      const got = (await packGptqNative(x))!;
      expect(got.qweight, `${out}×${n}`).toEqual(want.qweight);
      expect(got.qzeros).toEqual(want.qzeros);
      expect(got.scales).toEqual(want.scales);
      expect(got.gIdx).toEqual(want.gIdx);
    }
  });

  it('float32 to float16 equals f32ToF16Bytes: ties, subnormals, overflow, infinities and NaNs of either sign', () => {
    const r = rng(10);
    const bits = new Uint32Array(4099);
    for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(r() * 2 ** 32) >>> 0;
    const special = [
      0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0xff812345, // zeros, infinities, NaNs
      0x477fefff, 0x477ff000, 0x477ff001, 0x47800000, // around f16's largest (65504) and overflow
      0x38800000, 0x387fffff, 0x33800000, 0x33000000, 0x33000001, 0x00000001, // f16's smallest normal, subnormals, half the smallest
      0x3f801000, 0x3f803000, 0x3f800fff, 0x3f801001, // ties to even and either side of a tie
    ];
    bits.set(special, 0);
    for (let i = 0; i < special.length; i++) bits[2000 + i] = special[i]!; // inside a 16-wide vector too
    const x = new Float32Array(bits.buffer);
    const cpu = A().info().isa;
    try {
      for (const isa of ISAS) {
        A().setIsa(isa);
        expect(f32ToF16Native(x), isa).toEqual(f32ToF16Bytes(x));
      }
    } finally {
      A().setIsa(cpu);
    }
  });

  it('Checkpoint.f32 of FP8, FP4 and BF16 tensors large enough for the addon equals formats.ts\'s decode', async () => {
    const model = join(dir, 'small');
    await initModel({ preset: 'small', out: model, seed: 2, vocabSize: 1000, tokenizer: false });
    const ckpt = await Checkpoint.open(model);
    try {
      const seen = new Set<string>();
      for (const name of ckpt.names()) {
        const m = ckpt.meta(name);
        const cols = m.logicalShape[m.logicalShape.length - 1]!;
        const rows = m.logicalShape.reduce((a, b) => a * b, 1) / cols;
        if (rows * cols < 1 << 16 || seen.has(m.format)) continue;
        const raw = await ckpt.raw(name);
        let want: Float32Array;
        if (m.format === 'fp8') want = dequantFp8Block(raw.data, raw.scale ?? new Uint8Array(Math.ceil(rows / FP8_BLOCK) * Math.ceil(cols / FP8_BLOCK)).fill(127), rows, cols);
        else if (m.format === 'fp4') want = dequantFp4(raw.data, raw.scale!, rows, cols);
        else if (m.format === 'bf16') want = bf16BytesToF32(raw.data);
        else continue;
        seen.add(m.format);
        expect(bitsDiffer(await ckpt.f32(name), want), name).toBeNull();
        // into a longer buffer the exports reuse: the same values in its first elements
        const into = new Float32Array(rows * cols + 7).fill(Number.NaN);
        const got = await ckpt.f32(name, undefined, into);
        expect(got.buffer, name).toBe(into.buffer);
        expect(bitsDiffer(got, want), name).toBeNull();
        expect(Number.isNaN(into[rows * cols])).toBe(true);
      }
      expect([...seen].sort()).toEqual(['bf16', 'fp4', 'fp8']);
    } finally {
      await ckpt.close();
    }
  });
});
