// safetensors files: a validating, lazy reader (one file or a sharded folder with
// model.safetensors.index.json) that reads each tensor by byte range and never a whole shard,
// and a streaming sharded writer (temp names, renamed at the end, index written last).
//
// File format: u64 LE header length N, N bytes of JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data
// (offsets relative to the byte after the header).
import { closeSync, existsSync, fstatSync, openSync, read, readdirSync, readSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { InputError, V4tuneError } from '../errors.js';
import { readJsonFile, tempNameBeside, writeFileAtomic } from '../fsutil.js';
import { tryLoadAddon } from '../backend/native/addon.js';
import { openOutFile, type OutFile } from './out-file.js';

export type Dtype = 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E8M0' | 'I8' | 'I32' | 'I64' | 'U8' | 'F64' | 'I16' | 'BOOL';

export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E8M0: 1, I8: 1, I16: 2, I32: 4, I64: 8, U8: 1, BOOL: 1,
};

export function isDtype(s: string): s is Dtype {
  return Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** the file that holds it */
  file: string;
  /** absolute byte offsets in the file */
  begin: number;
  end: number;
}

/**
 * Bytes still in a file, read on demand: `read(into, at)` fills `into` with the bytes from offset
 * `at` of the slice. The writer streams these through one buffer (a tensor copied as stored is
 * never held in memory whole).
 */
export interface ByteSource {
  readonly length: number;
  read(into: Uint8Array, at: number): void;
  /** read as `read` does, off the JS thread (the libuv pool), so the event loop runs meanwhile */
  readAsync?(into: Uint8Array, at: number): Promise<void>;
  /**
   * copy the `len` bytes from offset `at` of the slice (default: all of it) to position `pos` of
   * the output file `out`, off the JS thread and never through JS memory (native addon:
   * copy_file_range, or read into the direct writer's aligned buffer); resolves false where that
   * is not available (no addon)
   */
  copyTo?(out: OutFile, pos: number, at?: number, len?: number): Promise<boolean>;
}

export function numel(shape: ReadonlyArray<number>): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * The largest JSON header read (parsing costs about 12x its size in memory). A V4 shard's header
 * lists a few thousand tensors in well under 2 MiB; safetensors' own reader allows 100 MB.
 */
export const MAX_HEADER = 32 * 1024 * 1024;

/** One safetensors file: header parsed and validated at open, tensors read on demand. */
export class SafetensorsFile {
  readonly path: string;
  readonly entries: Map<string, TensorEntry>;
  readonly metadata: Record<string, string>;
  private fd: number | null;
  /** the file opened for direct reads (readDirectIfUncached), else null */
  private directFd: number | null = null;

