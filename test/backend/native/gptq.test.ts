// Native GPTQ (kernels/cpu/gptq.cpp) against the TypeScript GPTQ it replaces (src/export/gptq.ts,
// the Hessian accumulation of calibrate.ts): the native code performs each element's float64
// operations in the reference's order without fused multiply-adds, so the comparison is exact —
// the same codes, scales, zeros and the same Q bits, with no tie tolerance. The output error
// tr(E H Eᵀ) sums in another order: relative 1e-12.
import { describe, expect, it } from 'vitest';
import { gptqFactorNative, gptqGgufNative, gptqInt4Native, hessianAccumulateNative, outputErrorSqNative } from '../../../src/backend/native/gptq.js';
import { choleskyUpper, gptqFactor, gptqRows, gptqRowsFactored, int4Quantizer, outputErrorSq, upperInverse, q4_0Quantizer, q4kQuantizer } from '../../../src/export/gptq.js';
import { A, addon, randn, rng, skipNative } from './helpers.js';
import { quantizeQ4_0 } from '../../../src/export/gguf.js';
import { quantizeQ4_K } from '../../../src/export/q4k.js';

/** calibrate.ts: Σ xᵀx of x [rows, groups·n] into the upper triangle of H (group g), rows in order */
function accumulateRef(H: Float64Array, x: Float32Array, rows: number, n: number, width: number, g: number): void {
  for (let t = 0; t < rows; t++) {
    const o = t * width + g * n;
    for (let i = 0; i < n; i++) {
      const xi = x[o + i]!;
      if (xi === 0) continue;
      for (let j = i; j < n; j++) H[i * n + j] += xi * x[o + j]!;
    }
  }
}

/** mirrored and scaled by 2/tokens, as calibrate.ts finishes a Hessian */
function finish(H: Float64Array, n: number, tokens: number): void {
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      const v = H[i * n + j]! * (2 / tokens);
      H[i * n + j] = v;
      H[j * n + i] = v;
    }
  }
}

/** inputs [tokens, n] with correlated columns (a random mix of a few factors plus noise), one dead column */
function inputs(tokens: number, n: number, seed: number, dead: number): Float32Array {
  const r = rng(seed);
  const f = 6;
  const z = randn(tokens * f, r, 1);
  const mix = randn(f * n, r, 1);
  const noise = randn(tokens * n, r, 0.3);
  const x = new Float32Array(tokens * n);
  for (let t = 0; t < tokens; t++) {
    for (let i = 0; i < n; i++) {
      let v = noise[t * n + i]!;
      for (let k = 0; k < f; k++) v += z[t * f + k]! * mix[k * n + i]!;
      x[t * n + i] = i === dead ? 0 : v;
    }
  }
  return x;
}

/**
 * 37 rows × 512 inputs (4–5 rows a task: the 4-row tiles and the tails): inputs from `seed` with
 * input `dead` dead, weights with exact zeros and −0 (codes with e = 0, which an update must skip
 * rather than add ±0 to a −0 weight), and H's factor
 */
function gridCase(seed: number, dead: number) {
  const n = 512;
  const out = 37;
  const x = inputs(400, n, seed, dead);
  const H = new Float64Array(n * n);
  accumulateRef(H, x, 400, n, n, 0);
  finish(H, n, 400);
  const w = Float32Array.from(randn(out * n, rng(seed + 1), 0.05));
  for (let i = 3; i < w.length; i += 17) w[i] = i % 2 ? -0 : 0;
  return { n, out, w, f: gptqFactor(H, n, { damp: 0.01 }) };
}

const CASES = [
  { out: 48, n: 256, gs: 128, tokens: 300, seed: 1 },
  { out: 40, n: 256, gs: 32, tokens: 64, seed: 2 }, // fewer tokens than inputs: the dampening keeps H definite
  { out: 24, n: 320, gs: 64, tokens: 200, seed: 3 }, // a last block of 64 columns
  { out: 16, n: 96, gs: 96, tokens: 150, seed: 4 }, // a group wider than nothing divides: blocks of one group
];

