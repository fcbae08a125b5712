// A DeepSeek V4 checkpoint folder as shipped: config.json + safetensors shards, official or
// transformers layout, read lazily tensor by tensor and exposed under the official names.
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeWeightNative } from '../backend/native/formats.js';
import { InputError } from '../errors.js';
import { readJsonFile, writeDirAtomic } from '../fsutil.js';
import { parseConfigWithWarnings, type V4Config } from './config.js';
import { bf16BytesToF32, dequantFp4, dequantFp8Block, f16BytesToF32, f32BytesToF32, FP4_GROUP, FP8_BLOCK } from './formats.js';
import { detectLayout, expectedTensors, mapTransformersLayout, officialToTransformers, scaleNameOf, type Layout, type TensorSource } from './layout.js';
import { DTYPE_BYTES, numel, SafetensorsSet, SafetensorsWriter, type ByteSource, type Dtype, type TensorEntry, type TensorSpec } from './safetensors.js';
import { stampChatTemplate } from '../chat/config.js';

export type WeightFormat = 'fp8' | 'fp4' | 'bf16' | 'f16' | 'f32' | 'int';

export interface TensorMeta {
  /** official name */
  name: string;
  /** dtype on disk */
  dtype: string;
  /** shape on disk (of this tensor alone: one expert's slice of a stacked tensor) */
  shape: number[];
  /** the file that holds it */
  file: string;
  format: WeightFormat;
  /** the dequantised shape, e.g. FP4 I8 [out, in/2] -> [out, in] */
  logicalShape: number[];
}

export interface RawTensor {
  meta: TensorMeta;
  data: Uint8Array;
  scale: Uint8Array | null;
  scaleShape: number[] | null;
}

export interface OpenOptions {
  /** check that every tensor config.json implies is present with its shape (default true) */
  validate?: boolean;
}

interface Resolved {
  meta: TensorMeta;
  src: TensorSource;
  entry: TensorEntry;
  scaleEntry: TensorEntry | null;
}

const fmtShape = (s: ReadonlyArray<number>): string => `[${s.join(', ')}]`;
const sameShape = (a: ReadonlyArray<number>, b: ReadonlyArray<number>): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

/** tensors this large are decoded on the native addon when it is built (formats.ts's bits, on every core) */
const NATIVE_DECODE_MIN = 1 << 16;

export class Checkpoint {
  readonly dir: string;
  readonly config: V4Config;
  readonly layout: Layout;
  /** config warnings (sizes that work here but not in every engine) */
  readonly warnings: string[];
  private readonly set: SafetensorsSet;
  private readonly tensors: Map<string, Resolved>;

  private constructor(dir: string, config: V4Config, warnings: string[], layout: Layout, set: SafetensorsSet, tensors: Map<string, Resolved>) {
    this.dir = dir;
    this.config = config;
    this.warnings = warnings;
    this.layout = layout;
    this.set = set;
    this.tensors = tensors;
  }

  /** config.json + model.safetensors.index.json (or one model.safetensors); headers validated, nothing else read. */
  static async open(dir: string, opts: OpenOptions = {}): Promise<Checkpoint> {
    const cfgPath = join(dir, 'config.json');
    if (!existsSync(cfgPath)) throw new InputError(`${dir}: no config.json (not a model folder)`);
    const { config, warnings } = parseConfigWithWarnings(readJsonFile(cfgPath), cfgPath);
    const set = SafetensorsSet.open(dir);
    try {
      const layout = detectLayout(set.entries.keys());
      const sources = layout === 'official' ? officialSources(set) : mapTransformersLayout(set);
      const tensors = new Map<string, Resolved>();
      for (const [name, src] of sources) tensors.set(name, resolve(set, name, src));
      const ck = new Checkpoint(dir, config, warnings, layout, set, tensors);
      if (opts.validate ?? true) ck.validate();
      return ck;
    } catch (e) {
      set.close();
      throw e;
    }
  }

