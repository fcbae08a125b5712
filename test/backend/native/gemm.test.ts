// The packed GEMM: fp32 against a float64 reference; FP8 / FP4 / BF16 weights (dequantised
// inside the packing step) equal the GEMM on the dequantised weights; every ISA path and
// thread count agrees.
import { afterAll, describe, expect, it } from 'vitest';
import { rawWeight, type RawWeight } from '../../../src/backend/native/addon.js';
import { bf16BytesToF32, dequantFp4, dequantFp8Block, f32ToBf16Bytes, quantFp4, quantFp8Block } from '../../../src/model/formats.js';
import { A, addon, randn, rng, skipNative, whyUnavailable } from './helpers.js';
import { gemm as gemmRef, relErr } from '../../ref64.js';

// v's values rounded to bf16 (nearest even), as bf16 mode rounds every GEMM operand
function bf(v: Float32Array): Float32Array {
  const u = new Uint32Array(v.buffer.slice(0));
  for (let i = 0; i < u.length; i++) u[i] = ((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16;
  return new Float32Array(u.buffer);
}

if (addon && !addon.info().cpuAmx) console.log('AMX GEMM test skipped: this CPU (or its kernel) has no AMX-BF16 tiles; it runs on Intel Xeon 4th generation (Sapphire Rapids) or later');

describe.skipIf(skipNative)('native packed GEMM', () => {
  it('the addon is built (required under CI)', () => {
    expect(addon, whyUnavailable).not.toBeNull();
  });
  afterAll(() => {
    addon?.setIsa('avx512');
    addon?.setThreads(0);
  });

  // fp32 accumulation over K ≤ 600 of unit normals: error bound 1e-5 relative to max |C|
  it('fp32 GEMM matches a float64 reference for transposed / plain B, strided A, alpha and beta (1e-5)', async () => {
    const r = rng(1);
    for (const [M, N, K, transB, transA] of [[1, 1, 1, true, false], [7, 5, 3, true, false], [37, 70, 300, true, false], [37, 70, 300, false, true], [13, 65, 513, false, false], [130, 33, 600, true, true]] as const) {
      const a = randn(M * K, r);
      const W = randn(N * K, r);
      const c = randn(M * N, r);
      const [sam, sak] = transA ? [1, M] : [K, 1];
      const want = gemmRef(M, N, K, 0.75, a, sam, sak, W, transB, 1, c);
      const got = c.slice();
      await A().gemm(M, N, K, 0.75, a, sam, sak, rawWeight('f32', W, null, transB ? N : K, transB ? K : N), transB, 1, got, N);
      expect(relErr(got, want), `${M}x${N}x${K}`).toBeLessThan(1e-5);
      const ref = c.slice();
      A().gemmReference(M, N, K, 0.75, a, sam, sak, rawWeight('f32', W, null, transB ? N : K, transB ? K : N), transB, 1, ref, N);
      expect(relErr(ref, want)).toBeLessThan(1e-5);
    }
  });

  it('decodes FP8 (128×128 E8M0 blocks), FP4 (per-32 E8M0) and BF16 exactly like src/model/formats.ts', () => {
    const r = rng(2);
    const rows = 200;
    const cols = 320;
    const x = randn(rows * cols, r, 0.3);
    const q8 = quantFp8Block(x, rows, cols);
    const q4 = quantFp4(x, rows, cols);
    const b16 = f32ToBf16Bytes(x);
    const cases: [RawWeight, Float32Array][] = [
      [rawWeight('fp8', q8.weight, q8.scale, rows, cols), dequantFp8Block(q8.weight, q8.scale, rows, cols)],
      [rawWeight('fp4', q4.weight, q4.scale, rows, cols), dequantFp4(q4.weight, q4.scale, rows, cols)],
      [rawWeight('bf16', b16, null, rows, cols), bf16BytesToF32(b16)],
    ];
    for (const isa of ['avx512', 'avx2', 'scalar'] as const) {
      A().setIsa(isa);
      for (const [w, want] of cases) {
        const got = new Float32Array(rows * cols);
        A().decodeWeight(w, got);
        expect(Array.from(got)).toEqual(Array.from(want));
      }
    }
    A().setIsa('avx512');
  });

  it('GEMM on FP8 / FP4 / BF16 weights equals GEMM on the dequantised weights (1e-5), both orientations', async () => {
    const r = rng(3);
    const M = 45;
    const N = 192;
    const K = 320;
    const a = randn(M * K, r);
    const x = randn(N * K, r, 0.2);
    const q8 = quantFp8Block(x, N, K);
    const q4 = quantFp4(x, N, K);
    const b16 = f32ToBf16Bytes(x);
    const weights = [
      rawWeight('fp8', q8.weight, q8.scale, N, K),
      rawWeight('fp4', q4.weight, q4.scale, N, K),
      rawWeight('bf16', b16, null, N, K),
    ];
    for (const w of weights) {
      const deq = new Float32Array(N * K);
      A().decodeWeight(w, deq);
      // y = a Wᵀ
      const y = new Float32Array(M * N);
      await A().gemm(M, N, K, 1, a, K, 1, w, true, 0, y, N);
      expect(relErr(y, gemmRef(M, N, K, 1, a, K, 1, deq, true, 0, y)), `fmt ${w.fmt} T`).toBeLessThan(1e-5);
      // dx = dy W (W read as [K=N rows, N=K cols])
      const dy = randn(M * N, r);
      const dx = new Float32Array(M * K);
      await A().gemm(M, K, N, 1, dy, N, 1, w, false, 0, dx, K);
      expect(relErr(dx, gemmRef(M, K, N, 1, dy, N, 1, deq, false, 0, dx)), `fmt ${w.fmt} N`).toBeLessThan(1e-5);
    }
  });

  it('scalar, AVX2 and AVX-512 paths agree (1e-5) and 1 vs 2 threads agree exactly', async () => {
    const r = rng(4);
    const M = 77;
    const N = 150;
    const K = 704;
    const a = randn(M * K, r);
    const q4 = quantFp4(randn(N * K, r), N, K);
    const w = rawWeight('fp4', q4.weight, q4.scale, N, K);
    const run = async (): Promise<Float32Array> => {
      const y = new Float32Array(M * N);
      await A().gemm(M, N, K, 1, a, K, 1, w, true, 0, y, N);
      return y;
    };
    const cpu = A().info().isa;
    A().setThreads(1);
    const one = await run();
    A().setThreads(2);
    const two = await run();
    expect(relErr(two, one)).toBe(0);
    for (const isa of ['avx2', 'scalar'] as const) {
      A().setIsa(isa);
      expect(relErr(await run(), one), isa).toBeLessThan(1e-5);
    }
    A().setIsa(cpu);
  });

  // the shape classes of the blocking: one row, a partial microkernel strip, several strips;
  // N off the 32-column panel; K of 1, a partial 16-wide transpose and one past a K block;
  // f32 / bf16 panels packed straight from the weight, FP8 / FP4 through the row decoder
  it('every weight format, both orientations, odd M / N / K and beta 0 overwriting C match the reference (1e-5)', async () => {
    const r = rng(6);
    const quant = (fmt: string, x: Float32Array, rows: number, cols: number): RawWeight => {
      if (fmt === 'fp8') {
        const q = quantFp8Block(x, rows, cols);
        return rawWeight('fp8', q.weight, q.scale, rows, cols);
      }
      if (fmt === 'fp4') {
        const q = quantFp4(x, rows, cols);
        return rawWeight('fp4', q.weight, q.scale, rows, cols);
      }
      return fmt === 'bf16' ? rawWeight('bf16', f32ToBf16Bytes(x), null, rows, cols) : rawWeight('f32', x, null, rows, cols);
    };
    const odd = [[1, 45, 1], [17, 33, 31], [130, 70, 513], [2, 40, 513], [130, 3, 31], [64, 70, 513]] as const;
    const cases: [string, number, number, number, boolean][] = [];
    for (const fmt of ['f32', 'bf16'])
      for (const [M, N, K] of odd) for (const transB of [true, false]) cases.push([fmt, M, N, K, transB]);
    for (const fmt of ['fp8', 'fp4'])
      cases.push([fmt, 17, 70, 512, true], [fmt, 130, 64, 513, false], [fmt, 1, 45, 32, true], [fmt, 130, 96, 31, false]);
    for (const [fmt, M, N, K, transB] of cases) {
      const [rows, cols] = transB ? [N, K] : [K, N];
      const w = quant(fmt, randn(N * K, r, 0.3), rows, cols);
      const deq = new Float32Array(N * K);
      A().decodeWeight(w, deq);
      for (const transA of [false, true]) {
        const a = randn(M * K, r);
        const [sam, sak] = transA ? [1, M] : [K, 1];
        const got = randn(M * N, r);  // beta 0: whatever C held is overwritten
        await A().gemm(M, N, K, 0.5, a, sam, sak, w, transB, 0, got, N);
        const want = gemmRef(M, N, K, 0.5, a, sam, sak, deq, transB, 0, got);
        expect(relErr(got, want), `${fmt} ${M}x${N}x${K} transB ${transB} transA ${transA}`).toBeLessThan(1e-5);
      }
    }
  });

  it('LM-head-like shapes (many columns, short K; many K, few columns) give the same bits on 1 and 2 threads', async () => {
    const r = rng(7);
    for (const [M, N, K, transB] of [[128, 1000, 600, true], [130, 300, 2100, false]] as const) {
      const a = randn(M * K, r);
      const w = rawWeight('bf16', f32ToBf16Bytes(randn(N * K, r, 0.3)), null, transB ? N : K, transB ? K : N);
      const run = async (): Promise<Float32Array> => {
        const y = new Float32Array(M * N);
        await A().gemm(M, N, K, 1, a, K, 1, w, transB, 0, y, N);
        return y;
      };
      A().setThreads(1);
      const one = await run();
      A().setThreads(2);
      expect(relErr(await run(), one), `${M}x${N}x${K}`).toBe(0);
    }
  });

  // the LoRA factors' products: N = r (x Aᵀ, dy B, dyᵀ u) or M = r (gᵀ x), long K, strided operands,
  // beta 0 and 1 — the skinny path on AVX-512 (no packing of the long operand)
  it('skinny products (N ≤ 16 or M ≤ 16; and up to 32, on the packed path) match the reference (1e-5) and give the same bits on 1 and 2 threads', async () => {
    const r = rng(11);
    for (const [M, N, K, transB, transA, beta] of [[512, 16, 1024, false, false, 0], [1024, 16, 512, false, true, 1], [300, 9, 700, true, false, 1],
      [16, 300, 700, false, true, 1], [5, 77, 129, true, false, 0], [3, 2, 1000, false, false, 1],
      [512, 32, 600, false, true, 1], [200, 21, 300, true, false, 0], [32, 500, 400, false, false, 1], [24, 40, 333, true, true, 0]] as const) {
      const a = randn(M * K, r);
      const W = randn(N * K, r, 0.3);
      const c = randn(M * N, r);
      const [sam, sak] = transA ? [1, M] : [K, 1];
      const w = rawWeight('f32', W, null, transB ? N : K, transB ? K : N);
      const want = gemmRef(M, N, K, 0.5, a, sam, sak, W, transB, beta, c);
      const run = async (threads: number): Promise<Float32Array> => {
        A().setThreads(threads);
        const got = c.slice();
        await A().gemm(M, N, K, 0.5, a, sam, sak, w, transB, beta, got, N);
        return got;
      };
      const two = await run(2);
      expect(relErr(two, want), `${M}x${N}x${K}`).toBeLessThan(1e-5);
      expect(relErr(await run(1), two), `${M}x${N}x${K} threads`).toBe(0);
    }
    A().setThreads(0);
  });

  // A of more than 8M floats is packed per task instead of once per call (and M > 480 splits M)
  it('a large A, packed per task over several M blocks, matches the reference (1e-5)', async () => {
    const r = rng(8);
    const [M, N, K] = [1100, 20, 7700];
    const a = randn(M * K, r);
    const x = randn(N * K, r, 0.3);
    const w = rawWeight('bf16', f32ToBf16Bytes(x), null, N, K);
    const deq = new Float32Array(N * K);
    A().decodeWeight(w, deq);
    const got = new Float32Array(M * N);
    await A().gemm(M, N, K, 1, a, K, 1, w, true, 0, got, N);
    expect(relErr(got, gemmRef(M, N, K, 1, a, K, 1, deq, true, 0, got))).toBeLessThan(1e-5);
  });

  // bf16 mode (opt-in): inputs rounded to bf16 (8-bit mantissa), fp32 accumulation. Stated
  // tolerance: max|Δ|/max|C| ≤ 1e-2 against the exact product; and it must equal the float64
  // product of the bf16-rounded inputs to 1e-5 (so only the rounding differs).
  // BF16 weights in bf16 mode are packed into pairs straight from their bits: the same result,
  // bit for bit, as the F32 copy of those values (rounding a bf16 value to bf16 is exact), in
  // both orientations, odd K (the last pair's high half), N past the 16-column groups.
  it.skipIf(!addon?.info().cpuBf16)('bf16 mode on BF16 weights equals bf16 mode on their F32 copy, bit for bit', async () => {
    const r = rng(6);
    expect(A().setBf16(true)).toBe(true);
    try {
      for (const [M, N, K] of [[50, 70, 515], [13, 600, 257], [200, 33, 31], [5, 17, 1]] as const)
        for (const transB of [true, false]) {
          const a = randn(M * K, r);
          const [rows, cols] = transB ? [N, K] : [K, N];
          const b16 = f32ToBf16Bytes(randn(rows * cols, r));
          const yb = new Float32Array(M * N);
          const yf = new Float32Array(M * N);
          await A().gemm(M, N, K, 1, a, K, 1, rawWeight('bf16', b16, null, rows, cols), transB, 0, yb, N);
          await A().gemm(M, N, K, 1, a, K, 1, rawWeight('f32', bf16BytesToF32(b16), null, rows, cols), transB, 0, yf, N);
          expect(yb, `${M}×${N}×${K} transB ${transB}`).toEqual(yf);
        }
    } finally {
      A().setBf16(false);
    }
  });

  // A NaN stays a NaN when bf16 mode rounds it: the carry of round-to-nearest-even would turn the
  // payload 0x7fffffff into −0 and 0x7f800001 into infinity (formats.ts f32ToBf16 keeps the sign
  // and gives 0x7fc0). A NaN in a row of A makes that output row NaN, in a row of W its column;
  // shapes with A packed once for all tasks and per task.
  it.skipIf(!addon?.info().cpuBf16)('bf16 mode keeps a NaN in A or in an F32 weight a NaN (no payload rounds to a finite value)', async () => {
    const r = rng(8);
    expect(A().setBf16(true)).toBe(true);
    try {
      for (const [M, N, K] of [[50, 70, 515], [13, 600, 257]] as const) {
        const a = randn(M * K, r);
        const W = randn(N * K, r);
        const au = new Uint32Array(a.buffer);
        const wu = new Uint32Array(W.buffer);
        au[2 * K + 5] = 0x7fffffff;
        au[7 * K + 100] = 0xffffffff;
        au[9 * K + 7] = 0x7f800001;
        wu[3 * K + 9] = 0x7fffffff;
        const y = new Float32Array(M * N);
        await A().gemm(M, N, K, 1, a, K, 1, rawWeight('f32', W, null, N, K), true, 0, y, N);
        for (let i = 0; i < M; i++) {
          for (let j = 0; j < N; j++) {
            const nan = i === 2 || i === 7 || i === 9 || j === 3;
            expect(Number.isNaN(y[i * N + j]!), `${M}×${N}×${K} (${i}, ${j})`).toBe(nan);
          }
        }
      }
    } finally {
      A().setBf16(false);
    }
  });

  // FP4 and FP8 weights in bf16 mode are decoded straight into pairs (where a 16-pair group lies
  // in one scale group; other K blocks take the fp32 panel): the same bits as bf16 mode on their
  // dequantised F32 copy, in both orientations, with K blocks of 256 and shorter ones (FP8 K 515:
  // a 3-column block that falls back), odd K (the last pair's high half), N past the 16-column
  // groups, scales spread over many exponents.
  it.skipIf(!addon?.info().cpuBf16)('bf16 mode on FP4 / FP8 weights equals bf16 mode on their dequantised F32 copy, bit for bit', async () => {
    const r = rng(9);
    const weight = (fmt: 'fp4' | 'fp4-any-scale' | 'fp8', rows: number, cols: number): [RawWeight, Float32Array] => {
      const x = randn(rows * cols, r, 0.02);
      for (let i = 0; i < rows; i++) x[i * cols + Math.floor(r() * cols)] *= 2 ** Math.floor(r() * 24 - 8);
      if (fmt !== 'fp8') {
        const q = quantFp4(x, rows, cols);
        // every E8M0 scale byte but NaN (255), extremes included: products from 2^-128 (subnormal) to 6·2^127
        if (fmt === 'fp4-any-scale') for (let i = 0; i < q.scale.length; i++) q.scale[i] = i % 7 === 0 ? [0, 1, 2, 252, 253, 254][i % 6]! : Math.floor(r() * 255);
        return [rawWeight('fp4', q.weight, q.scale, rows, cols), dequantFp4(q.weight, q.scale, rows, cols)];
      }
      const q = quantFp8Block(x, rows, cols);
      return [rawWeight('fp8', q.weight, q.scale, rows, cols), dequantFp8Block(q.weight, q.scale, rows, cols)];
    };
    const cases = [
      ['fp4', true, 50, 70, 544], ['fp4', true, 13, 600, 256], ['fp4', true, 5, 17, 32], ['fp4-any-scale', true, 20, 40, 320],
      ['fp8', true, 50, 70, 515], ['fp8', true, 13, 600, 288],
      ['fp4', false, 50, 96, 515], ['fp4', false, 13, 608, 257], ['fp4', false, 200, 32, 31], ['fp4-any-scale', false, 20, 64, 99], ['fp4', false, 30, 160, 66],
      ['fp8', false, 50, 70, 515], ['fp8', false, 13, 600, 257],
    ] as const;
    expect(A().setBf16(true)).toBe(true);
    try {
      for (const [fmt, transB, M, N, K] of cases) {
        const a = randn(M * K, r);
        const [w, deq] = weight(fmt, transB ? N : K, transB ? K : N);
        const yq = new Float32Array(M * N);
        const yf = new Float32Array(M * N);
        await A().gemm(M, N, K, 1, a, K, 1, w, transB, 0, yq, N);
        await A().gemm(M, N, K, 1, a, K, 1, rawWeight('f32', deq, null, transB ? N : K, transB ? K : N), transB, 0, yf, N);
        expect(yq, `${fmt} ${M}×${N}×${K} transB ${transB}`).toEqual(yf);
      }
    } finally {
      A().setBf16(false);
    }
  });

  // In bf16 mode a row-major or transposed A is packed straight into bf16 pairs
  // (pack_A_pairs_512); an A with other strides still goes through fp32 strips and their
  // conversion. Both must give the same bits: odd K (a half pair), K past one block, rows past
  // the 12-row strip, A shared by the tasks and packed per task, NaN and subnormal values.
  it.skipIf(!addon?.info().cpuBf16)('bf16 mode: A packed straight into pairs gives the bits of the fp32 strips converted', async () => {
    const r = rng(9);
    expect(A().setBf16(true)).toBe(true);
    try {
      // 1000 rows: more than one 960-row M block, so pairs are packed per task from row m0 > 0
      for (const [M, N, K] of [[50, 70, 515], [13, 600, 515], [200, 30, 257], [37, 64, 33], [1, 300, 1], [1000, 40, 70]] as const) {
        const a = randn(M * K, r);
        a[(7 * K + 5) % a.length] = 1e-40; // subnormal: rounds to a bf16 subnormal, not flushed
        a[3 % a.length] = Number.NaN;
        const W = rawWeight('f32', randn(N * K, r), null, N, K);
        const rowMajor = new Float32Array(M * N);
        await A().gemm(M, N, K, 1, a, K, 1, W, true, 0, rowMajor, N);
        const t = new Float32Array(M * K); // A transposed: a k's M values contiguous
        for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) t[k * M + m] = a[m * K + k];
        const transposed = new Float32Array(M * N);
        await A().gemm(M, N, K, 1, t, 1, M, W, true, 0, transposed, N);
        const s = new Float32Array(2 * M * K); // every other float: neither stride is 1
        for (let i = 0; i < M * K; i++) s[2 * i] = a[i];
        const strided = new Float32Array(M * N);
        await A().gemm(M, N, K, 1, s, 2 * K, 2, W, true, 0, strided, N);
        expect(Buffer.from(rowMajor.buffer).equals(Buffer.from(strided.buffer)), `${M}×${N}×${K} row-major`).toBe(true);
        expect(Buffer.from(transposed.buffer).equals(Buffer.from(strided.buffer)), `${M}×${N}×${K} transposed`).toBe(true);
        expect(rowMajor.some(Number.isNaN)).toBe(true);
      }
    } finally {
      A().setBf16(false);
    }
  });

  // AMX tiles (CPUs with AMX-BF16): the same bf16 operands as the AVX512-BF16 dot products,
  // summed in the tile unit's order, so within 1e-5 of that kernel (not its bits) and of the
  // float64 product of the bf16-rounded operands; and the same bits at 1, 2 and 3 threads. Shapes
  // cover rows past a 32-row strip and past a 16-row tile (M 50, 13, 200, 1), columns past a
  // 16-column tile (N 70, 608, 30, 17), K not a whole 32-value tile step (515, 257, 31, 70: zero
  // pairs pad it) and K over several 1024-value blocks (2100, 2080), A shared by the tasks and packed per task, transposed A, both B orientations,
  // alpha ≠ 1 with beta 1 (accumulate), BF16 and FP4 weights.
  it.skipIf(!addon?.info().cpuAmx)('bf16 mode on AMX tiles: within 1e-5 of the AVX512-BF16 kernel, the same bits at any thread count', async () => {
    const r = rng(11);
    expect(A().setBf16(true)).toBe(true);
    try {
      const cases = [[50, 70, 515, true, false], [13, 608, 257, false, false], [200, 30, 31, true, true], [1, 17, 70, false, true], [1000, 40, 320, true, false], [40, 64, 2100, false, false], [70, 40, 2080, true, true]] as const;
      for (const [M, N, K, transB, transA] of cases) {
        const what = `${M}×${N}×${K} transB ${transB} transA ${transA}`;
        const a = randn(M * K, r);
        const [sam, sak] = transA ? [1, M] : [K, 1];
        const [rows, cols] = transB ? [N, K] : [K, N];
        const w32 = bf16BytesToF32(f32ToBf16Bytes(randn(rows * cols, r)));
        const c0 = randn(M * N, r);
        const run = async (amx: boolean, threads: number, W: RawWeight): Promise<Float32Array> => {
          expect(A().setAmx(amx)).toBe(amx);
          A().setThreads(threads);
          const y = c0.slice();
          await A().gemm(M, N, K, 0.5, a, sam, sak, W, transB, 1, y, N);
          return y;
        };
        const W = rawWeight('bf16', f32ToBf16Bytes(w32), null, rows, cols);
        const tiles = await run(true, 2, W);
        for (const t of [1, 3]) expect(Buffer.from((await run(true, t, W)).buffer).equals(Buffer.from(tiles.buffer)), `${what}: ${t} threads`).toBe(true);
        expect(relErr(tiles, await run(false, 2, W)), what).toBeLessThan(1e-5);
        expect(relErr(tiles, gemmRef(M, N, K, 0.5, bf(a), sam, sak, w32, transB, 1, c0)), what).toBeLessThan(1e-5);
        // FP4 weights (whole 32-value scale groups) decode into the same pairs
        if (cols % 32 === 0) {
          const q = quantFp4(w32, rows, cols);
          const deq = rawWeight('f32', dequantFp4(q.weight, q.scale, rows, cols), null, rows, cols);
          expect(Buffer.from((await run(true, 2, rawWeight('fp4', q.weight, q.scale, rows, cols))).buffer).equals(Buffer.from((await run(true, 2, deq)).buffer)), `${what} fp4`).toBe(true);
        }
      }
    } finally {
      A().setAmx(true);
      A().setThreads(0);
      A().setBf16(false);
    }
  });

  // Shapes where A is packed once for all tasks (and converted to bf16 pairs once) and where
  // each task packs its own rows (N in one chunk), odd K (a half pair at the end), M past the
  // 12-row strip.
  it.skipIf(!addon?.info().cpuBf16)('bf16 dot-product mode stays within 1e-2 of fp32 and is exactly the bf16-rounded product', async () => {
    const r = rng(5);
    expect(A().setBf16(true)).toBe(true);
    try {
      for (const [M, N, K] of [[50, 70, 515], [13, 600, 515], [200, 30, 257]] as const) {
        const a = randn(M * K, r);
        const W = randn(N * K, r);
        const y = new Float32Array(M * N);
        await A().gemm(M, N, K, 1, a, K, 1, rawWeight('f32', W, null, N, K), true, 0, y, N);
        expect(relErr(y, gemmRef(M, N, K, 1, a, K, 1, W, true, 0, y)), `${M}×${N}×${K}`).toBeLessThan(1e-2);
        expect(relErr(y, gemmRef(M, N, K, 1, bf(a), K, 1, bf(W), true, 0, y)), `${M}×${N}×${K}`).toBeLessThan(1e-5);
      }
    } finally {
      A().setBf16(false);
    }
  });
});
