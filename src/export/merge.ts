// Merge a LoRA adapter into its base checkpoint by streaming, tensor by tensor: read a tensor's
// stored bytes by byte range, and if the adapter adapts its module, dequantise it (FP8 128×128
// block scales, FP4 per-32 scales, BF16/F16/F32), add ΔW = scaling·B·A (float32 fused
// multiply-adds over the rank: adapter.ts `delta`) and write it back requantised to the format it
// came in (fresh E8M0 scales) or as BF16. Other tensors are copied as stored, never decoded: with
// direct I/O (the default where the file system takes it: model/out-file.ts) through the native
// writer's aligned buffers, else file to file in the kernel (copy_file_range) or through one
// buffer (or, with dtype bf16, FP8/FP4 weights are dequantised to BF16 too, so the whole output is
// one consistent BF16 checkpoint). Base shards mostly not in the page cache are read with direct
// I/O as well. The copies stream in order while the merges run on the kernel threads, each merged
// tensor written at its place as soon as it is done (writeCheckpointFiles' two lanes); memory stays
// bounded by aheadBytes of merges in flight; the output folder appears whole or not at all.
import { copyFileSync, cpSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, resolve, isAbsolute } from 'node:path';
import { InputError, NonFiniteError, firstNonFinite } from '../errors.js';
import { OUTPUT_MARKER, writeDirAtomic } from '../fsutil.js';
import { LOCK_FILE } from '../lock.js';
import { tryLoadAddon } from '../backend/native/addon.js';
import { mergeRequantNative } from '../backend/native/requant.js';
import type { Adapter } from '../lora/adapter.js';
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, loadAdapter } from '../lora/peft.js';
import { Checkpoint, writeCheckpointFiles, type RawTensor, type StoredBytes, type TensorBytes, type TensorMeta, type TensorPlan } from '../model/checkpoint.js';
import {
  bf16BytesToF32, dequantFp4, dequantFp8Block, f16BytesToF32, f32BytesToF32, f32ToBf16Bytes, f32ToBytes, f32ToF16Bytes,
  fp8e4m3Encode, FP8_BLOCK, quantFp4, quantFp8Block,
} from '../model/formats.js';
import { BufferPool } from '../model/buffer-pool.js';
import { configJsonText } from '../model/config-json.js';
import type { Layout } from '../model/layout.js';
import { DTYPE_BYTES, INDEX_FILE, numel, type ByteSource } from '../model/safetensors.js';
import { stampChatTemplate } from '../chat/config.js';

export type MergeDtype = 'original' | 'bf16';

/** the default MergeOptions.aheadBytes: 256 MiB */
export const MERGE_AHEAD_BYTES = 256 * 1024 * 1024;

/** what happens to one tensor of the base */
export type TensorAction = 'merged' | 'copied' | 'converted';

export interface MergeOptions {
  /** base checkpoint folder (official or transformers layout) */
  base: string;
  /** PEFT adapter folder (adapter_config.json + adapter_model.safetensors) */
  adapter: string;
  /** output folder, written atomically (replaced only if v4tune wrote it as a merged model, or with overwrite) */
  out: string;
  /** replace an output folder v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  /** `original` (default): merged tensors requantised to their stored format; `bf16`: every FP8/FP4 weight written as BF16 */
  dtype?: MergeDtype;
  /** output shard size limit in bytes (default: the base's largest shard) */
  maxShardBytes?: number;
  /**
   * write the output shards, and read base shards mostly not in the page cache, with direct I/O
   * past it, where the native addon is built and the file system takes it (default true;
   * model/out-file.ts says why)
   */
  directIo?: boolean;
  /** the one-line warning of an adapter without a base fingerprint (default stderr) */
  warn?: (line: string) => void;
  /**
   * buffer bytes the merge may hold for tensors merged ahead of the writer (default
   * MERGE_AHEAD_BYTES): the native merge of the next tensors runs while copies are written
   */
  aheadBytes?: number;
  /** called once, after every input check and before anything is written */
  onPlan?: (plan: MergePlan) => void;
  /** called after each tensor is produced */
  onTensor?: (e: MergeTensorEvent) => void;
}

