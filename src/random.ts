// v4tune's seeded generators, none of them for anything cryptographic:
// - mulberry32 (32 bits of state): data split, sampling, benchmarks and tests;
// - tensorRng (sfc32, 128 bits of state, one stream per (seed, name)): the weights of a preset,
//   LoRA initialisation and the training order, where each stream must not depend on the order
//   in which the others are drawn.

/** A seeded uniform generator in [0, 1): the same seed gives the same sequence on every machine. */
export function mulberry32(seed: number): () => number {
  const s = Int32Array.of(seed); // not a closure word: one over 2^30 is boxed on every draw (see sfc32)
  return () => {
    const t0 = (s[0] = s[0]! + 0x6d2b79f5);
    let t = Math.imul(t0 ^ (t0 >>> 15), t0 | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// FNV-1a of a string: the per-tensor stream id
function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/**
 * sfc32: a small fast PRNG with 128 bits of state; uniform in [0, 1). The state lives in an
 * Int32Array: held in closure variables, words over 2^30 are boxed numbers, and every draw
 * allocated four of them (≈ 18 ns a draw against ≈ 3). Same arithmetic mod 2^32, same sequence.
 */
export function sfc32(a: number, b: number, c: number, d: number): () => number {
  const s = Int32Array.of(a, b, c, d);
  return () => {
    const a0 = s[0]!, b0 = s[1]!, c0 = s[2]!, d0 = s[3]!;
    const t = (((a0 + b0) | 0) + d0) | 0;
    s[3] = d0 + 1;
    s[0] = b0 ^ (b0 >>> 9);
    s[1] = c0 + (c0 << 3);
    s[2] = (((c0 << 21) | (c0 >>> 11)) + t) | 0;
    return (t >>> 0) / 4294967296;
  };
}

/** the uniform stream of one tensor: depends only on (seed, name), not on the order tensors are made */
export function tensorRng(seed: number, name: string): () => number {
  const r = sfc32(0x9e3779b9, seed >>> 0, hashName(name), 0x243f6a88);
  for (let i = 0; i < 12; i++) r();
  return r;
}