  private constructor(path: string, fd: number, entries: Map<string, TensorEntry>, metadata: Record<string, string>) {
    this.path = path;
    this.fd = fd;
    this.entries = entries;
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsFile {
    if (!existsSync(path)) throw new InputError(`${path}: safetensors file not found`);
    const fd = openSync(path, 'r');
    try {
      const { entries, metadata } = readHeader(fd, path);
      return new SafetensorsFile(path, fd, entries, metadata);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** the raw bytes of one tensor (a fresh copy, read by byte range) */
  read(name: string): Uint8Array {
    const e = this.entries.get(name);
    if (!e) throw new InputError(`${this.path}: no tensor ${name}`);
    return this.readRange(e.begin, e.end - e.begin, name);
  }

  readRange(pos: number, len: number, what: string): Uint8Array {
    const out = new Uint8Array(len);
    this.readInto(pos, out, what);
    return out;
  }

  /** fill `into` with the bytes at `pos` (a positioned read; every read of the file goes through here) */
  readInto(pos: number, into: Uint8Array, what: string): void {
    if (this.fd === null) throw new InputError(`${this.path}: file already closed (reading ${what})`);
    let done = 0;
    while (done < into.length) {
      const n = readSync(this.fd, into, done, into.length - done, pos + done);
      if (n === 0) throw new InputError(`${this.path}: file ends inside tensor ${what} (truncated?)`);
      done += n;
    }
  }

  /**
   * Read this file with direct I/O from here on (readIntoAsync and copies into direct-I/O
   * outputs), past the page cache, where less than `threshold` of it is in the page cache and the
   * addon and the file system allow: a file read once, cold, then costs the disk's time but no
   * fresh cache pages. Returns whether it now reads direct.
   */
  readDirectIfUncached(threshold = 0.5): boolean {
    if (this.fd === null || this.directFd !== null) return this.directFd !== null;
    const addon = tryLoadAddon();
    if (!addon || addon.residentFraction(this.fd) >= threshold) return false;
    const fd = addon.directReadOpen(this.path);
    if (fd >= 0) this.directFd = fd;
    return fd >= 0;
  }

  /** readInto off the JS thread (positioned reads on the libuv pool, or direct reads on the addon) */
  async readIntoAsync(pos: number, into: Uint8Array, what: string): Promise<void> {
    if (this.directFd !== null && into.length > 0) {
      try {
        await tryLoadAddon()!.directRead(this.directFd, into, pos);
      } catch (e) {
        if (/short$/.test((e as Error).message)) throw new InputError(`${this.path}: file ends inside tensor ${what} (truncated?)`);
        throw new V4tuneError(`${this.path}: reading tensor ${what}: ${(e as Error).message}`);
      }
      return;
    }
    let done = 0;
    while (done < into.length) {
      if (this.fd === null) throw new InputError(`${this.path}: file already closed (reading ${what})`);
      const n = (await readAsync(this.fd, into, done, into.length - done, pos + done)).bytesRead;
      if (n === 0) throw new InputError(`${this.path}: file ends inside tensor ${what} (truncated?)`);
      done += n;
    }
  }

  /**
   * copy the `len` bytes at `pos` to position `outPos` of the output file `out` (native addon, off
   * the JS thread); false where the addon is not built
   */
  async copyRangeTo(pos: number, len: number, out: OutFile, outPos: number, what: string): Promise<boolean> {
    if (this.fd === null) throw new InputError(`${this.path}: file already closed (reading ${what})`);
    try {
      if (!(await out.copyFrom({ fd: this.fd, directFd: this.directFd }, pos, len, outPos))) return false;
    } catch (e) {
      const why = (e as Error).message.replace(/^copyRange: /, '');
      // a short source is this file's fault; anything else (a full disk) may be the output's
      if (/short$/.test(why)) throw new InputError(`${this.path}: copying tensor ${what}: ${why} (file truncated?)`);
      throw new V4tuneError(`${this.path}: copying tensor ${what} into the output failed: ${why}`);
    }
    return true;
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    if (this.directFd !== null) closeSync(this.directFd);
    this.fd = null;
    this.directFd = null;
  }
}

function readHeader(fd: number, path: string): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  const size = fstatSync(fd).size;
  if (size < 8) throw new InputError(`${path}: too short to be a safetensors file (${size} bytes)`);
  const lenBuf = Buffer.alloc(8);
  readSync(fd, lenBuf, 0, 8, 0);
  const n64 = lenBuf.readBigUInt64LE(0);
  if (n64 > BigInt(size - 8)) {
    throw new InputError(`${path}: header length ${n64} does not fit in the file (${size} bytes; truncated or not safetensors)`);
  }
  if (n64 > BigInt(MAX_HEADER)) throw new InputError(`${path}: header length ${n64} exceeds the ${MAX_HEADER}-byte limit (not a model shard?)`);
  const n = Number(n64);
  const hbuf = Buffer.alloc(n);
  readSync(fd, hbuf, 0, n, 8);
  let header: unknown;
  try {
    header = JSON.parse(hbuf.toString('utf8'));
  } catch {
    throw new InputError(`${path}: header is not valid JSON`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new InputError(`${path}: header is not a JSON object`);
  }
  const dataStart = 8 + n;
  const dataLen = size - dataStart;
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (v !== null && (typeof v !== 'object' || Array.isArray(v) || Object.values(v as object).some((x) => typeof x !== 'string'))) {
        throw new InputError(`${path}: __metadata__ must map names to strings`);
      }
      metadata = (v ?? {}) as Record<string, string>;
      continue;
    }
    const t = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof t !== 'object' || t === null) throw new InputError(`${path}: tensor ${name}: entry is not an object`);
    if (typeof t.dtype !== 'string' || !isDtype(t.dtype)) {
      throw new InputError(`${path}: tensor ${name}: unsupported dtype ${JSON.stringify(t.dtype)}`);
    }
    if (!Array.isArray(t.shape) || t.shape.some((d) => !Number.isInteger(d) || (d as number) < 0)) {
      throw new InputError(`${path}: tensor ${name}: shape must be a list of non-negative integers`);
    }
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((x) => Number.isInteger(x) && (x as number) >= 0)) {
      throw new InputError(`${path}: tensor ${name}: data_offsets must be two non-negative integers`);
    }
    const [b, e] = off as [number, number];
    if (e < b) throw new InputError(`${path}: tensor ${name}: data_offsets end ${e} before begin ${b}`);
    if (e > dataLen) {
      throw new InputError(`${path}: tensor ${name}: data_offsets [${b}, ${e}] run past the end of the data (${dataLen} bytes; truncated file?)`);
    }
    const shape = t.shape as number[];
    const want = numel(shape) * DTYPE_BYTES[t.dtype];
    if (want !== e - b) {
      throw new InputError(`${path}: tensor ${name}: ${t.dtype} [${shape.join(', ')}] needs ${want} bytes but data_offsets give ${e - b}`);
    }
    entries.set(name, { name, dtype: t.dtype, shape, file: path, begin: dataStart + b, end: dataStart + e });
  }
  const sorted = [...entries.values()].sort((x, y) => x.begin - y.begin || x.end - y.end);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1]!;
    const c = sorted[i]!;
    if (c.begin < p.end && c.end > c.begin && p.end > p.begin) {
      throw new InputError(`${path}: tensors ${p.name} and ${c.name} overlap in the file`);
    }
  }
  return { entries, metadata };
}