export interface MergePlan {
  base: string;
  adapter: string;
  out: string;
  dtype: MergeDtype;
  layout: Layout;
  /** base tensors (official names, scales not counted) */
  tensors: number;
  /** weight names that get ΔW added */
  merged: string[];
  /** FP8/FP4 weights without a delta that dtype bf16 dequantises */
  converted: number;
  /** tensors copied as stored */
  copied: number;
  /** stored bytes of the base's tensors (scales included) */
  bytesIn: number;
  /** stored bytes of the output's tensors (scales included) */
  bytesOut: number;
  /** the largest single tensor of the base, stored bytes (the read size bound) */
  largestTensorBytes: number;
  maxShardBytes: number;
}

export interface MergeTensorEvent {
  name: string;
  /** 1-based */
  index: number;
  total: number;
  action: TensorAction;
  /** stored bytes produced (weight + scale) */
  bytes: number;
}

export interface MergeSummary {
  base: string;
  adapter: string;
  out: string;
  dtype: MergeDtype;
  layout: Layout;
  tensors: number;
  merged: number;
  converted: number;
  copied: number;
  /** stored bytes read from the base's shards (weights + scales) */
  bytesRead: number;
  /** stored bytes written to the output's shards (weights + scales) */
  bytesWritten: number;
  /** stored bytes of the copied tensors, streamed from the base's shards to the output's (never held whole) */
  bytesStreamed: number;
  /** the largest tensor (or scale) read whole into memory, bytes: merged and converted tensors only */
  largestReadBytes: number;
  /** the most tensors produced (or being produced) and not yet written at one time */
  peakTensorsHeld: number;
  /** merged and converted tensors the native addon produced (the rest: the TypeScript path, where the addon is not built or the format is one it does not take) */
  nativeTensors: number;
  /** the most bytes those tensors held at one time (stored input + output of each merged or converted one): at most aheadBytes, or one tensor more */
  peakHeldBytes: number;
  shards: string[];
  /** base shards read with direct I/O (those mostly not in the page cache when the merge began, with directIo) */
  shardsReadDirect: number;
  /** every output shard was written with direct I/O (false: through the page cache, as asked or where the file system or a missing addon left no choice) */
  directIo: boolean;
  /** other files and folders of the base copied as they are (config.json is rewritten with dtype bf16) */
  extraFiles: string[];
  seconds: number;
  /** peak resident set size seen (process.memoryUsage().rss, sampled per tensor and every 200 ms) */
  peakRssBytes: number;
}

const fmtShape = (s: ReadonlyArray<number>): string => `[${s.join(', ')}]`;
const isQuantised = (m: TensorMeta): boolean => m.format === 'fp8' || m.format === 'fp4';

/** the module a weight belongs to (`layers.0.attn.wq_a.weight` -> `layers.0.attn.wq_a`) */
function moduleOf(name: string): string | null {
  return name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : null;
}

function rowsCols(m: TensorMeta): [number, number] {
  const cols = m.logicalShape[m.logicalShape.length - 1] ?? 1;
  return [numel(m.logicalShape) / Math.max(cols, 1), cols];
}

/**
 * A stored tensor as float32 [rows, cols]:
 *   fp8:  w[i][j] · 2^(scale[i/128][j/128] − 127)   (no scale tensor: scale 1)
 *   fp4:  e2m1(nibble) · 2^(scale[i][j/32] − 127)
 *   bf16 / f16 / f32: widened
 */