  /**
   * Every tensor config.json implies is present with its logical shape (InputError naming the
   * first that is not). An MTP block may be absent as a whole (transformers drops `mtp.*`).
   */
  validate(): void {
    const names = [...this.tensors.keys()];
    const absentBlock = (n: string): boolean => {
      const m = /^mtp\.\d+\./.exec(n);
      return m !== null && !names.some((x) => x.startsWith(m[0]));
    };
    for (const t of expectedTensors(this.config)) {
      if (absentBlock(t.name)) continue;
      const r = this.tensors.get(t.name);
      if (!r) throw new InputError(`${this.dir}: missing tensor ${t.name} (config.json implies it, shape ${fmtShape(t.shape)})`);
      if (!sameShape(r.meta.logicalShape, t.shape)) {
        throw new InputError(`${r.meta.file}: tensor ${t.name} has shape ${fmtShape(r.meta.logicalShape)}, expected ${fmtShape(t.shape)} from config.json`);
      }
    }
  }

  /** official weight names (no .scale entries), sorted */
  names(): string[] {
    return [...this.tensors.keys()].sort();
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  meta(name: string): TensorMeta {
    return this.get(name).meta;
  }

  private get(name: string): Resolved {
    const r = this.tensors.get(name);
    if (!r) throw new InputError(`${this.dir}: missing tensor ${name}`);
    return r;
  }

  /** how the tensor is stored (dtype, stored shape, scale shape): what writeCheckpointFiles needs to copy it */
  plan(name: string): TensorPlan {
    const r = this.get(name);
    const scaleShape = r.scaleEntry ? sliceShape(r.scaleEntry.shape, r.src, r.meta.format === 'fp8' ? FP8_BLOCK : 1) : null;
    return { name, dtype: r.entry.dtype, shape: r.meta.shape, scaleShape };
  }

  /**
   * The tensor as float32, dequantised (FP8 block scales, FP4 group scales, BF16, F16, F32).
   * `into`: a buffer the caller reuses from tensor to tensor (no fresh allocation, so less garbage
   * to collect); where the addon decodes, the result is its first elements, else a new array.
   */
  async f32(name: string, expectShape?: number[], into?: Float32Array): Promise<Float32Array> {
    const r = this.get(name);
    const m = r.meta;
    if (expectShape && !sameShape(m.logicalShape, expectShape)) {
      throw new InputError(`${m.file}: tensor ${name} has shape ${fmtShape(m.logicalShape)}, expected ${fmtShape(expectShape)}`);
    }
    const cols = m.logicalShape[m.logicalShape.length - 1] ?? 1;
    const rows = numel(m.logicalShape) / Math.max(cols, 1);
    const raw = this.readRaw(r);
    const data = raw.data;
    // an FP8 tensor stored without scales has scale 1 (E8M0 127) in every block
    const scale = m.format === 'fp8' ? raw.scale ?? new Uint8Array(Math.ceil(rows / FP8_BLOCK) * Math.ceil(cols / FP8_BLOCK)).fill(127) : raw.scale;
    const native = rows * cols >= NATIVE_DECODE_MIN ? decodeWeightNative(m.format, data, scale, rows, cols, into && into.length >= rows * cols ? into : undefined) : null;
    if (native) return native;
    switch (m.format) {
      case 'fp8':
        return dequantFp8Block(data, scale!, rows, cols);
      case 'fp4':
        return dequantFp4(data, scale!, rows, cols);
      case 'bf16':
        return bf16BytesToF32(data);
      case 'f16':
        return f16BytesToF32(data);
      case 'f32':
        return f32BytesToF32(data);
      case 'int':
        throw new InputError(`${m.file}: tensor ${name} is ${m.dtype} (integers), not a float weight`);
    }
  }

  /** an integer tensor (I64, I32, I16, I8, U8) as Int32Array, e.g. ffn.gate.tid2eid */
  async ints(name: string): Promise<Int32Array> {
    const r = this.get(name);
    const m = r.meta;
    const { data } = this.readRaw(r);
    const n = numel(m.shape);
    const out = new Int32Array(n);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n; i++) {
      let v: number;
      switch (m.dtype) {
        case 'I64': {
          const b = dv.getBigInt64(i * 8, true);
          if (b > 2147483647n || b < -2147483648n) throw new InputError(`${m.file}: tensor ${name}[${i}] = ${b} does not fit in int32`);
          v = Number(b);
          break;
        }
        case 'I32': v = dv.getInt32(i * 4, true); break;
        case 'I16': v = dv.getInt16(i * 2, true); break;
        case 'I8': v = dv.getInt8(i); break;
        case 'U8': case 'BOOL': v = dv.getUint8(i); break;
        default: throw new InputError(`${m.file}: tensor ${name} is ${m.dtype}, not an integer tensor`);
      }
      out[i] = v;
    }
    return out;
  }