describe.skipIf(skipNative)('native GPTQ equals the TypeScript GPTQ', { timeout: 120_000 }, () => {
  it('the addon is built', () => {
    expect(addon).not.toBeNull();
  });

  for (const c of CASES) {
    it(`W [${c.out}, ${c.n}], group ${c.gs}, ${c.tokens} tokens: the same Hessian, codes, grids and Q`, async () => {
      const x = inputs(c.tokens, c.n, c.seed, 7);
      // two groups side by side (as wo_a's inputs): group 1 of a [tokens, 2n] input
      const wide = new Float32Array(c.tokens * 2 * c.n);
      for (let t = 0; t < c.tokens; t++) {
        wide.set(x.subarray(t * c.n, (t + 1) * c.n), t * 2 * c.n + c.n);
        wide.set(x.subarray(t * c.n, (t + 1) * c.n).map((v) => -v), t * 2 * c.n);
      }
      const Href = new Float64Array(c.n * c.n);
      const Hnat = new Float64Array(c.n * c.n);
      accumulateRef(Href, wide, c.tokens, c.n, 2 * c.n, 1);
      expect(hessianAccumulateNative(Hnat, wide, c.n, c.tokens, c.n, 2 * c.n)).toBe(true);
      expect(Buffer.from(Hnat.buffer).equals(Buffer.from(Href.buffer))).toBe(true);
      finish(Href, c.n, c.tokens);

      const w = Float32Array.from(randn(c.out * c.n, rng(c.seed + 100), 0.05));
      const ref = int4Quantizer(c.out, c.n, c.gs);
      const nat = int4Quantizer(c.out, c.n, c.gs);
      // the factor (dead inputs, U) bit for bit, then the column loop on it
      const fn = await gptqFactorNative(Href, c.n, 0.01);
      const fr = gptqFactor(Href, c.n, { damp: 0.01 });
      expect(Array.from(fn!.dead)).toEqual(Array.from(fr.dead));
      expect(fn!.dead[7]).toBe(1);
      expect(Buffer.from(fn!.U.buffer).equals(Buffer.from(fr.U.buffer))).toBe(true);
      const half = c.out / 2;
      for (const [r0, r1] of [[0, half], [half, c.out]] as const) {
        const Qr = gptqRows(w, c.n, r0, r1, Href, ref, { damp: 0.01 });
        const Qn = await gptqInt4Native(w, c.n, r0, r1, fn!, nat.result);
        expect(Qn).not.toBeNull();
        expect(Buffer.from(Qn!.buffer).equals(Buffer.from(Qr.buffer))).toBe(true);
      }
      expect(Buffer.from(nat.result.q).equals(Buffer.from(ref.result.q))).toBe(true);
      expect(Array.from(nat.result.scaleBits)).toEqual(Array.from(ref.result.scaleBits));
      expect(Array.from(nat.result.scales)).toEqual(Array.from(ref.result.scales));
      expect(Array.from(nat.result.zeros)).toEqual(Array.from(ref.result.zeros));
      // GPTQ moved codes away from round-to-nearest (the comparison is not of a trivial case)
      const rtn = int4Quantizer(c.out, c.n, c.gs);
      const diag = new Float64Array(c.n * c.n);
      for (let i = 0; i < c.n; i++) diag[i * c.n + i] = 1;
      gptqRows(w, c.n, 0, c.out, diag, rtn);
      expect(Buffer.from(rtn.result.q).equals(Buffer.from(ref.result.q))).toBe(false);
    });
  }

  // Each row's e H eᵀ bit for bit (t_j = Σ_{i<j} e_i·H_ij over i ascending, then
  // Σ_j e_j·(H_jj·e_j + 2·t_j) over j ascending, products and sums rounded apart; the rows' sums
  // then added in order, where the reference runs one sum through all rows: 1e-12). Shapes: rows
  // past a 64-row task and not a multiple of the 4-row tile, n past a 256-column block and not a
  // multiple of 32, zeros in E (skipped by the reference, added as ±0 by the tiles); 1030 rows
  // take the 256-row tasks on two threads.
  it('the output error tr(E H Eᵀ): each row bit for bit as the TypeScript sum, the total within 1e-12', async () => {
    for (const [n, rows, seed] of [[192, 37, 5], [300, 70, 6], [33, 5, 7], [290, 1030, 8]] as const) {
      const x = inputs(100, n, 9, 3);
      const H = new Float64Array(n * n);
      accumulateRef(H, x, 100, n, n, 0);
      finish(H, n, 100);
      const E = Float64Array.from(randn(rows * n, rng(seed), 0.01));
      for (let i = 5; i < E.length; i += 11) E[i] = 0;
      let byRow = 0;
      for (let r = 0; r < rows; r++) byRow += outputErrorSq(E.subarray(r * n, (r + 1) * n), 1, n, H);
      const want = outputErrorSq(E, rows, n, H);
      const got = await outputErrorSqNative(E, rows, n, H);
      expect(got, `${rows} × ${n}`).toBe(byRow);
      expect(Math.abs(got! - want) / want).toBeLessThan(1e-12);
    }
  });

  // The Cholesky factor and the inverse gptqFactor runs on H + damp, bit for bit: codes and Q
  // hide a last-bit change there (a fused multiply-add in the inverse leaves them as they were).
  // Sizes past the 32-row Cholesky panels, the inverse's 64-column strips and the Hessian's
  // 256-row blocks, with n not a multiple of the 4-row and 4-column tiles (the tails run the
  // one-row and one-column loops).
  it('the Hessian, the Cholesky factor and the inverse equal the TypeScript ones bit for bit', async () => {
    for (const [n, seed] of [[70, 11], [130, 12], [257, 13]] as const) {
      const x = inputs(3 * n, n, seed, 0);
      const H = new Float64Array(n * n);
      accumulateRef(H, x, 3 * n, n, n, 0);
      // the Hessian too at these sizes (n not a multiple of the 4-row tiles)
      const Hn = new Float64Array(n * n);
      hessianAccumulateNative(Hn, x, 0, 3 * n, n, n);
      expect(Buffer.from(Hn.buffer).equals(Buffer.from(H.buffer)), `H, n ${n}`).toBe(true);
      finish(H, n, 3 * n);
      for (let i = 0; i < n; i++) H[i * n + i]! += 0.01;
      const U = new Float64Array(n * n);
      const V = new Float64Array(n * n);
      await A().gptqCholeskyInverse(U, V, H, n);
      const Uref = choleskyUpper(H, n)!;
      expect(U, `U, n ${n}`).toEqual(Uref);
      expect(V, `U⁻¹, n ${n}`).toEqual(upperInverse(Uref, n));
    }
  });

  // The Q4_K and Q4_0 column loops on the addon: the GGUF bytes and Q of gptq.ts's q4kQuantizer /
  // q4_0Quantizer loop, byte for byte (its lazy batch update too: an e = 0 skipped, a −0 kept). Two row
  // ranges into one result (the second starts mid-tensor: the rows before it are the first
  // range's), a dead input, exact zeros and −0 weights, 37 rows (tasks of 4–5 rows), n = 512
  // (two Q4_K super-blocks, 16 Q4_0 blocks, Q4_0's 128-column blocks).
  it('the Q4_K and Q4_0 column loops equal gptq.ts\'s: bytes and Q', async () => {
    const { n, out, w, f } = gridCase(41, 13);
    for (const [kind, make] of [['q4_k', () => q4kQuantizer(out, n)], ['q4_0', () => q4_0Quantizer(out, n)]] as const) {
      const ref = make();
      const nat = make();
      for (const [r0, r1] of [[0, 20], [20, out]] as const) {
        const Qr = gptqRowsFactored(w, n, r0, r1, f, ref);
        const Qn = await gptqGgufNative(kind, w, n, r0, r1, f, nat.result);
        expect(Qn, kind).not.toBeNull();
        expect(Buffer.from(Qn!.buffer).equals(Buffer.from(Qr.buffer)), `${kind} Q rows ${r0}–${r1}`).toBe(true);
      }
      expect(Buffer.from(nat.result).equals(Buffer.from(ref.result)), `${kind} bytes`).toBe(true);
      // GPTQ moved codes off the round-to-nearest ones (not a trivial case)
      const rtn = kind === 'q4_k' ? quantizeQ4_K(w) : quantizeQ4_0(w);
      expect(Buffer.from(rtn).equals(Buffer.from(nat.result)), `${kind} differs from RTN`).toBe(false);
    }
  });

  it('an indefinite Hessian is refused like the TypeScript GPTQ refuses it', async () => {
    const n = 64;
    const H = new Float64Array(n * n);
    for (let i = 0; i < n; i++) H[i * n + i] = -1;
    const w = Float32Array.from(randn(8 * n, rng(1), 0.1));
    expect(() => gptqRows(w, n, 0, 8, H, int4Quantizer(8, n, 32), { name: 'tensor t' })).toThrow(/not positive definite/);
    await expect(gptqFactorNative(H, n, 0.01, 'tensor t')).rejects.toThrow(/tensor t: .*not positive definite/);
    await expect(gptqFactorNative(H, n, 0.01, 'tensor t')).rejects.toThrow(RangeError);
  });
});
