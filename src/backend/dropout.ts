// LoRA dropout masks (PEFT's lora_dropout): y = W x + s·B A dropout(x), dropout on the LoRA
// input only, in training only. A mask is never stored: it is a pure function of a 32-bit seed
// and the element's (row, col), a counter-based hash, so both backends draw the very same mask
// (kernels/cpu/lora.h `dropout_hash` is this function in C++, bit for bit) and a recomputed
// forward (activation checkpointing) draws it again whatever the order or the threads.
//   hash32(s, row, col) = fmix32(fmix32(s ^ row·0x9E3779B1) ^ col·0x85EBCA77)     (mod 2^32)
//   keep(s, row, col)   = hash32(s, row, col) >>> 8 ≥ threshold,  threshold = ⌊p·2^24⌋
// Kept values are multiplied by 1/(1 − p) (rounded to float32), dropped ones by 0.
import type { LoraDropout } from './ops.js';

/** murmur3's 32-bit finaliser: a bijection of uint32 with full avalanche. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The per-row part of the hash: fmix32(s ^ row·0x9E3779B1). */
export function dropoutRowKey(seed: number, row: number): number {
  return fmix32(seed ^ Math.imul(row, 0x9e3779b1));
}

/** hash32(s, row, col) (see the file comment). */
export function dropoutHash(seed: number, row: number, col: number): number {
  return fmix32(dropoutRowKey(seed, row) ^ Math.imul(col, 0x85ebca77));
}

/** ⌊p·2^24⌋: an element is kept iff its hash's top 24 bits are at least this. */
export function dropoutThreshold(p: number): number {
  return Math.floor(p * 2 ** 24);
}

/** The multiplier of a kept value, 1/(1 − p), as float32 (what both backends multiply by). */
export function dropoutScale(p: number): number {
  return Math.fround(1 / (1 - p));
}

/** The dropout of one LoRA site: probability p with the site's own seed; input row 0 is model row `row0`. */
export function loraDropout(p: number, seed: number, row0 = 0): LoraDropout {
  return row0 === 0 ? { p, threshold: dropoutThreshold(p), seed: seed >>> 0 } : { p, threshold: dropoutThreshold(p), seed: seed >>> 0, row0 };
}

/**
 * The seed of one adapted module's mask in one forward: the forward's dropout seed mixed with a
 * hash (FNV-1a) of the module's official name, so every module, each routed expert included,
 * draws its own mask whatever the set of adapted modules.
 */
export function moduleDropoutSeed(stepSeed: number, module: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < module.length; i++) h = Math.imul(h ^ module.charCodeAt(i), 0x01000193);
  return fmix32(fmix32(stepSeed >>> 0) ^ h);
}

/**
 * The mask as multipliers m [N, C] (1/(1−p) kept, 0 dropped) for the rows of an op's input:
 * row i of the input is model row rows[i] (rows null: row d.row0 + i).
 */
export function dropoutMask(d: LoraDropout, rows: ArrayLike<number> | null, N: number, C: number): Float32Array {
  const m = new Float32Array(N * C);
  const scale = dropoutScale(d.p);
  const thr = d.threshold;
  for (let i = 0; i < N; i++) {
    const key = dropoutRowKey(d.seed, rows ? rows[i]! : (d.row0 ?? 0) + i);
    const o = i * C;
    for (let c = 0; c < C; c++) if (fmix32(key ^ Math.imul(c, 0x85ebca77)) >>> 8 >= thr) m[o + c] = scale;
  }
  return m;
}
