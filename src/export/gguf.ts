// GGUF (version 3, ggml's model file format): a streaming writer, a header reader (for tests and
// inspection), and llama.cpp's Q4_0 block quantisation (Q4_K: q4k.ts; Q8_0, Q5_0: ggml-quants.ts).
//
// File layout (all little-endian):
//   u32 magic "GGUF" | u32 version = 3 | u64 tensor_count | u64 kv_count
//   kv_count × (string key | u32 value_type | value)        string = u64 length + UTF-8 bytes
//   tensor_count × (string name | u32 n_dims | n_dims × u64 ne | u32 ggml_type | u64 offset)
//   padding to `general.alignment` (default 32), then the tensor data; each tensor's offset is
//   relative to the data start and a multiple of the alignment.
// ne[0] is the innermost (contiguous) dimension: a row-major [out, in] matrix has ne = [in, out].
import { closeSync, fstatSync, openSync, readSync, renameSync, rmSync } from 'node:fs';
import { openOutFile, type OutFile } from '../model/out-file.js';
import { InputError } from '../errors.js';
import { sweepTemps, tempNameBeside } from '../fsutil.js';
import { f16Decode, f16Encode } from '../model/formats.js';
import { Q4_K_BLOCK, Q4_K_BYTES } from './q4k.js';
import { Q5_0_BYTES, Q8_0_BYTES } from './ggml-quants.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value types */
export const GgufType = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7,
  STRING: 8, ARRAY: 9, UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;
export type GgufTypeId = (typeof GgufType)[keyof typeof GgufType];

/** the ggml tensor types this writer emits */
export const GgmlType = { F32: 0, F16: 1, Q4_0: 2, Q5_0: 6, Q8_0: 8, Q4_K: 12, I32: 26, BF16: 30 } as const;
export type GgmlTypeId = (typeof GgmlType)[keyof typeof GgmlType];

/** Q4_0: 32 weights per block, f16 d + 16 bytes of nibbles */
export const Q4_0_BLOCK = 32;
export const Q4_0_BYTES = 18;

export type GgufScalar = number | bigint | boolean | string;

/** One metadata entry; `itemType` for arrays. */
export interface GgufKv {
  key: string;
  type: GgufTypeId;
  value: GgufScalar | GgufScalar[];
  itemType?: GgufTypeId;
}

export interface GgufTensorInfo {
  name: string;
  /** ne, innermost first */
  dims: number[];
  type: GgmlTypeId;
}

/** bytes of a tensor's data */
export function ggmlBytes(type: GgmlTypeId, dims: ReadonlyArray<number>): number {
  const n = dims.reduce((a, b) => a * b, 1);
  switch (type) {
    case GgmlType.F32: case GgmlType.I32: return 4 * n;
    case GgmlType.F16: case GgmlType.BF16: return 2 * n;
    case GgmlType.Q4_0: case GgmlType.Q5_0: case GgmlType.Q8_0: {
      const name = type === GgmlType.Q4_0 ? 'Q4_0' : type === GgmlType.Q5_0 ? 'Q5_0' : 'Q8_0';
      if (dims[0]! % Q4_0_BLOCK !== 0) throw new Error(`${name} needs ne[0] to be a multiple of ${Q4_0_BLOCK} (got ${dims[0]})`);
      return (n / Q4_0_BLOCK) * (type === GgmlType.Q4_0 ? Q4_0_BYTES : type === GgmlType.Q5_0 ? Q5_0_BYTES : Q8_0_BYTES);
    }
    case GgmlType.Q4_K:
      if (dims[0]! % Q4_K_BLOCK !== 0) throw new Error(`Q4_K needs ne[0] to be a multiple of ${Q4_K_BLOCK} (got ${dims[0]})`);
      return (n / Q4_K_BLOCK) * Q4_K_BYTES;
  }
}

const align = (x: number, a: number): number => Math.ceil(x / a) * a;

// ---------------------------------------------------------------- encoding

