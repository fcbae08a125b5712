// Weight number formats as DeepSeek V4 ships them, both directions, bit-exact:
// FP8 e4m3fn (+ E8M0 128x128 block scales), FP4 e2m1 (+ E8M0 per-32 scales), E8M0, BF16, F16.
// All encoders round to nearest, ties to even, and saturate (no inf in e4m3fn / e2m1).

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

// round half to even of a double (exact for the scaled values used below)
function rne(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

const f64buf = new Float64Array(1);
const f64words = new Uint32Array(f64buf.buffer); // little-endian: [low, high]

// exponent e with 2^e <= a < 2^(e+1), a > 0 finite: a normal double's exponent field (the
// encoders call this once per value, and Math.log2 made F16 export of a large tensor slow)
function floorLog2(a: number): number {
  f64buf[0] = a;
  const biased = (f64words[1]! >>> 20) & 0x7ff;
  if (biased !== 0) return biased - 1023;
  let e = Math.floor(Math.log2(a)); // a subnormal double
  if (2 ** e > a) e -= 1;
  else if (2 ** (e + 1) <= a) e += 1;
  return e;
}

// ---------------------------------------------------------------- FP8 e4m3fn
// bits s eeee mmm, bias 7. e>0: (1 + m/8)·2^(e-7); e=0: m/8·2^-6. 0x7f / 0xff are NaN, no inf,
// largest finite 0x7e = 1.75·2^8 = 448.

/** value of every e4m3fn byte */
export const FP8_E4M3_TABLE: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const s = b & 0x80 ? -1 : 1;
    const e = (b >> 3) & 0xf;
    const m = b & 7;
    if ((b & 0x7f) === 0x7f) t[b] = NaN;
    else if (e === 0) t[b] = s * (m / 8) * 2 ** -6;
    else t[b] = s * (1 + m / 8) * 2 ** (e - 7);
  }
  return t;
})();

export const FP8_E4M3_MAX = 448;

export function fp8e4m3Decode(b: number): number {
  return FP8_E4M3_TABLE[b & 0xff]!;
}

/** nearest e4m3fn byte (ties to even), |x| beyond 448 (and ±inf) saturates to ±448, NaN -> 0x7f */
export function fp8e4m3Encode(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= FP8_E4M3_MAX) return sign | 0x7e;
  let code: number;
  if (a < 2 ** -6) {
    // subnormal: steps of 2^-9; rounding up to 8 gives 0x08 = 2^-6, the smallest normal
    code = rne(a * 2 ** 9);
  } else {
    const e = floorLog2(a);
    // (e+7)·8 + mantissa is monotonic in the value, so a mantissa that rounds to 8 carries into e
    code = (e + 7) * 8 + rne((a / 2 ** e - 1) * 8);
  }
  if (code > 0x7e) code = 0x7e;
  return sign | code;
}

// ---------------------------------------------------------------- E8M0
// an unsigned biased exponent: byte b means 2^(b-127); 0xff is NaN.

// every byte's value, exact in double (2^-127 … 2^127, NaN): a table lookup instead of a pow per element
const E8M0_VALUES = Float64Array.from({ length: 256 }, (_, b) => (b === 0xff ? NaN : 2 ** (b - 127)));

export function e8m0Decode(b: number): number {
  return E8M0_VALUES[b] ?? (b === 0xff ? NaN : 2 ** (b - 127));
}

/** byte of the power of two 2^e (e clamped to -127..127) */
export function e8m0FromExponent(e: number): number {
  return Math.min(254, Math.max(0, e + 127));
}

/**
 * The E8M0 scale byte for a block whose largest magnitude is amax, so that amax / scale <= qmax:
 * the smallest power of two s with s >= amax / qmax (1 when the block is all zero).
 */
export function e8m0ScaleFor(amax: number, qmax: number): number {
  if (!(amax > 0) || !Number.isFinite(amax)) return 127;
  const r = amax / qmax;
  let e = floorLog2(r);
  if (2 ** e < r) e += 1;
  return e8m0FromExponent(e);
}

// ---------------------------------------------------------------- FP4 e2m1
// nibble s eem: sign bit 3, magnitudes by the 3 low bits {0, 0.5, 1, 1.5, 2, 3, 4, 6}.

export const FP4_E2M1_VALUES: ReadonlyArray<number> = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
export const FP4_E2M1_MAX = 6;

export function fp4e2m1Decode(nibble: number): number {
  const m = FP4_E2M1_VALUES[nibble & 7]!;
  return nibble & 8 ? -m : m;
}