export function dequantStored(r: RawTensor): Float32Array {
  const m = r.meta;
  const [rows, cols] = rowsCols(m);
  switch (m.format) {
    case 'fp8':
      return dequantFp8Block(r.data, r.scale ?? new Uint8Array(Math.ceil(rows / FP8_BLOCK) * Math.ceil(cols / FP8_BLOCK)).fill(127), rows, cols);
    case 'fp4':
      return dequantFp4(r.data, r.scale!, rows, cols);
    case 'bf16':
      return bf16BytesToF32(r.data);
    case 'f16':
      return f16BytesToF32(r.data);
    case 'f32':
      return f32BytesToF32(r.data);
    case 'int':
      throw new InputError(`${m.file}: tensor ${m.name} is ${m.dtype} (integers), not a float weight`);
  }
}

/**
 * float32 [rows, cols] back to a stored format, with fresh scales:
 *   fp8: per 128×128 block the smallest power of two s with amax/s ≤ 448, then e4m3(x/s)
 *   fp4: per 32 inputs of a row the smallest power of two s with amax/s ≤ 6, then e2m1(x/s)
 *   bf16 / f16 / f32: rounded to nearest even
 */
export function requantise(x: Float32Array, m: TensorMeta, hasScale: boolean): TensorBytes {
  const [rows, cols] = rowsCols(m);
  switch (m.format) {
    case 'fp8': {
      if (!hasScale) {
        const w = new Uint8Array(x.length);
        for (let i = 0; i < x.length; i++) w[i] = fp8e4m3Encode(x[i]!);
        return { data: w, scale: null };
      }
      const q = quantFp8Block(x, rows, cols);
      return { data: q.weight, scale: q.scale };
    }
    case 'fp4': {
      const q = quantFp4(x, rows, cols);
      return { data: q.weight, scale: q.scale };
    }
    case 'bf16':
      return { data: f32ToBf16Bytes(x), scale: null };
    case 'f16':
      return { data: f32ToF16Bytes(x), scale: null };
    case 'f32':
      return { data: f32ToBytes(x), scale: null };
    case 'int':
      throw new InputError(`${m.file}: tensor ${m.name} is ${m.dtype} (integers), not a float weight`);
  }
}

const planBytes = (p: TensorPlan): number => numel(p.shape) * DTYPE_BYTES[p.dtype] + (p.scaleShape ? numel(p.scaleShape) : 0);

// p is q or lies inside q
function within(p: string, q: string): boolean {
  const r = relative(q, p);
  return r === '' || (!r.startsWith('..') && !isAbsolute(r));
}

// the output path: not a file, not the base or adapter (or a folder holding them, or inside them),
// and, if it exists, empty or a model folder (so a merge never replaces an unrelated folder)
function checkOut(out: string, base: string, adapter: string): void {
  if (existsSync(out) && !statSync(out).isDirectory()) throw new InputError(`${out}: output path exists and is a file, not a folder`);
  for (const [what, dir] of [['base checkpoint', base], ['adapter', adapter]] as const) {
    if (within(dir, out) || within(out, dir)) throw new InputError(`${out}: the output folder must lie outside the ${what} folder ${dir} and not contain it`);
  }
  if (existsSync(out) && readdirSync(out).length > 0 && !existsSync(join(out, 'config.json'))) {
    throw new InputError(`${out}: output folder exists, is not empty and holds no config.json (not a previous merge); refusing to replace it`);
  }
}

// the base's largest shard in bytes (the default output shard limit)
function largestShard(ck: Checkpoint): number {
  let max = 0;
  for (const f of new Set(ck.names().map((n) => ck.meta(n).file))) max = Math.max(max, statSync(f).size);
  return Math.max(max, 1024 * 1024);
}

// config.json of the output, every field of the base's kept, floats written as floats
// (config-json.ts). dtype original: as the base ships it (quantization_config and expert_dtype
// included); bf16: no FP8 quantization_config, no FP4 expert_dtype (as a BF16 release).
function outputConfigJson(text: string, file: string, dtype: MergeDtype): string {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new InputError(`${file}: not valid JSON`);
  }
  if (dtype === 'bf16') {
    delete j.quantization_config;
    delete j.expert_dtype;
    j.torch_dtype = 'bfloat16';
  }
  return configJsonText(j);
}

