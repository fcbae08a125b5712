// Random but well-conditioned DeepSeek V4 checkpoints in the official layout as shipped:
// `tiny` (every feature, fast enough for tests), `small` (for benchmarks) and `flash` (V4-Flash's
// exact widths, with the layer and routed-expert counts as options). The same preset, options,
// seed and format give byte-identical files (seeded PRNG per tensor, no dates in files).
import { existsSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { writeEmbeddedTokenizer } from '../data/embedded-tokenizer.js';
import { InputError } from '../errors.js';
import { writeDirAtomic } from '../fsutil.js';
import { encodeNative } from '../backend/native/requant.js';
import { tensorRng } from '../random.js';
import { BufferPool } from './buffer-pool.js';
import { writeCheckpointFiles, type TensorBytes, type TensorPlan } from './checkpoint.js';
import { parseConfig, type V4Config } from './config.js';
import { configJsonText } from './config-json.js';
import { f32ToBf16Bytes, f32ToBytes, FP4_GROUP, FP8_BLOCK, quantFp4, quantFp8Block } from './formats.js';
import { expectedTensors, type ExpectedTensor, type Layout } from './layout.js';
import { DTYPE_BYTES, type Dtype } from './safetensors.js';

export type Preset = 'tiny' | 'small' | 'flash';
export type InitFormat = 'fp8' | 'bf16';

const COMMON = {
  architectures: ['DeepseekV4ForCausalLM'],
  model_type: 'deepseek_v4',
  vocab_size: 129280,
  num_key_value_heads: 1,
  n_shared_experts: 1,
  routed_scaling_factor: 1.5,
  scoring_func: 'sqrtsoftplus',
  topk_method: 'noaux_tc',
  norm_topk_prob: true,
  num_hash_layers: 1,
  compress_rope_theta: 160000,
  rope_theta: 10000,
  rope_scaling: { type: 'yarn', factor: 16, original_max_position_embeddings: 65536, beta_fast: 32, beta_slow: 1 },
  hc_mult: 4,
  hc_sinkhorn_iters: 20,
  hc_eps: 1e-6,
  rms_norm_eps: 1e-6,
  num_nextn_predict_layers: 1,
  bos_token_id: 0,
  eos_token_id: 1,
  tie_word_embeddings: false,
  hidden_act: 'silu',
  torch_dtype: 'bfloat16',
};

/**
 * The presets' config.json fields. tiny: a sliding-only layer, ratio-4 layers with the indexer,
 * a ratio-128 layer, one hash layer then scored routing, MTP; hidden 64. small: hidden 512, 6
 * layers, 16 experts, head_dim 128, for benchmarks. flash: V4-Flash's widths (hidden 4096, 64
 * heads × 512, q_lora 1024, 8 output groups × 1024, experts 2048 wide top-6, indexer 64 × 128
 * top-512, window 128), sized by PresetOptions. All: the real vocabulary (129280) and an
 * index_head_dim that is a multiple of 64.
 */
export const PRESETS: Readonly<Record<Preset, Record<string, unknown>>> = {
  tiny: {
    ...COMMON,
    hidden_size: 64,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    head_dim: 64,
    qk_rope_head_dim: 16,
    q_lora_rank: 32,
    o_groups: 2,
    o_lora_rank: 32,
    n_routed_experts: 8,
    num_experts_per_tok: 2,
    moe_intermediate_size: 32,
    swiglu_limit: 1.5,
    sliding_window: 16,
    compress_ratios: [0, 4, 128, 4, 0],
    index_n_heads: 2,
    index_head_dim: 64,
    index_topk: 4,
    max_position_embeddings: 4096,
  },
  small: {
    ...COMMON,
    hidden_size: 512,
    num_hidden_layers: 6,
    num_attention_heads: 8,
    head_dim: 128,
    qk_rope_head_dim: 64,
    q_lora_rank: 256,
    o_groups: 4,
    o_lora_rank: 128,
    n_routed_experts: 16,
    num_experts_per_tok: 4,
    moe_intermediate_size: 256,
    swiglu_limit: 10,
    sliding_window: 128,
    compress_ratios: [0, 4, 128, 4, 128, 4, 0],
    index_n_heads: 4,
    index_head_dim: 64,
    index_topk: 16,
    max_position_embeddings: 65536,
  },
  flash: {
    ...COMMON,
    hidden_size: 4096,
    num_hidden_layers: 2,
    num_attention_heads: 64,
    head_dim: 512,
    qk_rope_head_dim: 64,
    q_lora_rank: 1024,
    o_groups: 8,
    o_lora_rank: 1024,
    n_routed_experts: 32,
    num_experts_per_tok: 6,
    moe_intermediate_size: 2048,
    num_hash_layers: 1,
    swiglu_limit: 10,
    sliding_window: 128,
    compress_ratios: [4, 128, 0],
    index_n_heads: 64,
    index_head_dim: 128,
    index_topk: 512,
    max_position_embeddings: 1048576,
  },
};

/** The layer and routed-expert counts of a `flash` preset (the other presets have fixed sizes). */
export interface PresetOptions {
  /** layers (1–43; default 2): ratio 4 (CSA with the indexer) on even layers, 128 (HCA) on odd ones */
  layers?: number;
  /** routed experts (6–256; default 32), 6 of them per token */
  experts?: number;
}

/** V4-Flash's real counts, the upper bounds of the flash preset's options. */
export const FLASH_MAX = { layers: 43, experts: 256 } as const;

/**
 * The flash preset's config fields for its options: layers alternate ratio 4 and 128 (the MTP
 * block's entry is 0), the first min(3, layers − 1) layers are hash-routed (V4-Flash: 3), so
 * every count keeps at least one scored layer.
 */
function flashSizes(opts: PresetOptions): Record<string, unknown> {
  const layers = opts.layers ?? 2;
  const experts = opts.experts ?? 32;
  if (!Number.isInteger(layers) || layers < 1 || layers > FLASH_MAX.layers) {
    throw new InputError(`flash preset: layers must be an integer in 1..${FLASH_MAX.layers} (got ${layers})`);
  }
  if (!Number.isInteger(experts) || experts < 6 || experts > FLASH_MAX.experts) {
    throw new InputError(`flash preset: experts must be an integer in 6..${FLASH_MAX.experts} (got ${experts})`);
  }
  return {
    num_hidden_layers: layers,
    n_routed_experts: experts,
    num_hash_layers: Math.min(3, layers - 1),
    compress_ratios: [...Array.from({ length: layers }, (_, i) => (i % 2 === 0 ? 4 : 128)), 0],
  };
}

/**
 * config.json of a preset in a format: fp8 (FP8 attention/shared expert, FP4 routed experts) or
 * bf16; `opts` sizes the flash preset (the other presets refuse them).
 */
export function presetConfigJson(preset: Preset, format: InitFormat, opts: PresetOptions = {}): Record<string, unknown> {
  const fixed = PRESETS[preset];
  if (!fixed) throw new InputError(`--preset: unknown preset "${String(preset)}" (tiny, small or flash)`);
  if (preset !== 'flash' && (opts.layers !== undefined || opts.experts !== undefined)) {
    throw new InputError(`preset ${preset}: layers and experts are options of the flash preset only`);
  }
  const base = preset === 'flash' ? { ...fixed, ...flashSizes(opts) } : fixed;
  if (format === 'bf16') return { ...base };
  return {
    ...base,
    expert_dtype: 'fp4',
    quantization_config: { activation_scheme: 'dynamic', fmt: 'e4m3', quant_method: 'fp8', scale_fmt: 'ue8m0', weight_block_size: [FP8_BLOCK, FP8_BLOCK] },
  };
}

// standard normals by Box-Muller
function fillNormal(out: Float32Array, rng: () => number, mean: number, std: number): void {
  for (let i = 0; i < out.length; i += 2) {
    const u1 = 1 - rng();
    const u2 = rng();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = mean + std * r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < out.length) out[i + 1] = mean + std * r * Math.sin(2 * Math.PI * u2);
  }
}