export const INDEX_FILE = 'model.safetensors.index.json';

/**
 * All tensors of a checkpoint folder: the shards of model.safetensors.index.json, or the single
 * model.safetensors (or the folder's only *.safetensors file). Headers are read at open.
 */
export class SafetensorsSet {
  readonly dir: string;
  readonly entries: Map<string, TensorEntry>;
  private readonly files: Map<string, SafetensorsFile>;

  private constructor(dir: string, files: Map<string, SafetensorsFile>, entries: Map<string, TensorEntry>) {
    this.dir = dir;
    this.files = files;
    this.entries = entries;
  }

  static open(dir: string): SafetensorsSet {
    const files = new Map<string, SafetensorsFile>();
    const entries = new Map<string, TensorEntry>();
    try {
      const indexPath = join(dir, INDEX_FILE);
      if (existsSync(indexPath)) {
        const weightMap = readIndex(indexPath);
        for (const shard of new Set(weightMap.values())) {
          const p = join(dir, shard);
          if (!existsSync(p)) throw new InputError(`${indexPath}: points at shard ${shard}, which is missing from ${dir}`);
          files.set(p, SafetensorsFile.open(p));
        }
        for (const [name, shard] of weightMap) {
          const f = files.get(join(dir, shard))!;
          const e = f.entries.get(name);
          if (!e) throw new InputError(`${indexPath}: tensor ${name} is listed in shard ${shard} but ${f.path} does not hold it`);
          entries.set(name, e);
        }
      } else {
        let single = join(dir, 'model.safetensors');
        if (!existsSync(single)) {
          const all = existsSync(dir) && statSync(dir).isDirectory() ? listSafetensors(dir) : [];
          if (all.length !== 1) {
            throw new InputError(`${dir}: no ${INDEX_FILE} and no single model.safetensors (found ${all.length} .safetensors files)`);
          }
          single = join(dir, all[0]!);
        }
        const f = SafetensorsFile.open(single);
        files.set(single, f);
        for (const [k, e] of f.entries) entries.set(k, e);
      }
    } catch (e) {
      for (const f of files.values()) f.close();
      throw e;
    }
    return new SafetensorsSet(dir, files, entries);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  entry(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new InputError(`${this.dir}: missing tensor ${name}`);
    return e;
  }

  read(name: string): Uint8Array {
    const e = this.entry(name);
    return this.files.get(e.file)!.readRange(e.begin, e.end - e.begin, name);
  }

  /** bytes [from, to) of a tensor's data (e.g. one expert of a stacked tensor) */
  readSlice(name: string, from: number, to: number): Uint8Array {
    const e = this.entry(name);
    return this.files.get(e.file)!.readRange(e.begin + from, to - from, name);
  }

  /** bytes [from, to) of a tensor's data as a source read on demand (nothing is read now) */
  source(name: string, from: number, to: number): ByteSource {
    const e = this.entry(name);
    const f = this.files.get(e.file)!;
    return {
      length: to - from,
      read: (into, at) => f.readInto(e.begin + from + at, into, name),
      readAsync: (into, at) => f.readIntoAsync(e.begin + from + at, into, name),
      copyTo: (out, pos, at = 0, len = to - from - at) => f.copyRangeTo(e.begin + from + at, len, out, pos, name),
    };
  }

  /** SafetensorsFile.readDirectIfUncached on every file: how many now read direct */
  readDirectIfUncached(threshold = 0.5): number {
    let n = 0;
    for (const f of this.files.values()) if (f.readDirectIfUncached(threshold)) n++;
    return n;
  }

  close(): void {
    for (const f of this.files.values()) f.close();
  }
}

function listSafetensors(dir: string): string[] {
  return readdirSync(dir).sort().filter((n) => n.endsWith('.safetensors'));
}


function readIndex(indexPath: string): Map<string, string> {
  const j = readJsonFile(indexPath);
  const wm = (j as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new InputError(`${indexPath}: missing weight_map`);
  const out = new Map<string, string>();
  for (const [k, v] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof v !== 'string' || v.includes('/') || v.includes('\\')) {
      throw new InputError(`${indexPath}: weight_map entry ${k} must name a shard file in the folder`);
    }
    out.set(k, v);
  }
  return out;
}

// ---------------------------------------------------------------- writer

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

export interface WriterOptions {
  /** a shard is closed before it would exceed this many data bytes (one bigger tensor gets a shard of its own) */
  maxShardBytes?: number;
  /** shard file prefix: `<prefix>-00001-of-0000N.safetensors` */
  prefix?: string;
  metadata?: Record<string, string>;
  /** the piece streamAt copies a source in, file to file (default COPY_CHUNK) */
  copyChunk?: number;
  /** write the shards with direct I/O where the addon and the file system allow (out-file.ts; default false: through the page cache) */
  directIo?: boolean;
  /** called as each shard's temp file is created: whether it is written with direct I/O */
  onShardOpen?: (file: string, direct: boolean) => void;
}

/** the largest read a ByteSource is streamed with (the plain copy bench/merge.mjs compares with uses the same) */
export const STREAM_CHUNK = 16 * 1024 * 1024;

/** the piece a tensor left in a file is copied in, file to file in the kernel (SafetensorsWriter.streamAt) */
export const COPY_CHUNK = 64 * 1024 * 1024;

interface ShardPlan {
  file: string;
  specs: TensorSpec[];
  header: Buffer;
}

function planShards(specs: TensorSpec[], maxBytes: number, prefix: string, metadata: Record<string, string>): ShardPlan[] {
  const groups: TensorSpec[][] = [];
  let cur: TensorSpec[] = [];
  let curBytes = 0;
  for (const s of specs) {
    const b = numel(s.shape) * DTYPE_BYTES[s.dtype];
    if (cur.length > 0 && curBytes + b > maxBytes) {
      groups.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(s);
    curBytes += b;
  }
  if (cur.length > 0 || groups.length === 0) groups.push(cur);
  const n = groups.length;
  const pad = (i: number): string => String(i).padStart(5, '0');
  return groups.map((g, i) => {
    const h: Record<string, unknown> = { __metadata__: metadata };
    let off = 0;
    for (const s of g) {
      const b = numel(s.shape) * DTYPE_BYTES[s.dtype];
      h[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + b] };
      off += b;
    }
    let text = JSON.stringify(h);
    // pad the header with spaces so the data starts 8-byte aligned
    text += ' '.repeat((8 - ((8 + Buffer.byteLength(text)) % 8)) % 8);
    return { file: `${prefix}-${pad(i + 1)}-of-${pad(n)}.safetensors`, specs: g, header: Buffer.from(text, 'utf8') };
  });
}

/**
 * Writes tensors into shards whose headers are fixed up front: construct with every tensor's spec
 * (the header order), then either add() each tensor's bytes in that order, or writeAt() any byte
 * range of any tensor in any order (each tensor's place in its shard is known from the specs), then
 * finish() to check every byte was written, rename the shards into place and write
 * model.safetensors.index.json. abort() removes the temp files.
 */
/** where SafetensorsWriter puts one tensor, and how much of it is written */
interface TensorPlace {
  shard: number;
  at: number;
  bytes: number;
  written: number;
  touched: boolean;
}

export class SafetensorsWriter {
  readonly dir: string;
  private readonly plans: ShardPlan[];
  /** each tensor's shard, the file offset of its first byte, its length and the bytes written so far */
  private readonly place = new Map<string, TensorPlace>();
  /** the specs in header order, for add()'s order check */
  private readonly order: TensorSpec[];
  private next = 0;
  private readonly outs: Array<OutFile | null>;
  /** each shard's file size */
  private readonly sizes: number[] = [];
  private readonly temps: Array<string | null>;
  private totalSize = 0;
  /** the buffer ByteSources are streamed through */
  private chunk: Uint8Array | null = null;
  /**
   * per shard, the end of its queue of asynchronous writes: they run one at a time, in the order
   * asked. Two writes into one file at once serialise on the file's lock in the kernel anyway, and
   * the one waiting spins for it there, taking a core from the work that runs meanwhile.
   */
  private readonly queues: Array<Promise<unknown>>;
  private readonly copyChunk: number;
  private readonly directIo: boolean;
  private readonly onShardOpen: ((file: string, direct: boolean) => void) | undefined;

