// Loads the native addon (native/build/Release/v4tune_native.node) and types its entry points.
// Argument lists mirror the C++ kernels in kernels/cpu/ (shapes are stated there and below).
// Every compute entry returns a Promise: the kernel runs on a libuv worker thread, never on the
// JS thread. Output buffers are written in place; `+=` marks the ones that accumulate.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { V4tuneError } from '../../errors.js';

type F32 = Float32Array;
type I32 = Int32Array;
type Buf = Float32Array | Uint8Array | Uint16Array;

/** Weight formats the kernels read directly (dequantised inside the GEMM's packing step). */
export const FMT = { f32: 0, bf16: 1, fp8: 2, fp4: 3 } as const;
export type NativeFormat = keyof typeof FMT;

/**
 * A frozen weight as the kernels take it: logical shape [rows, cols] and the shipped bytes.
 * f32: Float32Array; bf16: 2 bytes a value; fp8: e4m3 bytes + E8M0 scales [⌈rows/128⌉, ⌈cols/128⌉];
 * fp4: e2m1 nibbles (low first) [rows, cols/2] + E8M0 scales [rows, cols/32].
 */
export interface RawWeight {
  readonly fmt: number;
  readonly data: Buf;
  readonly scale: Uint8Array | null;
  readonly rows: number;
  readonly cols: number;
}

export function rawWeight(format: NativeFormat, data: Buf, scale: Uint8Array | null, rows: number, cols: number): RawWeight {
  return { fmt: FMT[format], data, scale, rows, cols };
}

/**
 * Dropout on a LoRA input (kernels/cpu/lora.h `Dropout`): element (row, col) kept iff
 * hash32(seed, row, col) >>> 8 ≥ threshold, kept values times scale (1/(1−p)); null: none.
 */
/** row0: the model row of the input's row 0 (linears; routed experts name their rows) */
export interface RawDropout { threshold: number; scale: number; seed: number; row0?: number }

/**
 * One routed expert for routedExpertsForward/Backward; a missing aN means no adapter on that projection,
 * a missing dN no dropout on its LoRA input (x for 1 and 3, act for 2; row = the token index).
 */
export interface RawExpert {
  w1: RawWeight; w2: RawWeight; w3: RawWeight;
  a1?: F32; b1?: F32; r1?: number; s1?: number; d1?: RawDropout;
  a2?: F32; b2?: F32; r2?: number; s2?: number; d2?: RawDropout;
  a3?: F32; b3?: F32; r3?: number; s3?: number; d3?: RawDropout;
}
export interface RawExpertGrads { da1?: F32; db1?: F32; da2?: F32; db2?: F32; da3?: F32; db3?: F32 }