  /** the bytes as shipped (and the scale's), for a backend that computes on the stored format */
  async raw(name: string): Promise<RawTensor> {
    const r = this.get(name);
    const { data, scale, scaleShape } = this.readRaw(r);
    return { meta: r.meta, data, scale, scaleShape };
  }

  /** where the stored bytes (and the scale's) lie, read only when the writer streams them (a copy as stored) */
  stored(name: string): { data: ByteSource; scale: ByteSource | null } {
    const r = this.get(name);
    const rowDiv = r.meta.format === 'fp8' ? FP8_BLOCK : 1;
    const src = (e: TensorEntry, div: number): ByteSource => this.set.source(e.name, ...sliceRange(e, r.src, div));
    return { data: src(r.entry, 1), scale: r.scaleEntry ? src(r.scaleEntry, rowDiv) : null };
  }

  private readRaw(r: Resolved): { data: Uint8Array; scale: Uint8Array | null; scaleShape: number[] | null } {
    const data = readSlice(this.set, r.entry, r.src, 1);
    if (!r.scaleEntry) return { data, scale: null, scaleShape: null };
    const rowDiv = r.meta.format === 'fp8' ? FP8_BLOCK : 1;
    const scale = readSlice(this.set, r.scaleEntry, r.src, rowDiv);
    return { data, scale, scaleShape: sliceShape(r.scaleEntry.shape, r.src, rowDiv) };
  }

  /**
   * Read the shards that are mostly not in the page cache with direct I/O from here on
   * (SafetensorsFile.readDirectIfUncached): a merge reads each byte once. Returns how many.
   */
  readDirectIfUncached(): number {
    return this.set.readDirectIfUncached();
  }

  async close(): Promise<void> {
    this.set.close();
  }
}

/** official layout: every tensor is its own name; `X.scale` belongs to `X.weight` */
function officialSources(set: SafetensorsSet): Map<string, TensorSource> {
  const out = new Map<string, TensorSource>();
  for (const name of set.entries.keys()) {
    if (name.endsWith('.scale') && set.has(`${name.slice(0, -'.scale'.length)}.weight`)) continue;
    const s = scaleNameOf(name);
    out.set(name, { tensor: name, scale: name.endsWith('.weight') && set.has(s) ? s : null, expert: null, rows: null });
  }
  return out;
}

// the shape of the part of `shape` a source selects: drop the expert dim, keep the row range
function sliceShape(shape: number[], src: TensorSource, rowDiv: number): number[] {
  let s = src.expert !== null ? shape.slice(1) : shape.slice();
  if (src.rows) s = [Math.ceil(src.rows[1] / rowDiv) - Math.floor(src.rows[0] / rowDiv), ...s.slice(1)];
  return s;
}

function readSlice(set: SafetensorsSet, e: TensorEntry, src: TensorSource, rowDiv: number): Uint8Array {
  if (src.expert === null && !src.rows) return set.read(e.name);
  return set.readSlice(e.name, ...sliceRange(e, src, rowDiv));
}