  constructor(dir: string, specs: TensorSpec[], opts: WriterOptions = {}) {
    this.dir = dir;
    const seen = new Set<string>();
    for (const s of specs) {
      if (seen.has(s.name)) throw new Error(`SafetensorsWriter: tensor ${s.name} given twice`);
      seen.add(s.name);
    }
    this.plans = planShards(specs, opts.maxShardBytes ?? 4 * 1024 ** 3, opts.prefix ?? 'model', opts.metadata ?? { format: 'pt' });
    this.order = this.plans.flatMap((p) => p.specs);
    this.plans.forEach((p, shard) => {
      let at = 8 + p.header.length;
      for (const s of p.specs) {
        const bytes = numel(s.shape) * DTYPE_BYTES[s.dtype];
        this.place.set(s.name, { shard, at, bytes, written: 0, touched: false });
        at += bytes;
      }
      this.sizes.push(at);
    });
    this.outs = this.plans.map(() => null);
    this.temps = this.plans.map(() => null);
    this.queues = this.plans.map(() => Promise.resolve());
    this.copyChunk = Math.max(1, Math.floor(opts.copyChunk ?? COPY_CHUNK));
    this.directIo = opts.directIo === true;
    this.onShardOpen = opts.onShardOpen;
  }

  // run `job` when the shard's earlier asynchronous writes are done (failed ones included)
  private queued<T>(shard: number, job: () => Promise<T>): Promise<T> {
    const run = this.queues[shard]!.then(job, job);
    this.queues[shard] = run.catch(() => {});
    return run;
  }