// the header, written into one growing buffer (a tokenizer's ≈ 10⁶ fields, one small buffer
// each, were most of a tiny model's export time, in the garbage collector)
class ByteSink {
  buf = Buffer.alloc(1 << 16);
  length = 0;
  /** n bytes reserved at the end; their offset in buf (read buf after the call: it may grow) */
  reserve(n: number): number {
    if (this.length + n > this.buf.length) {
      const b = Buffer.alloc(Math.max(2 * this.buf.length, this.length + n));
      this.buf.copy(b, 0, 0, this.length);
      this.buf = b;
    }
    const at = this.length;
    this.length += n;
    return at;
  }
  u32(v: number): void {
    const at = this.reserve(4);
    this.buf.writeUInt32LE(v, at);
  }
  u64(v: number | bigint): void {
    const at = this.reserve(8);
    this.buf.writeBigUInt64LE(BigInt(v), at);
  }
  str(v: string): void {
    const n = Buffer.byteLength(v, 'utf8');
    this.u64(n);
    const at = this.reserve(n);
    this.buf.write(v, at, n, 'utf8');
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeScalar(s: ByteSink, type: GgufTypeId, v: GgufScalar, key: string): void {
  switch (type) {
    case GgufType.UINT8: { const at = s.reserve(1); s.buf.writeUInt8(Number(v), at); return; }
    case GgufType.INT8: { const at = s.reserve(1); s.buf.writeInt8(Number(v), at); return; }
    case GgufType.UINT16: { const at = s.reserve(2); s.buf.writeUInt16LE(Number(v), at); return; }
    case GgufType.INT16: { const at = s.reserve(2); s.buf.writeInt16LE(Number(v), at); return; }
    case GgufType.UINT32: { const at = s.reserve(4); s.buf.writeUInt32LE(Number(v), at); return; }
    case GgufType.INT32: { const at = s.reserve(4); s.buf.writeInt32LE(Number(v), at); return; }
    case GgufType.FLOAT32: { const at = s.reserve(4); s.buf.writeFloatLE(Number(v), at); return; }
    case GgufType.BOOL: { const at = s.reserve(1); s.buf.writeUInt8(v ? 1 : 0, at); return; }
    case GgufType.STRING:
      if (typeof v !== 'string') throw new Error(`GGUF ${key}: a STRING value must be a string`);
      s.str(v);
      return;
    case GgufType.UINT64: { const at = s.reserve(8); s.buf.writeBigUInt64LE(BigInt(v), at); return; }
    case GgufType.INT64: { const at = s.reserve(8); s.buf.writeBigInt64LE(BigInt(v), at); return; }
    case GgufType.FLOAT64: { const at = s.reserve(8); s.buf.writeDoubleLE(Number(v), at); return; }
    case GgufType.ARRAY: throw new Error(`GGUF ${key}: nested arrays are not written`);
  }
}

/** the header bytes (magic .. tensor infos, unpadded) and each tensor's data offset */
export function encodeHeader(kvs: ReadonlyArray<GgufKv>, tensors: ReadonlyArray<GgufTensorInfo>, alignment: number): { header: Buffer; offsets: number[]; dataBytes: number } {
  const keys = new Set<string>();
  for (const kv of kvs) {
    if (keys.has(kv.key)) throw new Error(`GGUF: metadata key ${kv.key} given twice`);
    keys.add(kv.key);
  }
  const names = new Set<string>();
  const s = new ByteSink();
  s.u32(GGUF_MAGIC);
  s.u32(GGUF_VERSION);
  s.u64(tensors.length);
  s.u64(kvs.length);
  for (const kv of kvs) {
    s.str(kv.key);
    s.u32(kv.type);
    if (kv.type === GgufType.ARRAY) {
      if (kv.itemType === undefined || !Array.isArray(kv.value)) throw new Error(`GGUF ${kv.key}: an ARRAY needs itemType and an array value`);
      s.u32(kv.itemType);
      s.u64(kv.value.length);
      for (const v of kv.value) writeScalar(s, kv.itemType, v, kv.key);
    } else {
      if (Array.isArray(kv.value)) throw new Error(`GGUF ${kv.key}: an array value needs type ARRAY`);
      writeScalar(s, kv.type, kv.value, kv.key);
    }
  }
  const offsets: number[] = [];
  let off = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`GGUF: tensor ${t.name} given twice`);
    names.add(t.name);
    s.str(t.name);
    s.u32(t.dims.length);
    for (const d of t.dims) s.u64(d);
    s.u32(t.type);
    s.u64(off);
    offsets.push(off);
    off = align(off + ggmlBytes(t.type, t.dims), alignment);
  }
  return { header: s.bytes(), offsets, dataBytes: off };
}