// the byte range [from, to) of a tensor's data that a source selects (one expert, a row range)
function sliceRange(e: TensorEntry, src: TensorSource, rowDiv: number): [number, number] {
  const bytes = e.end - e.begin;
  const per = src.expert !== null ? bytes / e.shape[0]! : bytes;
  const inner = src.expert !== null ? e.shape.slice(1) : e.shape;
  let from = (src.expert ?? 0) * per;
  let to = from + per;
  if (src.rows) {
    const rowBytes = per / inner[0]!;
    const r0 = Math.floor(src.rows[0] / rowDiv);
    const r1 = Math.ceil(src.rows[1] / rowDiv);
    to = from + r1 * rowBytes;
    from += r0 * rowBytes;
  }
  return [from, to];
}

// the format, logical shape and scale checks of one tensor
function resolve(set: SafetensorsSet, name: string, src: TensorSource): Resolved {
  const entry = set.entry(src.tensor);
  const scaleEntry = src.scale ? set.entry(src.scale) : null;
  const shape = sliceShape(entry.shape, src, 1);
  let format: WeightFormat;
  let logicalShape = shape;
  const fail = (msg: string): never => {
    throw new InputError(`${entry.file}: tensor ${src.tensor}${src.tensor === name ? '' : ` (${name})`}: ${msg}`);
  };
  switch (entry.dtype) {
    case 'F8_E4M3':
      format = 'fp8';
      break;
    case 'BF16': format = 'bf16'; break;
    case 'F16': format = 'f16'; break;
    case 'F32': format = 'f32'; break;
    case 'I8':
    case 'U8':
      format = scaleEntry ? 'fp4' : 'int';
      if (scaleEntry) logicalShape = [...shape.slice(0, -1), 2 * shape[shape.length - 1]!];
      break;
    case 'I16': case 'I32': case 'I64': case 'BOOL':
      format = 'int';
      break;
    default:
      return fail(`dtype ${entry.dtype} is not a weight format v4tune reads`);
  }
  if (scaleEntry) {
    if (scaleEntry.dtype !== 'F8_E8M0' && scaleEntry.dtype !== 'U8') fail(`scale ${scaleEntry.name} is ${scaleEntry.dtype}, expected F8_E8M0`);
    if (format !== 'fp8' && format !== 'fp4') fail(`a ${entry.dtype} weight has a scale tensor ${scaleEntry.name}`);
    // one scale per 128×128 block (FP8) or per 32 inputs of a row (FP4) of each matrix; stacked
    // matrices (leading dimensions) have one scale matrix each. The shape must match exactly.
    const cols = logicalShape[logicalShape.length - 1]!;
    const rows = logicalShape.length >= 2 ? logicalShape[logicalShape.length - 2]! : 1;
    const lead = logicalShape.slice(0, -2);
    const want = [...lead, ...(format === 'fp8' ? [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)] : [rows, cols / FP4_GROUP])];
    if (format === 'fp4' && cols % FP4_GROUP !== 0) fail(`FP4 input size ${cols} is not a multiple of ${FP4_GROUP}`);
    if (format === 'fp8' && src.rows && (src.rows[0] % FP8_BLOCK !== 0 || (src.rows[1] % FP8_BLOCK !== 0 && src.rows[1] !== entry.shape[src.expert !== null ? 1 : 0]))) {
      fail(`rows ${src.rows[0]}..${src.rows[1]} do not start on a ${FP8_BLOCK}-row scale block`);
    }
    const got = sliceShape(scaleEntry.shape, src, format === 'fp8' ? FP8_BLOCK : 1);
    if (got.length !== want.length || got.some((d, i) => d !== want[i])) fail(`scale ${scaleEntry.name} has shape ${fmtShape(got)}, expected ${fmtShape(want)}`);
  }
  return { meta: { name, dtype: entry.dtype, shape, file: entry.file, format, logicalShape }, src, entry, scaleEntry };
}