  get shardFiles(): string[] {
    return this.plans.map((p) => p.file);
  }

  // the shard's temp file, created with its header on first use
  private outOf(shard: number): OutFile {
    const open = this.outs[shard];
    if (open) return open;
    const plan = this.plans[shard]!;
    const tmp = tempNameBeside(join(this.dir, plan.file));
    this.temps[shard] = tmp;
    const out = openOutFile(tmp, this.sizes[shard]!, this.directIo);
    this.outs[shard] = out;
    this.onShardOpen?.(plan.file, out.direct);
    const head = Buffer.alloc(8 + plan.header.length);
    head.writeBigUInt64LE(BigInt(plan.header.length));
    plan.header.copy(head, 8);
    out.writeSync(head, 0);
    return out;
  }

  /** the tensor's length in bytes */
  bytesOf(name: string): number {
    const p = this.place.get(name);
    if (!p) throw new Error(`SafetensorsWriter: no tensor ${name}`);
    return p.bytes;
  }

  /**
   * write `data` at byte `offset` of tensor `name` (any tensor, in any order; each byte of a
   * tensor is to be written once)
   */
  writeAt(name: string, offset: number, data: Uint8Array): void {
    const p = this.placeOf(name, offset, data.length);
    this.outOf(p.shard).writeSync(data, p.at + offset);
    p.written += data.length;
    p.touched = true;
  }