/** nearest e2m1 nibble (ties to the even code), saturating at ±6; NaN -> +0 */
export function fp4e2m1Encode(x: number): number {
  if (Number.isNaN(x)) return 0;
  const sign = x < 0 || Object.is(x, -0) ? 8 : 0;
  const a = Math.abs(x);
  let code = 7;
  for (let c = 0; c < 7; c++) {
    const mid = (FP4_E2M1_VALUES[c]! + FP4_E2M1_VALUES[c + 1]!) / 2;
    if (a < mid || (a === mid && c % 2 === 0)) {
      code = c;
      break;
    }
  }
  return sign | code;
}

// ---------------------------------------------------------------- BF16 / F16

export function bf16Decode(h: number): number {
  u32buf[0] = (h & 0xffff) << 16;
  return f32buf[0]!;
}

/** round a float32 to bf16 bits, nearest-even; NaN -> 0x7fc0 (sign kept) */
export function bf16Encode(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) & 0x8000) | 0x7fc0;
  const lsb = (u >>> 16) & 1;
  return ((u + 0x7fff + lsb) >>> 16) & 0xffff;
}

export function f16Decode(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** nearest IEEE half bits, ties to even; overflow -> ±inf, NaN -> 0x7e00 */
export function f16Encode(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  f32buf[0] = x;
  const a0 = Math.abs(f32buf[0]!);
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  if (a0 === Infinity) return sign | 0x7c00;
  let code: number;
  if (a0 < 2 ** -14) code = rne(a0 * 2 ** 24);
  else {
    const e = floorLog2(a0);
    code = (e + 15) * 1024 + rne((a0 / 2 ** e - 1) * 1024);
  }
  if (code >= 0x7c00) code = 0x7c00;
  return sign | code;
}

// ---------------------------------------------------------------- whole tensors

/** bytes of a little-endian BF16 tensor -> f32 */
export function bf16BytesToF32(bytes: Uint8Array): Float32Array {
  const n = bytes.length >> 1;
  const out = new Float32Array(n);
  const o32 = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) o32[i] = (bytes[2 * i]! | (bytes[2 * i + 1]! << 8)) << 16;
  return out;
}

export function f32ToBf16Bytes(x: Float32Array): Uint8Array {
  const out = new Uint8Array(x.length * 2);
  for (let i = 0; i < x.length; i++) {
    const h = bf16Encode(x[i]!);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >> 8;
  }
  return out;
}

export function f16BytesToF32(bytes: Uint8Array): Float32Array {
  const n = bytes.length >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = f16Decode(bytes[2 * i]! | (bytes[2 * i + 1]! << 8));
  return out;
}

export function f32ToF16Bytes(x: Float32Array): Uint8Array {
  const out = new Uint8Array(x.length * 2);
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let i = 0; i < x.length; i++) {
    const h = f16FromF32Bits(bits[i]!);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >> 8;
  }
  return out;
}

/** f16Encode of the f32 with these bits, from the bits alone (the same codes; a tensor's worth of calls stays fast) */
function f16FromF32Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x7f800000) return a > 0x7f800000 ? 0x7e00 : sign | 0x7c00;
  const exp = a >>> 23;
  const mant = a & 0x7fffff;
  if (exp >= 113) {
    // normal in f16 (or overflowing): 10 of the 23 mantissa bits, nearest, ties to even
    let h = ((exp - 112) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++;
    return sign | Math.min(h, 0x7c00);
  }
  // below 2^-14: a multiple of 2^-24 (f16's subnormals), nearest, ties to even
  const shift = 126 - exp;
  if (shift > 24) return sign;
  const m = mant | 0x800000;
  let h = m >>> shift;
  const rest = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (h & 1) === 1)) h++;
  return sign | h;
}

/** little-endian F32 bytes -> Float32Array (copied, so any alignment works) */
export function f32BytesToF32(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length >> 2);
  new Uint8Array(out.buffer).set(bytes.subarray(0, out.length * 4));
  return out;
}

export function f32ToBytes(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength));
}

export const FP8_BLOCK = 128;
export const FP4_GROUP = 32;

/**
 * Block-scaled FP8: w is (out, in) e4m3 bytes, scale is (ceil(out/128), ceil(in/128)) E8M0 bytes.
 * value[i][j] = fp8(w[i][j]) · 2^(scale[i/128][j/128] − 127)
 */
export function dequantFp8Block(w: Uint8Array, scale: Uint8Array, rows: number, cols: number): Float32Array {
  const sc = Math.ceil(cols / FP8_BLOCK);
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const srow = (i >> 7) * sc;
    const o = i * cols;
    for (let j = 0; j < cols; j++) {
      out[o + j] = FP8_E4M3_TABLE[w[o + j]!]! * e8m0Decode(scale[srow + (j >> 7)]!);
    }
  }
  return out;
}