// ---------------------------------------------------------------- writing

/** One official tensor to write, in its stored form. */
export interface TensorPlan {
  /** official name */
  name: string;
  dtype: Dtype;
  /** stored shape (FP4: [out, in/2]) */
  shape: number[];
  /** E8M0 scale shape for FP8 / FP4, else null */
  scaleShape: number[] | null;
}

export interface TensorBytes {
  data: Uint8Array;
  scale: Uint8Array | null;
}

/** a tensor's bytes for the writer: in memory, or still in a file (streamed, see Checkpoint.stored) */
export interface StoredBytes {
  data: Uint8Array | ByteSource;
  scale: Uint8Array | ByteSource | null;
}

export interface WriteOptions {
  /** official (default) or transformers names (stacked experts, `_scale_inv` scales) */
  layout?: Layout;
  /**
   * write the shards with direct I/O, past the page cache, where the native addon is built and
   * the file system takes it (model/out-file.ts; default true); false: through the page cache
   */
  directIo?: boolean;
  /** called as each output shard is begun: whether it is written with direct I/O */
  onShardOpen?: (file: string, direct: boolean) => void;
  /** shard size limit in bytes (default 4 GiB) */
  maxShardBytes?: number;
  /**
   * how many tensors `produce` is called for ahead of the one being written (default 0), so an
   * asynchronous produce (a native kernel) runs while the writer writes; at most 1 + ahead tensors
   * are held at a time in the official layout
   */
  ahead?: number;
  /**
   * run further ahead by memory: the next tensors are started while the bytes they hold
   * (`heldBytes(name)`: 0 for one left in a file) summed over every tensor produced (or being
   * produced) and not yet written stay within `budget`
   */
  aheadBytes?: {
    budget: number;
    heldBytes: (name: string) => number;
    /**
     * at most this many of them produced at a time (default: as many as the budget allows); a
     * producer that queues native jobs keeps the libuv pool free for the other lane's file copies
     */
    concurrency?: number;
  };
  /** called whenever the tensors produced (or being produced) and not yet written change: their number and heldBytes */
  onHeld?: (tensors: number, bytes: number) => void;
  /** called once a tensor's bytes (weight and scale) are all written: its buffers may be reused */
  onWritten?: (name: string) => void;
}

interface Piece {
  official: string;
  /** expert index inside a stacked tensor (for ordering), or -1 */
  expert: number;
  /** 0 = w1/w2 (first rows), 1 = w3 (second rows of gate_up_proj) */
  part: number;
  scale: boolean;
}

/**
 * Write the safetensors shards and index of a checkpoint into `dir` (an existing folder, e.g. the
 * temp folder of writeDirAtomic). Official layout: `X.weight` + `X.scale`, sorted by name like the
 * release. Transformers layout: renamed, routed experts stacked per layer. Returns the shard file
 * names.
 *
 * Every tensor's place in its shard is fixed by the plans, so tensors are written as they are
 * produced, in any order, along two lanes:
 * - in order: `produce` is called in the header order (up to `opts.ahead` tensors early) for
 *   tensors that hold no memory (`aheadBytes.heldBytes` 0, or every tensor without aheadBytes);
 *   bytes still in a file are streamed through one buffer, the other lane served between chunks;
 * - by memory (with `opts.aheadBytes`): the other tensors are produced in order too, as many at a
 *   time as their heldBytes fit in the budget (one at least), each written as soon as it is
 *   produced, so a native merge runs while the first lane streams copies.
 */