  /**
   * writeAt off the JS thread (positioned writes on the libuv pool, in pieces of STREAM_CHUNK
   * bytes queued with the shard's other asynchronous writes); `data` must stay unchanged until it
   * resolves
   */
  async writeAtAsync(name: string, offset: number, data: Uint8Array): Promise<void> {
    const p = this.placeOf(name, offset, data.length);
    const out = this.outOf(p.shard);
    p.touched = true;
    for (let at = 0; at < data.length; at += STREAM_CHUNK) {
      const piece = data.subarray(at, Math.min(data.length, at + STREAM_CHUNK));
      await this.queued(p.shard, () => out.write(piece, p.at + offset + at));
    }
    p.written += data.length;
  }

  // tensor `name`'s place, where bytes offset … offset + len − 1 must lie
  private placeOf(name: string, offset: number, len: number): TensorPlace {
    const p = this.place.get(name);
    if (!p) throw new Error(`SafetensorsWriter: no tensor ${name}`);
    if (offset < 0 || offset + len > p.bytes) throw new Error(`SafetensorsWriter: bytes ${offset}..${offset + len} lie outside ${name} (${p.bytes} bytes)`);
    return p;
  }

  /**
   * write all of `src` at byte `offset` of tensor `name`: copied file to file in the kernel where
   * the source can (ByteSource.copyTo, in pieces of WriterOptions.copyChunk bytes queued with the
   * shard's other asynchronous writes, so a merged tensor is written between two pieces of a large
   * copy), else read through one reused buffer of STREAM_CHUNK bytes with the event loop served
   * between chunks
   */
  async streamAt(name: string, offset: number, src: ByteSource): Promise<void> {
    const p = this.placeOf(name, offset, src.length);
    const copyTo = src.copyTo;
    if (src.length > 0 && copyTo) {
      const out = this.outOf(p.shard);
      let copied = true;
      for (let at = 0; at < src.length && copied; at += this.copyChunk) {
        const len = Math.min(this.copyChunk, src.length - at);
        copied = await this.queued(p.shard, () => copyTo(out, p.at + offset + at, at, len));
        if (!copied && at > 0) throw new Error(`SafetensorsWriter: the kernel copy of ${name} stopped being available after ${at} bytes`);
      }
      if (copied) {
        p.written += src.length;
        p.touched = true;
        return;
      }
    }
    if (src.length === 0) this.writeAt(name, offset, new Uint8Array(0));
    this.chunk ??= new Uint8Array(STREAM_CHUNK);
    for (let at = 0; at < src.length; at += this.chunk.length) {
      const piece = this.chunk.subarray(0, Math.min(this.chunk.length, src.length - at));
      src.read(piece, at);
      this.writeAt(name, offset + at, piece);
      if (at + piece.length < src.length) await new Promise<void>((res) => setImmediate(res));
    }
  }