/**
 * The f32 values of one tensor. Scales keep a forward pass well-conditioned (as in the reference
 * fixture): linear weights N(0, 1/fan_in), embeddings N(0, 1), norms 1 ± small, mHC fn
 * N(0, 1/(hc·d)) with base N(0, 0.5²) and scale in [0.5, 0.8], sinks N(0, 0.3²), ape N(0, 0.5²),
 * router bias N(0, 0.15²).
 */
export function initValues(t: ExpectedTensor, seed: number, into?: Float32Array): Float32Array {
  const rng = tensorRng(seed, t.name);
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (into && into.length !== n) throw new Error(`initValues: ${t.name} has ${n} values, the buffer ${into.length}`);
  const out = into ?? new Float32Array(n); // every element is written below
  const name = t.name;
  const last = name.slice(name.lastIndexOf('.') + 1);
  if (name.endsWith('_scale')) {
    for (let i = 0; i < n; i++) out[i] = 0.5 + 0.3 * rng();
  } else if (name.endsWith('_base')) {
    fillNormal(out, rng, 0, 0.5);
  } else if (name.endsWith('_fn')) {
    fillNormal(out, rng, 0, 1 / Math.sqrt(t.shape[1]!));
  } else if (name.endsWith('norm.weight')) {
    fillNormal(out, rng, 1, 0.05);
  } else if (last === 'attn_sink') {
    fillNormal(out, rng, 0, 0.3);
  } else if (last === 'ape') {
    fillNormal(out, rng, 0, 0.5);
  } else if (last === 'bias') {
    fillNormal(out, rng, 0, 0.15);
  } else if (name === 'embed.weight') {
    fillNormal(out, rng, 0, 1);
  } else {
    fillNormal(out, rng, 0, 1 / Math.sqrt(t.shape[t.shape.length - 1]!));
  }
  return out;
}