export interface NativeAddon {
  /**
   * keepFreed: glibc keeps freed memory in the process for reuse (no mmap for large blocks, no
   * heap trim), set when the addon loads unless V4TUNE_MALLOC=system.
   */
  info(): { isa: 'avx512' | 'avx2' | 'scalar'; threads: number; cpuBf16: boolean; bf16: boolean; cpuAmx: boolean; amx: boolean; keepFreed: boolean };
  /** Resize the kernel thread pool (0: the default, V4TUNE_THREADS or the core count). */
  setThreads(n: number): number;
  setIsa(isa: 'avx512' | 'avx2' | 'scalar'): string;
  /**
   * Opt-in speed mode (CPUs with AVX512_BF16; V4TUNE_BF16=1 at start): GEMM inputs rounded to bf16,
   * products summed in fp32 (vdpbf16ps). Stated tolerance: max|Δ|/max|C| ≤ 1e-2 against fp32.
   * Returns whether the mode is on.
   */
  setBf16(on: boolean): boolean;
  /**
   * bf16 mode's GEMMs on AMX tiles where the CPU has AMX-BF16 (on by default; V4TUNE_AMX=0 at
   * start turns it off): the same bf16 operands and fp32 sums, summed in the tile unit's order.
   * Returns whether bf16 mode now runs on AMX (false while bf16 mode is off).
   */
  setAmx(on: boolean): boolean;
  /** Ask running kernels to stop; they reject with "v4tune: kernel cancelled". */
  cancel(): void;
  clearCancel(): void;
  /** Measured FMA peak in GFLOP/s at the dispatched vector width. */
  fmaPeak(threads: number, seconds: number): number;
  /** C[M,N] = beta·C + alpha·A·B; A(m,k) = a[m·sam + k·sak]; B(k,n) = W[n][k] if transB else W[k][n]. */
  gemm(M: number, N: number, K: number, alpha: number, a: F32, sam: number, sak: number, W: RawWeight, transB: boolean, beta: number, c: F32, ldc: number): Promise<void>;
  gemmReference(M: number, N: number, K: number, alpha: number, a: F32, sam: number, sak: number, W: RawWeight, transB: boolean, beta: number, c: F32, ldc: number): void;
  /** out [rows, cols] = W dequantised */
  decodeWeight(W: RawWeight, out: F32): void;
  /** out[i] = x[i] as half bits (formats.ts f32ToF16Bytes), across the pool */
  f32ToF16(out: Uint16Array, x: F32): void;
  /** the index of the first NaN or ±Infinity in x, or -1 */
  firstNonFinite(x: F32): number;
  /** dst[i] += src[i] (same length), across the pool */
  addInto(dst: F32, src: F32): void;
  /** x [T, G·inG], W [G·outG, inG], A [r, inG], B [G·outG, r] → y [T, G·outG]; dropout over x [T, G·inG] on the LoRA path */
  linearForward(y: F32, x: F32, W: RawWeight, A: F32 | null, B: F32 | null, r: number, s: number, T: number, G: number, dropout?: RawDropout | null): Promise<void>;
  /** dx, dA, dB += */
  linearBackward(dx: F32 | null, dA: F32 | null, dB: F32 | null, dy: F32, x: F32, W: RawWeight, A: F32 | null, B: F32 | null, r: number, s: number, T: number, G: number, dropout?: RawDropout | null): Promise<void>;
  /** m [N, C] = the kernels' dropout multipliers (scale kept, 0 dropped) at rows rows[i] (null: i); for tests */
  dropoutMask(m: F32, rows: I32 | null, N: number, C: number, dropout: RawDropout): void;
  /** pairs sorted by expert: off [E+1], idx [P] tokens, w [P] routing weights; out [T, d] += */
  /** h13 (2·P·I), when given, receives each pair's h1 (at p·I) and h3 (at (P + p)·I) for the backward */
  routedExpertsForward(out: F32, x: F32, T: number, d: number, I: number, idx: I32, off: I32, w: F32, experts: RawExpert[], limit: number, h13?: F32 | null): Promise<void>;
  /** dx [T, d], dw [P], grads += */
  /** h13: the forward's (read, not changed), or null to recompute h1 and h3 */
  routedExpertsBackward(dx: F32 | null, dw: F32 | null, grads: RawExpertGrads[], dout: F32, x: F32, T: number, d: number, I: number, idx: I32, off: I32, w: F32, experts: RawExpert[], limit: number, h13?: F32 | null): Promise<void>;
  rmsnormForward(out: F32, rstd: F32, inp: F32, weight: F32 | null, T: number, C: number, eps: number): Promise<void>;
  rmsnormBackward(dinp: F32, dweight: F32 | null, dout: F32, inp: F32, weight: F32 | null, rstd: F32, T: number, C: number): Promise<void>;
  /** x [T, H, D] rotated in place; cos/sin [maxPos, rd/2] */
  /** x rotated in place, or x = src rotated (one pass, no copy beforehand) */
  rope(x: F32, pos: I32, cos: F32, sin: F32, maxPos: number, T: number, H: number, D: number, rd: number, inverse: boolean, src?: F32): Promise<void>;
  embedding(out: F32, ids: I32, E: RawWeight, T: number): Promise<void>;
  /** loss [T] per counted position (weights ≠ 0); dh [T, d] += weights·(softmax·W − W[target]) */
  /** top1 (optional): each row's first index of its largest logit, counted rows or not */
  lmheadCe(loss: F32, dh: F32 | null, h: F32, W: RawWeight, targets: I32, weights: F32, T: number, chunk: number, top1?: I32 | null): Promise<void>;
  /** q [T, H, D], kv [M, D], idx [T, K] (−1 none) → o [T, H, D], lse [T, H] */
  attentionForward(o: F32, lse: F32, q: F32, kv: F32, idx: I32, sink: F32, T: number, H: number, D: number, M: number, K: number, scale: number): Promise<void>;
  attentionBackward(dq: F32, dkv: F32, dsink: F32 | null, dout: F32, lse: F32, q: F32, kv: F32, idx: I32, sink: F32, T: number, H: number, D: number, M: number, K: number, scale: number): Promise<void>;
  indexerTopk(idx: I32, q: F32, k: F32, w: F32, kStart: I32, kCount: I32, T: number, M: number, nh: number, hd: number, K: number): Promise<void>;
  /** full: y, post, comb, mix; hc_head (full = false): y, mix */
  mhcPreForward(y: F32, post: F32 | null, comb: F32 | null, mix: F32, X: F32, fn: F32, scale: F32, base: F32, T: number, hc: number, d: number, full: boolean, iters: number, eps: number, normEps: number): Promise<void>;
  mhcPreBackward(dX: F32, dy: F32, dpost: F32 | null, dcomb: F32 | null, mix: F32, X: F32, fn: F32, scale: F32, base: F32, T: number, hc: number, d: number, full: boolean, iters: number, eps: number, normEps: number): Promise<void>;
  mhcPostForward(out: F32, F: F32, X: F32, post: F32, comb: F32, T: number, hc: number, d: number): Promise<void>;
  mhcPostBackward(dF: F32 | null, dX: F32 | null, dpost: F32 | null, dcomb: F32 | null, dout: F32, F: F32, X: F32, post: F32, comb: F32, T: number, hc: number, d: number): Promise<void>;
  compressorForward(out: F32, a: F32, z: F32, ape: F32, segs: I32, ratio: number, hd: number, overlap: boolean): Promise<void>;
  compressorBackward(da: F32 | null, dz: F32 | null, dout: F32, a: F32, z: F32, ape: F32, segs: I32, ratio: number, hd: number, overlap: boolean): Promise<void>;
  /** GPTQ (kernels/cpu/gptq.h, float64, the operations of src/export/gptq.ts in its order): H [n, n] upper triangle += Σ_t x_tᵀ x_t over X [rows, ldx] */
  gptqHessianAccumulate(H: Float64Array, X: F32, rows: number, n: number, ldx: number): void;
  /** GPTQ's factor of H: U = upper Cholesky factor of (H + damp)⁻¹, dead = inputs with H_ii = 0 (gptq.ts gptqFactor); rejects when H + damp is not positive definite */
  gptqFactor(U: Float64Array, dead: Uint8Array, H: Float64Array, n: number, damp: number): Promise<void>;
  /** GPTQ of rows r0 … r1−1 of W [out, n] on the INT4 group grid from gptqFactor's U and dead: fills those rows of codes/scales/scaleBits/zeros, Q [r1−r0, n] */
  gptqInt4(codes: Uint8Array, scales: F32, scaleBits: Uint16Array, zeros: Uint8Array, Q: Float64Array, W: F32, r0: number, r1: number, U: Float64Array, dead: Uint8Array, n: number, group: number): Promise<void>;
  /** the column loop on llama.cpp's Q4_K grid (gptq.ts q4kQuantizer): dst = GGUF bytes of every row, rows r0 … r1−1 written */
  gptqQ4K(dst: Uint8Array, Q: Float64Array, W: F32, r0: number, r1: number, U: Float64Array, dead: Uint8Array, n: number): Promise<void>;
  /** the same on llama.cpp's Q4_0 grid (gptq.ts q4_0Quantizer) */
  gptqQ40(dst: Uint8Array, Q: Float64Array, W: F32, r0: number, r1: number, U: Float64Array, dead: Uint8Array, n: number): Promise<void>;
  /** round to nearest on the INT4 group grid of W [out, n] (int4.ts quantizeRtn): codes, scales, scaleBits, zeros; sums [out, 4] = per row Σ|e|, Σe², max|e|, Σw² (int4.ts rowErrorSums); bad[0] = index of the first non-finite weight or −1 */
  int4Rtn(codes: Uint8Array, scales: F32, scaleBits: Uint16Array, zeros: Uint8Array, sums: Float64Array, bad: Float64Array, W: F32, out: number, n: number, group: number): Promise<void>;
  /** AutoGPTQ's packing of an INT4 grid (gptq-export.ts packGptq): qweight [n/8, out], qzeros [n/group, out/8], scales16 [n/group, out] */
  /** llama.cpp's Q4_K of W [rows, n] (n % 256 = 0) rounded to nearest as q4k.ts quantizeQ4_K (the same bytes) into dst; sums [rows, 4] as int4Rtn's against dequantizeQ4_K; bad[0] = index of the first non-finite weight or −1 */
  q4kRtn(dst: Uint8Array, sums: Float64Array, bad: Float64Array, W: F32, rows: number, n: number): Promise<void>;
  /** llama.cpp's Q4_0 of W (rows, n) rounded to nearest (gguf.ts quantizeQ4_0) with the per-row error sums */
  q40Rtn(dst: Uint8Array, sums: Float64Array, bad: Float64Array, W: F32, rows: number, n: number): Promise<void>;
  /** ggml's Q8_0 of W (rows, n) rounded to nearest (ggml-quants.ts quantizeQ8_0) with the per-row error sums */
  q80Rtn(dst: Uint8Array, sums: Float64Array, bad: Float64Array, W: F32, rows: number, n: number): Promise<void>;
  int4PackGptq(qweight: Int32Array, qzeros: Int32Array, scales16: Uint16Array, codes: Uint8Array, zeros: Uint8Array, scaleBits: Uint16Array, out: number, n: number, group: number): Promise<void>;
  /** out[0] = tr(E H Eᵀ), E [rows, n] */
  gptqOutputError(out: Float64Array, E: Float64Array, H: Float64Array, rows: number, n: number): Promise<void>;
  /** U = A's upper Cholesky factor, V = U⁻¹: the two steps gptqFactor runs on H + damp reversed (exposed so tests compare their bits with gptq.ts) */
  gptqCholeskyInverse(U: Float64Array, V: Float64Array, A: Float64Array, n: number): Promise<void>;
  /**
   * Merge (kernels/cpu/requant.h, bit for bit src/export/merge.ts): W dequantised + scaling·B·A
   * (A [r, cols], B [rows, r], or both null), encoded as outFmt 1 bf16 | 2 fp8 (128×128 block
   * scales) | 3 fp4 (per-32 scales) into outData / outScale; status = [first non-finite index or −1, its value]
   */
  mergeRequant(outData: Uint8Array, outScale: Uint8Array | null, status: Float64Array, W: RawWeight, A: F32 | null, B: F32 | null, r: number, scaling: number, outFmt: number): Promise<void>;
  /**
   * copy `length` bytes at `offIn` of the open file `fdIn` to `offOut` of `fdOut`, in the kernel
   * (copy_file_range) where the file systems allow, else through a buffer, off the JS thread
   */
  copyRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): Promise<void>;
  /**
   * create (or truncate) `file` for direct writes (O_DIRECT, native/direct_io.h) of a file of
   * `size` bytes: a handle, or −1 where the file system does not take them
   */
  directOpen(file: string, size: number): number;
  /** write `data` at `pos` of a direct file (any range, each byte once), off the JS thread */
  directWrite(handle: number, data: Uint8Array, pos: number): Promise<void>;
  /** directWrite on the JS thread */
  directWriteSync(handle: number, data: Uint8Array, pos: number): void;
  /**
   * write the `length` bytes at `offIn` of the open file `fdIn` at `pos` of a direct file, off the
   * JS thread; `srcDirect`: fdIn was opened by directReadOpen
   */
  directCopy(handle: number, fdIn: number, offIn: number, pos: number, length: number, srcDirect?: boolean): Promise<void>;
  /** open `file` for direct reads (O_DIRECT): a descriptor (closed with fs.closeSync), or −1 where the file system refuses them */
  directReadOpen(file: string): number;
  /** fill `into` with the bytes at `pos` of a descriptor from directReadOpen, off the JS thread */
  directRead(fd: number, into: Uint8Array, pos: number): Promise<void>;
  /** the fraction of the open file's pages in the page cache */
  residentFraction(fd: number): number;
  /** write the last block, set the size, close; an error names the first block never written */
  directClose(handle: number): void;
  /** close without flushing (the caller removes the file) */
  directAbort(handle: number): void;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// src/backend/native and dist/backend/native both sit three levels below the package root