/**
 * Streams a GGUF file: construct with every metadata entry and tensor info (in the order the
 * tensors will be added), add() (or addAsync(), off the JS thread) each tensor's bytes in that
 * order, finish() renames the file into place. Each tensor is written at its own offset, the
 * alignment padding between tensors as zeros. Written under a temporary name beside `path`, with
 * direct I/O where asked and the file system takes it (model/out-file.ts); abort() removes it.
 */
export class GgufWriter {
  readonly path: string;
  readonly alignment: number;
  private readonly tensors: ReadonlyArray<GgufTensorInfo>;
  private readonly tmp: string;
  private out: OutFile | null;
  private readonly size: number;
  private next = 0;
  /** the end of the bytes placed so far */
  private end = 0;
  private readonly dataStart: number;
  private readonly offsets: number[];

  constructor(path: string, kvs: ReadonlyArray<GgufKv>, tensors: ReadonlyArray<GgufTensorInfo>, opts: { directIo?: boolean } = {}) {
    this.path = path;
    const alignKv = kvs.find((k) => k.key === 'general.alignment');
    this.alignment = alignKv ? Number(alignKv.value) : GGUF_DEFAULT_ALIGNMENT;
    if (!Number.isInteger(this.alignment) || this.alignment < 1 || this.alignment % 8 !== 0) throw new Error(`GGUF: general.alignment must be a positive multiple of 8 (got ${this.alignment})`);
    this.tensors = tensors;
    const { header, offsets, dataBytes } = encodeHeader(kvs, tensors, this.alignment);
    this.offsets = offsets;
    this.dataStart = align(header.length, this.alignment);
    this.end = this.dataStart;
    this.size = this.dataStart + dataBytes;
    sweepTemps(path);
    this.tmp = tempNameBeside(path);
    this.out = openOutFile(this.tmp, this.size, opts.directIo === true);
    this.out.writeSync(Buffer.concat([header, Buffer.alloc(this.dataStart - header.length)]), 0);
  }

  /** the next tensor's place in the file, after checking its name and size */
  private place(name: string, data: { length: number }): number {
    const t = this.tensors[this.next];
    if (!t) throw new Error(`GgufWriter: ${name} added after the last tensor`);
    if (t.name !== name) throw new Error(`GgufWriter: expected tensor ${t.name} next, got ${name}`);
    const want = ggmlBytes(t.type, t.dims);
    if (data.length !== want) throw new Error(`GgufWriter: ${name} has ${data.length} bytes, its info needs ${want}`);
    const at = this.dataStart + this.offsets[this.next]!;
    if (at > this.end) this.out!.writeSync(new Uint8Array(at - this.end), this.end); // the padding before it
    this.next += 1;
    this.end = at + data.length;
    return at;
  }

  /** append the next tensor's data (its info must be the next one given) */
  add(name: string, data: Uint8Array): void {
    this.out!.writeSync(data, this.place(name, data));
  }

  /**
   * add() with the write on the libuv pool; the data may come in pieces (a stacked tensor's
   * experts), written one after another; they must stay unchanged until it resolves
   */
  async addAsync(name: string, data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    const parts = data instanceof Uint8Array ? [data] : data;
    let at = this.place(name, { length: parts.reduce((a, p) => a + p.length, 0) });
    const out = this.out!;
    for (const p of parts) {
      await out.write(p, at);
      at += p.length;
    }
  }

  /** whether the file is written with direct I/O */
  get direct(): boolean {
    return this.out?.direct ?? false;
  }

  /** pad the last tensor, close, rename into place (every write must have finished); returns the file size */
  finish(): number {
    if (this.next !== this.tensors.length) throw new Error(`GgufWriter: tensor ${this.tensors[this.next]!.name} was never added`);
    const out = this.out!;
    if (this.size > this.end) out.writeSync(new Uint8Array(this.size - this.end), this.end); // the last tensor's padding
    this.out = null; // closed even where close throws: abort() then only removes the temp
    out.close();
    renameSync(this.tmp, this.path);
    return this.size;
  }

  abort(): void {
    this.out?.abort();
    this.out = null;
    rmSync(this.tmp, { force: true });
  }
}

// ---------------------------------------------------------------- reading

export interface GgufTensorEntry extends GgufTensorInfo {
  /** offset from the data start */
  offset: number;
}