/** tid2eid: for each token, num_experts_per_tok distinct experts (as I64 bytes) */
function initTid2eid(t: ExpectedTensor, experts: number, seed: number): Uint8Array {
  const rng = tensorRng(seed, t.name);
  const [vocab, k] = t.shape as [number, number];
  const out = new BigInt64Array(vocab * k);
  const perm = new Int32Array(experts);
  for (let v = 0; v < vocab; v++) {
    for (let e = 0; e < experts; e++) perm[e] = e;
    for (let j = 0; j < k; j++) {
      const r = j + Math.floor(rng() * (experts - j));
      const tmp = perm[j]!;
      perm[j] = perm[r]!;
      perm[r] = tmp;
      out[v * k + j] = BigInt(perm[j]!);
    }
  }
  return new Uint8Array(out.buffer);
}

// ---------------------------------------------------------------- stored forms

/** the stored dtype/shape of an expected tensor in a format */
export function storedPlan(t: ExpectedTensor, format: InitFormat): TensorPlan {
  const [rows, cols] = [t.shape[0]!, t.shape[t.shape.length - 1]!];
  const kind = format === 'bf16' && (t.kind === 'fp8' || t.kind === 'fp4') ? 'bf16' : t.kind;
  switch (kind) {
    case 'fp8':
      return { name: t.name, dtype: 'F8_E4M3', shape: t.shape, scaleShape: [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)] };
    case 'fp4':
      return { name: t.name, dtype: 'I8', shape: [rows, cols / 2], scaleShape: [rows, cols / FP4_GROUP] };
    case 'bf16':
      return { name: t.name, dtype: 'BF16', shape: t.shape, scaleShape: null };
    case 'f32':
      return { name: t.name, dtype: 'F32', shape: t.shape, scaleShape: null };
    case 'i64':
      return { name: t.name, dtype: 'I64' as Dtype, shape: t.shape, scaleShape: null };
  }
}

/** the stored bytes of one tensor of a random checkpoint */
export function initTensorBytes(t: ExpectedTensor, plan: TensorPlan, c: V4Config, seed: number): TensorBytes {
  if (plan.dtype === 'I64') return { data: initTid2eid(t, c.n_routed_experts, seed), scale: null };
  return encodeValues(initValues(t, seed), t, plan);
}

// a tensor's f32 values in its stored form (formats.ts)
function encodeValues(x: Float32Array, t: ExpectedTensor, plan: TensorPlan): TensorBytes {
  const [rows, cols] = [t.shape[0]!, t.shape[t.shape.length - 1]!];
  switch (plan.dtype) {
    case 'F8_E4M3': {
      const q = quantFp8Block(x, rows, cols);
      return { data: q.weight, scale: q.scale };
    }
    case 'I8': {
      const q = quantFp4(x, rows, cols);
      return { data: q.weight, scale: q.scale };
    }
    case 'BF16':
      return { data: f32ToBf16Bytes(x), scale: null };
    default:
      return { data: f32ToBytes(x), scale: null };
  }
}

const NATIVE_ENCODING: Partial<Record<string, 'fp8' | 'fp4' | 'bf16'>> = { F8_E4M3: 'fp8', I8: 'fp4', BF16: 'bf16' };

/** init-worker.ts's messages, main → worker: the tensor, the seed, and a buffer of exactly its element count */
export interface ValuesRequest { t: ExpectedTensor; seed: number; buf: ArrayBuffer }
/** worker → main: the buffer back, filled, or why not */
export type ValuesReply = { buf: ArrayBuffer } | { error: string };

const VALUES_WORKER = fileURLToPath(new URL('./init-worker.js', import.meta.url));

/**
 * Worker threads that draw tensors' values (init-worker.ts), one tensor a worker at a time; only
 * where the package runs as compiled JavaScript (the worker file is there).
 */