  /** append the next tensor (its spec must be the next one in the header order) */
  add(name: string, data: Uint8Array): void {
    this.addParts(name, [data]);
  }

  /**
   * append the next tensor in the header order as the concatenation of `parts`: bytes in memory
   * are written as they are, a ByteSource is streamed through one reused buffer of STREAM_CHUNK bytes
   */
  addParts(name: string, parts: ReadonlyArray<Uint8Array | ByteSource>): void {
    const spec = this.order[this.next];
    if (!spec) throw new Error(`SafetensorsWriter: ${name} added after every tensor was`);
    if (spec.name !== name) throw new Error(`SafetensorsWriter: expected tensor ${spec.name} next, got ${name}`);
    const want = this.bytesOf(name);
    const got = parts.reduce((a, p) => a + p.length, 0);
    if (got !== want) throw new Error(`SafetensorsWriter: ${name} has ${got} bytes, its spec needs ${want}`);
    this.writeAt(name, 0, new Uint8Array(0)); // added, even with no bytes
    let off = 0;
    for (const p of parts) {
      if (p instanceof Uint8Array) {
        this.writeAt(name, off, p);
        off += p.length;
        continue;
      }
      this.chunk ??= new Uint8Array(STREAM_CHUNK);
      for (let at = 0; at < p.length; at += this.chunk.length) {
        const piece = this.chunk.subarray(0, Math.min(this.chunk.length, p.length - at));
        p.read(piece, at);
        this.writeAt(name, off + at, piece);
      }
      off += p.length;
    }
    this.next += 1;
  }

  /** check every tensor was written whole, rename every shard into place, then write the index; returns the shard file names */
  finish(): string[] {
    for (const s of this.order) {
      const p = this.place.get(s.name)!;
      if (!p.touched) throw new Error(`SafetensorsWriter: tensor ${s.name} was never added`);
      if (p.written !== p.bytes) throw new Error(`SafetensorsWriter: tensor ${s.name} got ${p.written} of its ${p.bytes} bytes`);
    }
    this.plans.forEach((_, i) => this.outOf(i)); // a shard of no tensors still gets its header
    for (let i = 0; i < this.outs.length; i++) {
      const out = this.outs[i]!;
      this.outs[i] = null; // closed even where close throws: abort() then only removes the temp
      out.close();
    }
    const weightMap: Record<string, string> = {};
    this.totalSize = 0;
    this.plans.forEach((p, i) => {
      renameSync(this.temps[i]!, join(this.dir, p.file));
      for (const s of p.specs) {
        weightMap[s.name] = p.file;
        this.totalSize += this.bytesOf(s.name);
      }
    });
    writeFileAtomic(join(this.dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: this.totalSize }, weight_map: weightMap }, null, 2) + '\n');
    return this.shardFiles;
  }

  abort(): void {
    for (let i = 0; i < this.outs.length; i++) {
      this.outs[i]?.abort();
      this.outs[i] = null;
      if (this.temps[i]) rmSync(this.temps[i]!, { force: true });
    }
  }
}

// positioned fs.read as a promise (on the libuv pool)
const readAsync = promisify(read);

/** Write one small safetensors file atomically (e.g. an adapter): tensors in the given order. */
export function writeSafetensorsFile(path: string, tensors: ReadonlyArray<TensorSpec & { data: Uint8Array }>, metadata: Record<string, string> = { format: 'pt' }): void {
  const [plan] = planShards(tensors.map(({ name, dtype, shape }) => ({ name, dtype, shape })), Infinity, 'x', metadata);
  const parts: Uint8Array[] = [];
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(plan!.header.length));
  parts.push(len, plan!.header);
  for (const t of tensors) {
    const want = numel(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.data.length !== want) throw new Error(`writeSafetensorsFile: ${t.name} has ${t.data.length} bytes, needs ${want}`);
    parts.push(t.data);
  }
  writeFileAtomic(path, Buffer.concat(parts));
}