export async function writeCheckpointFiles(
  dir: string,
  plans: ReadonlyArray<TensorPlan>,
  produce: (name: string) => Promise<StoredBytes> | StoredBytes,
  opts: WriteOptions = {},
): Promise<string[]> {
  const layout = opts.layout ?? 'official';
  const byName = new Map(plans.map((p) => [p.name, p]));
  // on-disk tensor name -> its spec and the official pieces it is made of, in order
  const targets = new Map<string, { spec: TensorSpec; pieces: Piece[] }>();
  const addPiece = (tensor: string, dtype: Dtype, shape: number[], piece: Piece): void => {
    const t = targets.get(tensor);
    if (t) t.pieces.push(piece);
    else targets.set(tensor, { spec: { name: tensor, dtype, shape }, pieces: [piece] });
  };
  for (const p of plans) {
    if (layout === 'official') {
      addPiece(p.name, p.dtype, p.shape, { official: p.name, expert: -1, part: 0, scale: false });
      if (p.scaleShape) addPiece(scaleNameOf(p.name), 'F8_E8M0', p.scaleShape, { official: p.name, expert: -1, part: 0, scale: true });
      continue;
    }
    const src = officialToTransformers(p.name, p.shape[0]!);
    const stacked = src.expert !== null;
    const part = src.rows && src.rows[0] > 0 ? 1 : 0;
    addPiece(src.tensor, p.dtype, p.shape, { official: p.name, expert: src.expert ?? -1, part, scale: false });
    if (p.scaleShape && src.scale) addPiece(src.scale, 'F8_E8M0', p.scaleShape, { official: p.name, expert: src.expert ?? -1, part, scale: true });
    if (stacked && part === 1 && p.scaleShape && p.dtype === 'F8_E4M3' && p.shape[0]! % 128 !== 0) {
      throw new InputError(`${p.name}: FP8 experts with ${p.shape[0]} rows (not a multiple of 128) cannot be stacked into gate_up_proj`);
    }
  }
  // stacked tensors: order pieces by expert then part, and set the stacked shape [E, rows·parts, ...]
  for (const t of targets.values()) {
    if (t.pieces[0]!.expert < 0) continue;
    t.pieces.sort((a, b) => a.expert - b.expert || a.part - b.part);
    const experts = new Set(t.pieces.map((x) => x.expert)).size;
    const parts = t.pieces.length / experts;
    t.spec.shape = [experts, parts * t.spec.shape[0]!, ...t.spec.shape.slice(1)];
  }
  const specs = [...targets.values()].map((t) => t.spec).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const writer = new SafetensorsWriter(dir, specs, { maxShardBytes: opts.maxShardBytes, directIo: opts.directIo ?? true, onShardOpen: opts.onShardOpen });
  // where each official tensor's weight and scale go: the on-disk tensor and the byte offset in it
  const where = new Map<string, { data?: Place; scale?: Place }>();
  for (const t of targets.values()) {
    let at = 0;
    for (const x of t.pieces) {
      const plan = byName.get(x.official)!;
      const bytes = x.scale ? numel(plan.scaleShape!) : numel(plan.shape) * DTYPE_BYTES[plan.dtype];
      const w = where.get(x.official) ?? {};
      w[x.scale ? 'scale' : 'data'] = { tensor: t.spec.name, at, bytes };
      where.set(x.official, w);
      at += bytes;
    }
  }
  // the official tensors in the order the header first needs them (the order produce is called in)
  const position = new Map<string, number>();
  for (const spec of specs) for (const x of targets.get(spec.name)!.pieces) if (!position.has(x.official)) position.set(x.official, position.size);
  const order = [...position.keys()];
  const cost = (name: string): number => opts.aheadBytes?.heldBytes(name) ?? 0;
  const byMemory = (name: string): boolean => opts.aheadBytes !== undefined && cost(name) > 0;

  let failure: { error: unknown } | null = null;
  let inFlight = 0;
  let heldBytes = 0;
  const held = (): void => opts.onHeld?.(inFlight, heldBytes);
  // one official tensor's produced bytes to their places (a ByteSource copied file to file, or
  // streamed chunk by chunk with the event loop served between chunks)
  const write = async (name: string, bytes: StoredBytes): Promise<void> => {
    const w = where.get(name)!;
    for (const [what, src] of [['data', bytes.data], ['scale', bytes.scale]] as const) {
      const place = w[what];
      if (!place) continue;
      if (!src) throw new Error(`writeCheckpointFiles: ${name} was produced without its scale`);
      if (src.length !== place.bytes) throw new Error(`writeCheckpointFiles: ${name} produced ${src.length} ${what} bytes, its plan needs ${place.bytes}`);
      if (src instanceof Uint8Array) await writer.writeAtAsync(place.tensor, place.at, src);
      else await writer.streamAt(place.tensor, place.at, src);
    }
  };
  const written = (name: string): void => {
    inFlight--;
    heldBytes -= cost(name);
    opts.onWritten?.(name);
    held();
  };

  // lane 1: in order, `ahead` tensors early
  const inOrder = order.filter((n) => !byMemory(n));
  const ahead = Math.max(0, Math.floor(opts.ahead ?? 0));
  const laneInOrder = async (): Promise<void> => {
    const started: Array<Promise<StoredBytes>> = [];
    let next = 0;
    for (let i = 0; i < inOrder.length && !failure; i++) {
      while (next < inOrder.length && next <= i + ahead) {
        const p = (async () => produce(inOrder[next]!))();
        p.catch(() => {}); // a failure surfaces when the tensor is taken
        started.push(p);
        next++;
        inFlight++;
        held();
      }
      const bytes = await started[i]!;
      delete started[i];
      if (failure) return;
      await write(inOrder[i]!, bytes);
      written(inOrder[i]!);
    }
  };

  // lane 2: by memory, each tensor written as soon as it is produced
  const laneByMemory = async (): Promise<void> => {
    const running = new Set<Promise<void>>();
    for (const name of order.filter(byMemory)) {
      const limit = opts.aheadBytes!.concurrency ?? Infinity;
      while (running.size > 0 && (heldBytes + cost(name) > opts.aheadBytes!.budget || running.size >= limit) && !failure) await Promise.race(running);
      if (failure) break;
      inFlight++;
      heldBytes += cost(name);
      held();
      const task = (async () => {
        try {
          const bytes = await produce(name);
          if (failure) return;
          await write(name, bytes);
          written(name);
        } catch (e) {
          failure ??= { error: e };
        }
      })();
      running.add(task);
      void task.then(() => running.delete(task));
    }
    await Promise.all(running);
  };

  await Promise.all([laneInOrder(), laneByMemory()].map((lane) => lane.catch((e: unknown) => { failure ??= { error: e }; })));
  if (failure) {
    writer.abort();
    throw (failure as { error: unknown }).error;
  }
  try {
    return writer.finish();
  } catch (e) {
    writer.abort();
    throw e;
  }
}

/** where one piece of an official tensor goes: the on-disk tensor and the byte range in it */
interface Place {
  tensor: string;
  at: number;
  bytes: number;
}

/**
 * Copy a checkpoint folder tensor by tensor into `out` (written atomically), in the official or
 * the transformers layout: config.json and the tokenizer files are copied as they are, the
 * stored bytes (FP8/FP4 with their scales) are kept, streamed from file to file.
 */
export async function copyCheckpoint(src: Checkpoint, out: string, opts: WriteOptions & { overwrite?: boolean } = {}): Promise<string[]> {
  const plans = src.names().map((n) => src.plan(n));
  return writeDirAtomic(out, async (tmp) => {
    writeFileSync(join(tmp, 'config.json'), readFileSync(join(src.dir, 'config.json')));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) if (existsSync(join(src.dir, f))) copyFileSync(join(src.dir, f), join(tmp, f));
    stampChatTemplate(tmp);
    return writeCheckpointFiles(tmp, plans, (n) => src.stored(n), opts);
  }, { kind: 'model', overwrite: opts.overwrite, inputs: [src.dir] });
}