interface Prepared {
  ck: Checkpoint;
  adapter: Adapter;
  plan: MergePlan;
  /** output plan per base tensor, in the base's name order */
  outPlans: TensorPlan[];
  actions: Map<string, TensorAction>;
}

// every input check, then the plan; nothing is written
async function prepare(opts: MergeOptions): Promise<Prepared> {
  const dtype = opts.dtype ?? 'original';
  if (dtype !== 'original' && dtype !== 'bf16') throw new InputError(`--dtype: must be original or bf16 (got "${String(dtype)}")`);
  const base = resolve(opts.base);
  const adapterDir = resolve(opts.adapter);
  const out = resolve(opts.out);
  checkOut(out, base, adapterDir);
  // the addon first, where it is built: its memory policy (freed memory kept for reuse, native/
  // addon.cpp) then covers the adapter's buffers too. Loaded after them, the adapter of a flash
  // checkpoint (100 MB) took 0.6 s to read instead of 0.2, most of it faulting in fresh pages.
  tryLoadAddon();
  const adapter = await loadAdapter(adapterDir, { warn: opts.warn });
  const ck = await Checkpoint.open(base);
  try {
    const cfgPath = join(adapterDir, ADAPTER_CONFIG);
    const wPath = join(adapterDir, ADAPTER_WEIGHTS);
    adapter.assertFits(ck.config, cfgPath);
    for (const module of adapter.modules()) {
      const name = `${module}.weight`;
      const l = adapter.layers.get(module)!;
      if (!ck.has(name)) throw new InputError(`${wPath}: the adapter adapts ${module}, but the base ${base} has no tensor ${name}`);
      const m = ck.meta(name);
      if (m.format === 'int') throw new InputError(`${wPath}: the adapter adapts ${module}, but ${m.file}: tensor ${name} is ${m.dtype} (integers), not a float weight`);
      if (m.logicalShape.length !== 2 || m.logicalShape[0] !== l.out || m.logicalShape[1] !== l.in) {
        throw new InputError(`${wPath}: ${module}'s B·A is [${l.out}, ${l.in}] but ${m.file}: tensor ${name} is ${fmtShape(m.logicalShape)}`);
      }
    }
    const actions = new Map<string, TensorAction>();
    const outPlans: TensorPlan[] = [];
    const merged: string[] = [];
    let bytesIn = 0;
    let bytesOut = 0;
    let largest = 0;
    for (const name of ck.names()) {
      const m = ck.meta(name);
      const p = ck.plan(name);
      const module = moduleOf(name);
      const adapted = module !== null && adapter.layers.has(module);
      const toBf16 = dtype === 'bf16' && (adapted || isQuantised(m));
      const action: TensorAction = adapted ? 'merged' : toBf16 ? 'converted' : 'copied';
      const q: TensorPlan = toBf16 ? { name, dtype: 'BF16', shape: m.logicalShape, scaleShape: null } : p;
      if (adapted) merged.push(name);
      actions.set(name, action);
      outPlans.push(q);
      bytesIn += planBytes(p);
      bytesOut += planBytes(q);
      largest = Math.max(largest, planBytes(p));
    }
    const counts = { converted: 0, copied: 0 };
    for (const a of actions.values()) if (a !== 'merged') counts[a]++;
    const plan: MergePlan = {
      base, adapter: adapterDir, out, dtype, layout: ck.layout, tensors: outPlans.length, merged, ...counts,
      bytesIn, bytesOut, largestTensorBytes: largest, maxShardBytes: opts.maxShardBytes ?? largestShard(ck),
    };
    return { ck, adapter, plan, outPlans, actions };
  } catch (e) {
    await ck.close();
    throw e;
  }
}