export class ValueWorkers {
  private readonly all: Worker[];
  private readonly idle: Worker[];
  private readonly waiting: Array<{ resolve: (w: Worker) => void; reject: (e: Error) => void }> = [];
  /** set once a worker stops or fails: every call after it, and every waiting one, rejects */
  private broken: Error | null = null;
  static available(): boolean {
    return import.meta.url.endsWith('.js') && existsSync(VALUES_WORKER);
  }
  constructor(n: number) {
    this.all = Array.from({ length: n }, () => new Worker(VALUES_WORKER));
    this.idle = [...this.all];
  }
  private break(e: Error): void {
    this.broken ??= e;
    for (const w of this.waiting.splice(0)) w.reject(this.broken);
  }
  /** t's values drawn into `into` (a whole buffer, handed over to the worker meanwhile); the filled array */
  async values(t: ExpectedTensor, seed: number, into: Float32Array): Promise<Float32Array> {
    if (into.byteOffset !== 0 || into.byteLength !== into.buffer.byteLength) throw new Error('ValueWorkers: the buffer must be a whole ArrayBuffer');
    if (this.broken) throw this.broken;
    const w = this.idle.pop() ?? (await new Promise<Worker>((resolve, reject) => this.waiting.push({ resolve, reject })));
    let failed = false;
    try {
      return await new Promise<Float32Array>((resolve, reject) => {
        const done = (): void => {
          w.off('message', onMessage);
          w.off('error', onError);
          w.off('exit', onExit);
        };
        const onMessage = (m: ValuesReply): void => {
          done();
          if ('error' in m) reject(new Error(`init-model: drawing ${t.name}: ${m.error}`));
          else resolve(new Float32Array(m.buf));
        };
        // a worker that fails or stops (terminated, out of memory) never answers: its tensor fails
        const onError = (e: Error): void => {
          done();
          failed = true;
          reject(new Error(`init-model: drawing ${t.name}: the worker failed: ${e.message}`));
        };
        const onExit = (code: number): void => {
          done();
          failed = true;
          reject(new Error(`init-model: drawing ${t.name}: the worker stopped (exit code ${code})`));
        };
        w.on('message', onMessage);
        w.on('error', onError);
        w.on('exit', onExit);
        w.postMessage({ t, seed, buf: into.buffer as ArrayBuffer } satisfies ValuesRequest, [into.buffer as ArrayBuffer]);
      });
    } catch (e) {
      if (failed) this.break(e as Error);
      throw e;
    } finally {
      if (!failed) {
        const next = this.waiting.shift();
        if (next) next.resolve(w);
        else this.idle.push(w);
      }
    }
  }
  async close(): Promise<void> {
    this.break(new Error('init-model: the value workers were closed'));
    await Promise.all(this.all.map((w) => w.terminate()));
  }
}

/**
 * initTensorBytes' bytes, encoded on the native addon where it is built (the same encoders,
 * kernels/cpu/requant.cpp, on the kernel threads): at the flash preset's widths the TypeScript
 * encoders took half of init-model's time. `buffers` lends the float32 values' buffer (given
 * back once the encoded bytes, which never share it, are made); `workers` draw the values.
 */
export async function initTensorBytesFast(t: ExpectedTensor, plan: TensorPlan, c: V4Config, seed: number, buffers?: BufferPool<Float32Array>, workers?: ValueWorkers): Promise<TensorBytes> {
  const fmt = NATIVE_ENCODING[plan.dtype];
  if (!fmt) return initTensorBytes(t, plan, c, seed);
  const n = t.shape.reduce((a, b) => a * b, 1);
  const into = buffers?.take(n) ?? new Float32Array(n);
  const x = workers ? await workers.values(t, seed, into) : initValues(t, seed, into);
  const bytes = (await encodeNative(x, t.shape[0]!, t.shape[t.shape.length - 1]!, fmt)) ?? encodeValues(x, t, plan);
  buffers?.give(x);
  return bytes;
}

export interface InitOptions extends PresetOptions {
  preset: Preset;
  out: string;
  seed?: number;
  format?: InitFormat;
  /** shard size limit (default: 16 MiB for tiny, 256 MiB for small, 2 GiB for flash), so the output is sharded like a release */
  maxShardBytes?: number;
  /** official (default, as shipped) or transformers names */
  layout?: Layout;
  /** write tokenizer.json + tokenizer_config.json (default true) */
  tokenizer?: boolean;
  /**
   * Tests only: a smaller vocab_size (embedding and head rows) at the preset's widths, so a
   * full-width checkpoint is written in seconds; needs tokenizer: false (the embedded tokenizer
   * has 129280 ids). Not a recipe or CLI option.
   */
  vocabSize?: number;
  onTensor?: (done: number, total: number) => void;
  /** replace an output folder v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  /**
   * threads drawing the values: 0 (default) one a core (at most 8) where the checkpoint has over
   * WORKER_MIN_VALUES of them and the package runs compiled, else this thread; 1 this thread.
   * The bytes are the same either way.
   */
  workers?: number;
}