export interface GgufFile {
  version: number;
  kv: Map<string, { type: GgufTypeId; value: GgufScalar | GgufScalar[]; itemType?: GgufTypeId }>;
  tensors: GgufTensorEntry[];
  alignment: number;
  /** absolute file offset of the tensor data */
  dataStart: number;
  fileSize: number;
}

/** bytes the header reader reads at a time */
const READ_CHUNK = 1 << 20;

class ByteReader {
  pos = 0;
  // the file from bufAt on, read a chunk at a time: a tokenizer's vocabulary and merges are
  // ≈ 10⁶ fields, and a read call each took 3 s
  private buf = Buffer.alloc(0);
  private bufAt = 0;
  constructor(private readonly fd: number, private readonly size: number, private readonly path: string) {}
  private fill(into: Buffer, at: number): void {
    let done = 0;
    while (done < into.length) {
      const r = readSync(this.fd, into, done, into.length - done, at + done);
      if (r === 0) throw new InputError(`${this.path}: short read at byte ${at + done}`);
      done += r;
    }
  }
  /** the next n bytes (valid until the next call) */
  take(n: number): Buffer {
    if (this.pos + n > this.size) throw new InputError(`${this.path}: GGUF header runs past the end of the file (at byte ${this.pos})`);
    const off = this.pos - this.bufAt;
    if (off < 0 || off + n > this.buf.length) {
      if (n > READ_CHUNK) {
        const b = Buffer.alloc(n);
        this.fill(b, this.pos);
        this.pos += n;
        return b;
      }
      this.buf = Buffer.alloc(Math.min(READ_CHUNK, this.size - this.pos));
      this.bufAt = this.pos;
      this.fill(this.buf, this.pos);
    }
    const at = this.pos - this.bufAt;
    this.pos += n;
    return this.buf.subarray(at, at + n);
  }
  u32(): number { return this.take(4).readUInt32LE(); }
  u64(): number {
    const v = this.take(8).readBigUInt64LE();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new InputError(`${this.path}: u64 ${v} at byte ${this.pos - 8} is too large`);
    return Number(v);
  }
  /** bytes left after the cursor */
  left(): number { return this.size - this.pos; }
  /** a count of items of at least `minBytes` each: refused when they cannot fit in the rest of the file */
  count(what: string, minBytes: number): number {
    const at = this.pos;
    const n = this.u64();
    if (n * minBytes > this.left()) throw new InputError(`${this.path}: ${what} count ${n} at byte ${at} cannot fit in the ${this.left()} bytes left`);
    return n;
  }
  str(): string { return this.take(this.u64()).toString('utf8'); }
  scalar(type: number): GgufScalar {
    switch (type) {
      case GgufType.UINT8: return this.take(1).readUInt8();
      case GgufType.INT8: return this.take(1).readInt8();
      case GgufType.UINT16: return this.take(2).readUInt16LE();
      case GgufType.INT16: return this.take(2).readInt16LE();
      case GgufType.UINT32: return this.take(4).readUInt32LE();
      case GgufType.INT32: return this.take(4).readInt32LE();
      case GgufType.FLOAT32: return this.take(4).readFloatLE();
      case GgufType.BOOL: return this.take(1).readUInt8() !== 0;
      case GgufType.STRING: return this.str();
      case GgufType.UINT64: return this.take(8).readBigUInt64LE();
      case GgufType.INT64: return this.take(8).readBigInt64LE();
      case GgufType.FLOAT64: return this.take(8).readDoubleLE();
      default: throw new InputError(`${this.path}: unknown GGUF value type ${type} at byte ${this.pos - 4}`);
    }
  }
}

/** GGML_MAX_DIMS of ggml.h */
const GGML_MAX_DIMS = 4;