export const ADDON_PATH = path.join(here, '..', '..', '..', 'native', 'build', 'Release', 'v4tune_native.node');

let cached: { addon: NativeAddon | null; reason: string } | null = null;

/** Why the addon is not loadable, in one sentence; '' when it is. */
function load(): { addon: NativeAddon | null; reason: string } {
  if (cached) return cached;
  if (!existsSync(ADDON_PATH)) {
    const status = path.join(path.dirname(ADDON_PATH), '..', 'build-status.json');
    let why = 'it was not built (run `npm run build:native`)';
    if (existsSync(status)) {
      try {
        const s = JSON.parse(readFileSync(status, 'utf8')) as { ok?: boolean; error?: string | null };
        if (s.ok === false) why = `its build failed (${s.error ?? 'unknown error'}; run \`npm run build:native\` to see why)`;
      } catch {
        // an unreadable status file says nothing more than a missing one
      }
    }
    cached = { addon: null, reason: `the native addon is unavailable: ${why}` };
    return cached;
  }
  try {
    const require = createRequire(import.meta.url);
    cached = { addon: require(ADDON_PATH) as NativeAddon, reason: '' };
  } catch (e) {
    cached = { addon: null, reason: `the native addon failed to load: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}` };
  }
  return cached;
}

/** The addon, or null; `nativeUnavailableReason()` says why it is null. */
export function tryLoadAddon(): NativeAddon | null {
  return load().addon;
}

export function nativeUnavailableReason(): string {
  return load().reason;
}

/** The addon, or a V4tuneError saying why it cannot be used. */
export function loadAddon(): NativeAddon {
  const { addon, reason } = load();
  if (!addon) throw new V4tuneError(`v4tune: ${reason}`);
  return addon;
}