/** below this many values init-model draws them on its own thread (starting workers costs more) */
export const WORKER_MIN_VALUES = 64 << 20;
/** the most workers the default starts (each loads the package; the writes and encoding stay on one thread) */
const MAX_WORKERS = 8;
/** bytes of tensors (values and encoded bytes) produced at once when workers draw them */
const WORKER_BUDGET_BYTES = 2 ** 31;

export interface InitSummary {
  out: string;
  preset: Preset;
  format: InitFormat;
  seed: number;
  tensors: number;
  shards: string[];
}

/** Write a random V4 checkpoint folder atomically (config.json, shards + index, tokenizer files). */
export async function initModel(opts: InitOptions): Promise<InitSummary> {
  const format = opts.format ?? 'fp8';
  if (format !== 'fp8' && format !== 'bf16') throw new InputError(`--format: must be fp8 or bf16 (got "${String(format)}")`);
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new InputError(`--seed: must be an integer in 0..4294967295 (got ${seed})`);
  const cfgJson = presetConfigJson(opts.preset, format, { layers: opts.layers, experts: opts.experts });
  if (opts.vocabSize !== undefined) {
    if (opts.tokenizer !== false) throw new InputError('initModel: vocabSize needs tokenizer: false (the embedded tokenizer has 129280 ids)');
    cfgJson.vocab_size = opts.vocabSize;
  }
  const config = parseConfig(cfgJson, `preset ${opts.preset}`);
  const expected = expectedTensors(config);
  const byName = new Map(expected.map((t) => [t.name, t]));
  const plans = expected.map((t) => storedPlan(t, format));
  const planByName = new Map(plans.map((p) => [p.name, p]));
  const maxShardBytes = opts.maxShardBytes ?? ({ tiny: 16, small: 256, flash: 2048 } as const)[opts.preset] * 1024 * 1024;
  const workersWanted = opts.workers ?? 0;
  if (!Number.isInteger(workersWanted) || workersWanted < 0) throw new InputError(`initModel: workers must be an integer ≥ 0 (got ${workersWanted})`);
  const values = expected.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
  const threads = workersWanted === 0 ? (values > WORKER_MIN_VALUES ? Math.min(availableParallelism(), MAX_WORKERS) : 1) : workersWanted;
  const workers = threads > 1 && ValueWorkers.available() ? new ValueWorkers(threads) : null;
  // the bytes a tensor holds while made: its values (float32) and its stored bytes
  const held = (name: string): number => {
    const p = planByName.get(name)!;
    return 4 * byName.get(name)!.shape.reduce((a, b) => a * b, 1) + p.shape.reduce((a, b) => a * b, 1) * (DTYPE_BYTES[p.dtype] ?? 1) + (p.scaleShape ? p.scaleShape.reduce((a, b) => a * b, 1) : 0);
  };
  let done = 0;
  // the routed experts' tensors come in a few shapes; faulting in a fresh buffer's pages took a
  // third of the time of drawing its values
  const buffers = new BufferPool<Float32Array>((n) => new Float32Array(n), 1 << 30);
  try {
    const shards = await writeDirAtomic(opts.out, async (tmp) => {
      writeFileSync(join(tmp, 'config.json'), configJsonText(cfgJson));
      if (opts.tokenizer ?? true) writeEmbeddedTokenizer(tmp);
      return writeCheckpointFiles(tmp, plans, async (name) => {
        opts.onTensor?.(++done, plans.length);
        await new Promise<void>((resolve) => setImmediate(resolve)); // keep the event loop (Ctrl-C, progress) responsive
        return initTensorBytesFast(byName.get(name)!, planByName.get(name)!, config, seed, buffers, workers ?? undefined);
      }, {
        maxShardBytes, layout: opts.layout,
        // with workers: one tensor a worker at a time, within the byte budget (one at least), each written when made
        ...(workers ? { aheadBytes: { budget: WORKER_BUDGET_BYTES, heldBytes: held, concurrency: threads } } : {}),
      });
    }, { kind: 'model', overwrite: opts.overwrite });
    return { out: opts.out, preset: opts.preset, format, seed, tensors: plans.length, shards };
  } finally {
    await workers?.close();
  }
}