/** Parse a GGUF file's header (metadata and tensor infos); the data is not read. */
export function readGgufHeader(path: string): GgufFile {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const r = new ByteReader(fd, size, path);
    if (r.u32() !== GGUF_MAGIC) throw new InputError(`${path}: not a GGUF file (bad magic)`);
    const version = r.u32();
    const nTensors = r.count('tensor', 8 + 4 + 4 + 8);
    const nKv = r.count('metadata key', 8 + 4);
    const kv: GgufFile['kv'] = new Map();
    for (let i = 0; i < nKv; i++) {
      const key = r.str();
      const type = r.u32() as GgufTypeId;
      if (type === GgufType.ARRAY) {
        const itemType = r.u32() as GgufTypeId;
        const n = r.count(`${key} array item`, 1);
        const value: GgufScalar[] = [];
        for (let j = 0; j < n; j++) value.push(r.scalar(itemType));
        kv.set(key, { type, value, itemType });
      } else kv.set(key, { type, value: r.scalar(type) });
    }
    const tensors: GgufTensorEntry[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = r.str();
      const nd = r.u32();
      if (nd > GGML_MAX_DIMS) throw new InputError(`${path}: tensor ${name} has ${nd} dimensions; GGUF allows at most ${GGML_MAX_DIMS}`);
      const dims: number[] = [];
      for (let j = 0; j < nd; j++) dims.push(r.u64());
      const type = r.u32() as GgmlTypeId;
      const offset = r.u64();
      tensors.push({ name, dims, type, offset });
    }
    const a = kv.get('general.alignment');
    const alignment = a ? Number(a.value) : GGUF_DEFAULT_ALIGNMENT;
    if (!Number.isInteger(alignment) || alignment < 1 || alignment > 1 << 20) throw new InputError(`${path}: general.alignment ${a?.value} is not a usable alignment`);
    return { version, kv, tensors, alignment, dataStart: align(r.pos, alignment), fileSize: size };
  } finally {
    closeSync(fd);
  }
}

/** the bytes of one tensor of a parsed GGUF file */
export function readGgufTensor(path: string, f: GgufFile, t: GgufTensorEntry): Buffer {
  let n: number;
  try {
    n = ggmlBytes(t.type, t.dims);
  } catch (e) {
    throw new InputError(`${path}: tensor ${t.name}: ${(e as Error).message}`);
  }
  if (!(n >= 0) || f.dataStart + t.offset + n > f.fileSize) throw new InputError(`${path}: tensor ${t.name} (${n} bytes at offset ${t.offset}) runs past the end of the file`);
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(n);
    let done = 0;
    while (done < n) {
      const got = readSync(fd, b, done, n - done, f.dataStart + t.offset + done);
      if (got === 0) throw new InputError(`${path}: tensor ${t.name} runs past the end of the file`);
      done += got;
    }
    return b;
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------- Q4_0

/**
 * llama.cpp's Q4_0 (quantize_row_q4_0_ref), in float32 arithmetic like the C code. Per block of
 * 32: m = the value of largest magnitude (signed), d = m / −8, id = 1/d (0 when d = 0);
 * q_j = min(15, trunc(x_j·id + 8.5)); bytes: f16(d), then qs[j] = q_j | q_{j+16} << 4.
 * Dequantised: x_j ≈ (q_j − 8)·f16(d).
 */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  if (x.length % Q4_0_BLOCK !== 0) throw new Error(`quantizeQ4_0: ${x.length} values is not a multiple of ${Q4_0_BLOCK}`);
  const nb = x.length / Q4_0_BLOCK;
  const out = new Uint8Array(nb * Q4_0_BYTES);
  const f = Math.fround;
  for (let b = 0; b < nb; b++) {
    const o = b * Q4_0_BLOCK;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < Q4_0_BLOCK; j++) {
      const v = x[o + j]!;
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f(max / -8);
    const id = d !== 0 ? f(1 / d) : 0;
    const h = f16Encode(d);
    const p = b * Q4_0_BYTES;
    out[p] = h & 0xff;
    out[p + 1] = h >> 8;
    for (let j = 0; j < Q4_0_BLOCK / 2; j++) {
      const x0 = f(x[o + j]! * id);
      const x1 = f(x[o + 16 + j]! * id);
      const q0 = Math.min(15, Math.trunc(f(x0 + 8.5)));
      const q1 = Math.min(15, Math.trunc(f(x1 + 8.5)));
      out[p + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

/** x_j = (q_j − 8)·d per Q4_0 block (low nibbles are j = 0..15, high nibbles j = 16..31) */
export function dequantizeQ4_0(bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let b = 0; b < n / Q4_0_BLOCK; b++) {
    const p = b * Q4_0_BYTES;
    const d = f16Decode(bytes[p]! | (bytes[p + 1]! << 8));
    for (let j = 0; j < 16; j++) {
      const byte = bytes[p + 2 + j]!;
      out[b * Q4_0_BLOCK + j] = ((byte & 0x0f) - 8) * d;
      out[b * Q4_0_BLOCK + 16 + j] = ((byte >> 4) - 8) * d;
    }
  }
  return out;
}