// a source's bytes into `into`, off the JS thread where the source can
async function readAll(src: ByteSource, into: Uint8Array): Promise<void> {
  if (src.readAsync) await src.readAsync(into, 0);
  else src.read(into, 0);
}

// the base's other files and folders (tokenizer, generation config, code, ...): everything but
// the shards, their index and config.json
function extraEntries(base: string): string[] {
  return readdirSync(base).sort().filter((n) => n !== 'config.json' && n !== INDEX_FILE && n !== OUTPUT_MARKER && n !== LOCK_FILE && !n.endsWith('.safetensors') && !n.startsWith('.tmp-'));
}

/**
 * Merge the adapter at `opts.adapter` into the checkpoint at `opts.base`, writing `opts.out`
 * (same layout as the base). Input problems (adapter for another base, a module the base lacks,
 * an output path that is a file) are one InputError before anything is written.
 */
export async function mergeAdapter(opts: MergeOptions): Promise<MergeSummary> {
  const t0 = performance.now();
  let peakRss = process.memoryUsage().rss;
  const sample = (): void => { peakRss = Math.max(peakRss, process.memoryUsage().rss); };
  const { ck, adapter, plan, outPlans, actions } = await prepare(opts);
  // a base shard mostly not in the page cache is read past it too: each byte is read once
  const shardsReadDirect = (opts.directIo ?? true) ? ck.readDirectIfUncached() : 0;
  opts.onPlan?.(plan);
  const timer = setInterval(sample, 200);
  timer.unref();
  let bytesRead = 0;
  let bytesWritten = 0;
  let largestRead = 0;
  let bytesStreamed = 0;
  let peakHeld = 0;
  let peakHeldBytes = 0;
  let nativeTensors = 0;
  let direct = true;
  const aheadBytes = opts.aheadBytes ?? MERGE_AHEAD_BYTES;
  let done = 0;
  try {
    const extra = extraEntries(plan.base);
    const shards = await writeDirAtomic(plan.out, async (tmp) => {
      const cfgPath = join(plan.base, 'config.json');
      const cfgText = readFileSync(cfgPath, 'utf8');
      writeFileSync(join(tmp, 'config.json'), outputConfigJson(cfgText, cfgPath, plan.dtype));
      for (const n of extra) {
        const src = join(plan.base, n);
        if (statSync(src).isDirectory()) cpSync(src, join(tmp, n), { recursive: true });
        else copyFileSync(src, join(tmp, n));
      }
      stampChatTemplate(tmp); // the chat template the adapter was trained with (src/chat)
      // copies stream in order while the merges run on the kernel threads, within aheadBytes of
      // buffers, each written as soon as it is merged (writeCheckpointFiles' two lanes)
      let failed = false;
      const pool = new BufferPool<Uint8Array>((n) => new Uint8Array(n), aheadBytes / 2);
      // the bytes a tensor holds while in flight: its stored input and its output (0 for a copy)
      const heldEstimate = new Map<string, number>();
      outPlans.forEach((q) => {
        if (actions.get(q.name) !== 'copied') heldEstimate.set(q.name, planBytes(ck.plan(q.name)) + planBytes(q));
      });
      // native outputs given back to the pool once written
      const pending = new Map<string, StoredBytes>();
      const producedBytes = new Map<string, number>();
      return writeCheckpointFiles(tmp, outPlans, async (name) => {
        try {
          const action = actions.get(name)!;
          let bytes: StoredBytes;
          if (action === 'copied') {
            // left in the base's shard: the writer streams it through one buffer, nothing decoded
            bytes = ck.stored(name);
            const n = bytes.data.length + (bytes.scale?.length ?? 0);
            bytesRead += n;
            bytesStreamed += n;
          } else {
            // read into pooled buffers (the next tensor of the same shape reuses them: no fresh
            // multi-MB allocation, and so no garbage collection, per tensor), off the JS thread
            // so that the copies' next chunks are issued meanwhile
            const src = ck.stored(name);
            const data = pool.take(src.data.length);
            const scale = src.scale ? pool.take(src.scale.length) : null;
            await Promise.all([readAll(src.data, data), scale ? readAll(src.scale!, scale) : null]);
            const r: RawTensor = { meta: ck.meta(name), data, scale, scaleShape: ck.plan(name).scaleShape };
            bytesRead += r.data.length + (r.scale?.length ?? 0);
            largestRead = Math.max(largestRead, r.data.length, r.scale?.length ?? 0);
            const nonFinite = (v: number, at: number): NonFiniteError =>
              new NonFiniteError(`${plan.base}: tensor ${name} holds ${v} at element ${at}${action === 'merged' ? ' after adding the adapter' : ''}; nothing merged`);
            // the native addon writes the same bytes (kernels/cpu/requant.cpp) where it is built
            const fast = await mergeRequantNative(r, action === 'merged' ? adapter.layers.get(moduleOf(name)!)! : null, plan.dtype, { data: pool.take, scale: pool.take });
            if (fast) {
              nativeTensors++;
              pool.give(data);
              if (scale) pool.give(scale);
              if (fast.bad) throw nonFinite(fast.bad.value, fast.bad.index);
              pending.set(name, fast.bytes);
              bytes = fast.bytes;
            } else {
              const x = dequantStored(r);
              if (action === 'merged') {
                const d = adapter.delta(moduleOf(name)!);
                for (let i = 0; i < x.length; i++) x[i] = x[i]! + d[i]!;
              }
              const bad = firstNonFinite(x);
              if (bad >= 0) throw nonFinite(x[bad]!, bad);
              bytes = plan.dtype === 'bf16' ? { data: f32ToBf16Bytes(x), scale: null } : requantise(x, r.meta, r.scale !== null);
            }
          }
          producedBytes.set(name, bytes.data.length + (bytes.scale?.length ?? 0));
          return bytes;
        } catch (e) {
          failed = true;
          throw e;
        }
      }, {
        layout: ck.layout, maxShardBytes: plan.maxShardBytes, ahead: 1,
        directIo: opts.directIo ?? true,
        onShardOpen: (_, d) => { direct &&= d; },
        // two merges at a time (one on the kernel threads, the next read and queued): more would
        // only wait in the libuv pool ahead of the copies' copy_file_range jobs
        aheadBytes: { budget: aheadBytes, heldBytes: (n) => heldEstimate.get(n) ?? 0, concurrency: 2 },
        onHeld: (n, b) => {
          peakHeld = Math.max(peakHeld, n);
          peakHeldBytes = Math.max(peakHeldBytes, b);
        },
        onWritten: (name) => {
          const wrote = producedBytes.get(name)!;
          producedBytes.delete(name);
          bytesWritten += wrote;
          sample();
          if (!failed) opts.onTensor?.({ name, index: ++done, total: outPlans.length, action: actions.get(name)!, bytes: wrote });
          const b = pending.get(name);
          if (!b) return;
          pending.delete(name);
          pool.give(b.data as Uint8Array);
          if (b.scale) pool.give(b.scale as Uint8Array);
        },
      });
    }, { kind: 'merged', overwrite: opts.overwrite, inputs: [plan.base, plan.adapter], note: opts.warn });
    sample();
    return {
      base: plan.base, adapter: plan.adapter, out: plan.out, dtype: plan.dtype, layout: plan.layout,
      tensors: plan.tensors, merged: plan.merged.length, converted: plan.converted, copied: plan.copied,
      bytesRead, bytesWritten, bytesStreamed, largestReadBytes: largestRead, peakTensorsHeld: peakHeld, peakHeldBytes, nativeTensors, shards, shardsReadDirect, directIo: direct, extraFiles: extra,
      seconds: (performance.now() - t0) / 1000, peakRssBytes: peakRss,
    };
  } finally {
    clearInterval(timer);
    await ck.close();
  }
}