/**
 * Quantise (out, in) f32 to block-scaled FP8: per 128x128 block, scale = the smallest power of two
 * with amax/scale <= 448, then each value is e4m3(value/scale) (nearest-even, saturating).
 */
export function quantFp8Block(x: Float32Array, rows: number, cols: number): { weight: Uint8Array; scale: Uint8Array; scaleShape: [number, number] } {
  const sr = Math.ceil(rows / FP8_BLOCK);
  const sc = Math.ceil(cols / FP8_BLOCK);
  const scale = new Uint8Array(sr * sc);
  const weight = new Uint8Array(rows * cols);
  for (let bi = 0; bi < sr; bi++) {
    for (let bj = 0; bj < sc; bj++) {
      const i1 = Math.min(rows, (bi + 1) * FP8_BLOCK);
      const j1 = Math.min(cols, (bj + 1) * FP8_BLOCK);
      let amax = 0;
      for (let i = bi * FP8_BLOCK; i < i1; i++) {
        for (let j = bj * FP8_BLOCK; j < j1; j++) amax = Math.max(amax, Math.abs(x[i * cols + j]!));
      }
      const sb = e8m0ScaleFor(amax, FP8_E4M3_MAX);
      scale[bi * sc + bj] = sb;
      const inv = 1 / e8m0Decode(sb);
      for (let i = bi * FP8_BLOCK; i < i1; i++) {
        for (let j = bj * FP8_BLOCK; j < j1; j++) weight[i * cols + j] = fp8e4m3Encode(x[i * cols + j]! * inv);
      }
    }
  }
  return { weight, scale, scaleShape: [sr, sc] };
}

/**
 * FP4 experts: packed is (out, in/2) bytes, value 2c in the low nibble and 2c+1 in the high one;
 * scale is (out, in/32) E8M0. value[i][j] = e2m1(nibble(i, j)) · 2^(scale[i][j/32] − 127)
 */
export function dequantFp4(packed: Uint8Array, scale: Uint8Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  const groups = cols / FP4_GROUP;
  const half = cols >> 1;
  for (let i = 0; i < rows; i++) {
    for (let c = 0; c < half; c++) {
      const b = packed[i * half + c]!;
      const j = 2 * c;
      const s = e8m0Decode(scale[i * groups + (j >> 5)]!);
      out[i * cols + j] = fp4e2m1Decode(b & 0xf) * s;
      out[i * cols + j + 1] = fp4e2m1Decode(b >> 4) * s;
    }
  }
  return out;
}

/** Quantise (out, in) f32 to FP4 e2m1 with one E8M0 scale per 32 inputs (smallest power of two with amax/scale <= 6). */
export function quantFp4(x: Float32Array, rows: number, cols: number): { weight: Uint8Array; scale: Uint8Array; scaleShape: [number, number] } {
  if (cols % FP4_GROUP !== 0) throw new RangeError(`FP4 needs in (${cols}) to be a multiple of ${FP4_GROUP}`);
  const groups = cols / FP4_GROUP;
  const scale = new Uint8Array(rows * groups);
  const weight = new Uint8Array((rows * cols) >> 1);
  for (let i = 0; i < rows; i++) {
    for (let g = 0; g < groups; g++) {
      const o = i * cols + g * FP4_GROUP;
      let amax = 0;
      for (let j = 0; j < FP4_GROUP; j++) amax = Math.max(amax, Math.abs(x[o + j]!));
      const sb = e8m0ScaleFor(amax, FP4_E2M1_MAX);
      scale[i * groups + g] = sb;
      const inv = 1 / e8m0Decode(sb);
      for (let j = 0; j < FP4_GROUP; j += 2) {
        const lo = fp4e2m1Encode(x[o + j]! * inv);
        const hi = fp4e2m1Encode(x[o + j + 1]! * inv);
        weight[(o + j) >> 1] = lo | (hi << 4);
      }
    }
  }
  return { weight, scale, scaleShape: [rows, groups] };
}

/** INT4 codes of a weight [out, in] with per-(row, group) grids. */
export interface Int4Weight {
  out: number;
  inF: number;
  groupSize: number;
  /** codes 0..15, [out, in] row-major */
  q: Uint8Array;
  /** fp16 scale values, [out, groups] */
  scales: Float32Array;
  /** fp16 bits of the scales, [out, groups] */
  scaleBits: Uint16Array;
  /** zero points 1..15, [out, groups] */
  zeros: Uint8Array;
}
