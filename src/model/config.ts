// DeepSeek V4 config.json: parse, check that the sizes agree with each other, fingerprint.
// Field names are exactly those of the released config.json (../shared/docs/v4-architecture.md).
import { createHash } from 'node:crypto';
import { InputError } from '../errors.js';

export interface RopeScaling {
  type: string;
  factor: number;
  original_max_position_embeddings: number;
  beta_fast: number;
  beta_slow: number;
}

export interface V4Config {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  head_dim: number;
  qk_rope_head_dim: number;
  q_lora_rank: number;
  o_groups: number;
  o_lora_rank: number;
  n_routed_experts: number;
  n_shared_experts: number;
  num_experts_per_tok: number;
  moe_intermediate_size: number;
  routed_scaling_factor: number;
  scoring_func: string;
  norm_topk_prob: boolean;
  num_hash_layers: number;
  swiglu_limit: number;
  sliding_window: number;
  /** One compression ratio per layer (0 = sliding window only, 4 = CSA + indexer, else HCA). */
  compress_ratios: number[];
  /** The entry after the layers: the MTP block's ratio (0 if absent). */
  mtp_compress_ratio: number;
  rope_theta: number;
  compress_rope_theta: number;
  rope_scaling: RopeScaling | null;
  index_n_heads: number;
  index_head_dim: number;
  index_topk: number;
  hc_mult: number;
  hc_sinkhorn_iters: number;
  /** the longest sequence the model is made for (null when config.json does not say) */
  max_position_embeddings: number | null;
  hc_eps: number;
  rms_norm_eps: number;
  num_nextn_predict_layers: number;
  bos_token_id: number;
  eos_token_id: number;
  expert_dtype: string | null;
  quantization_config: Record<string, unknown> | null;
}

/** Warnings found while parsing (sizes that work here but not in every engine). */
export interface ParsedConfig {
  config: V4Config;
  warnings: string[];
}

type Json = Record<string, unknown>;

function num(j: Json, file: string, key: string, opts: { int?: boolean; min?: number; max?: number; def?: number } = {}): number {
  const v = j[key] ?? opts.def;
  if (v === undefined) throw new InputError(`${file}: missing field ${key}`);
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new InputError(`${file}: ${key} must be a number (got ${JSON.stringify(v)})`);
  }
  if (opts.int && !Number.isInteger(v)) throw new InputError(`${file}: ${key} must be an integer (got ${v})`);
  if (opts.min !== undefined && v < opts.min) throw new InputError(`${file}: ${key} must be >= ${opts.min} (got ${v})`);
  if (opts.max !== undefined && v > opts.max) throw new InputError(`${file}: ${key} must be <= ${opts.max} (got ${v})`);
  return v;
}

const int = (j: Json, file: string, key: string, min = 0, def?: number, max = MAX_SIZE): number =>
  num(j, file, key, { int: true, min, def, max });

/** Upper bound of every size field: far above any V4 release, far below what fits in memory. */
const MAX_SIZE = 1 << 24;
/** Sinkhorn iterations per mHC call: V4 uses 20; more than this is a typo, and would hang. */
const MAX_SINKHORN_ITERS = 1000;

function parseRopeScaling(v: unknown, file: string): RopeScaling | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw new InputError(`${file}: rope_scaling must be an object or null`);
  const j = v as Json;
  const type = j.type ?? j.rope_type;
  if (typeof type !== 'string') throw new InputError(`${file}: rope_scaling.type must be a string`);
  const f = (k: string, def?: number): number => num(j, `${file}: rope_scaling`, k, { def });
  return {
    type,
    factor: f('factor'),
    original_max_position_embeddings: f('original_max_position_embeddings'),
    beta_fast: f('beta_fast', 32),
    beta_slow: f('beta_slow', 1),
  };
}

/** Parse and check a V4 config.json; also returns warnings (e.g. index_head_dim not a multiple of 64). */
export function parseConfigWithWarnings(json: unknown, file: string): ParsedConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new InputError(`${file}: config must be a JSON object`);
  }
  const j = json as Json;
  const L = int(j, file, 'num_hidden_layers', 1);
  // no default: a config without it would silently drop every compressor tensor
  if (j.compress_ratios === undefined) throw new InputError(`${file}: missing field compress_ratios (one compression ratio per layer, 0 for none)`);
  const ratiosRaw = j.compress_ratios;
  if (!Array.isArray(ratiosRaw) || ratiosRaw.some((r) => typeof r !== 'number' || !Number.isInteger(r) || r < 0 || r > MAX_SIZE)) {
    throw new InputError(`${file}: compress_ratios must be a list of non-negative integers`);
  }
  const ratios = ratiosRaw as number[];
  if (ratios.length < L) {
    throw new InputError(`${file}: compress_ratios has ${ratios.length} entries, fewer than num_hidden_layers (${L})`);
  }
  const scoring = j.scoring_func ?? 'sqrtsoftplus';
  if (typeof scoring !== 'string') throw new InputError(`${file}: scoring_func must be a string`);
  const ntp = j.norm_topk_prob ?? true;
  if (typeof ntp !== 'boolean') throw new InputError(`${file}: norm_topk_prob must be true or false`);
  const expertDtype = j.expert_dtype ?? null;
  if (expertDtype !== null && typeof expertDtype !== 'string') throw new InputError(`${file}: expert_dtype must be a string`);
  const q = j.quantization_config ?? null;
  if (q !== null && (typeof q !== 'object' || Array.isArray(q))) {
    throw new InputError(`${file}: quantization_config must be an object`);
  }
  const c: V4Config = {
    vocab_size: int(j, file, 'vocab_size', 1),
    hidden_size: int(j, file, 'hidden_size', 1),
    num_hidden_layers: L,
    num_attention_heads: int(j, file, 'num_attention_heads', 1),
    head_dim: int(j, file, 'head_dim', 1),
    qk_rope_head_dim: int(j, file, 'qk_rope_head_dim', 0),
    q_lora_rank: int(j, file, 'q_lora_rank', 1),
    o_groups: int(j, file, 'o_groups', 1),
    o_lora_rank: int(j, file, 'o_lora_rank', 1),
    n_routed_experts: int(j, file, 'n_routed_experts', 1),
    n_shared_experts: int(j, file, 'n_shared_experts', 0, 1),
    num_experts_per_tok: int(j, file, 'num_experts_per_tok', 1),
    moe_intermediate_size: int(j, file, 'moe_intermediate_size', 1),
    routed_scaling_factor: num(j, file, 'routed_scaling_factor', { def: 1 }),
    scoring_func: scoring,
    norm_topk_prob: ntp,
    num_hash_layers: int(j, file, 'num_hash_layers', 0, 0),
    swiglu_limit: num(j, file, 'swiglu_limit', { def: 0, min: 0 }),
    sliding_window: int(j, file, 'sliding_window', 1),
    compress_ratios: ratios.slice(0, L),
    mtp_compress_ratio: ratios.length > L ? ratios[L]! : 0,
    rope_theta: num(j, file, 'rope_theta', { def: 10000, min: 0 }),
    compress_rope_theta: num(j, file, 'compress_rope_theta', { def: 160000, min: 0 }),
    rope_scaling: parseRopeScaling(j.rope_scaling, file),
    index_n_heads: int(j, file, 'index_n_heads', 0, 0),
    index_head_dim: int(j, file, 'index_head_dim', 0, 0),
    index_topk: int(j, file, 'index_topk', 0, 0),
    hc_mult: int(j, file, 'hc_mult', 1, 4),
    hc_sinkhorn_iters: int(j, file, 'hc_sinkhorn_iters', 1, 20, MAX_SINKHORN_ITERS),
    hc_eps: num(j, file, 'hc_eps', { def: 1e-6, min: 0 }),
    rms_norm_eps: num(j, file, 'rms_norm_eps', { def: 1e-6, min: 0 }),
    num_nextn_predict_layers: int(j, file, 'num_nextn_predict_layers', 0, 0),
    max_position_embeddings: j.max_position_embeddings === undefined ? null : int(j, file, 'max_position_embeddings', 1),
    bos_token_id: int(j, file, 'bos_token_id', 0, 0),
    eos_token_id: int(j, file, 'eos_token_id', 0, 1),
    expert_dtype: expertDtype,
    quantization_config: q as Record<string, unknown> | null,
  };
  return { config: c, warnings: checkSizes(c, file) };
}

/** Parse and check a V4 config.json (InputError naming the file and the field). */
export function parseConfig(json: unknown, file: string): V4Config {
  return parseConfigWithWarnings(json, file).config;
}

// The sizes must agree with each other, else the weights cannot have consistent shapes.
function checkSizes(c: V4Config, file: string): string[] {
  const bad = (msg: string): never => {
    throw new InputError(`${file}: ${msg}`);
  };
  if (c.qk_rope_head_dim > c.head_dim) bad(`qk_rope_head_dim (${c.qk_rope_head_dim}) exceeds head_dim (${c.head_dim})`);
  if (c.qk_rope_head_dim % 2 !== 0) bad(`qk_rope_head_dim must be even (got ${c.qk_rope_head_dim})`);
  if (c.num_attention_heads % c.o_groups !== 0) {
    bad(`o_groups (${c.o_groups}) must divide num_attention_heads (${c.num_attention_heads})`);
  }
  if (c.num_experts_per_tok > c.n_routed_experts) {
    bad(`num_experts_per_tok (${c.num_experts_per_tok}) exceeds n_routed_experts (${c.n_routed_experts})`);
  }
  if (c.num_hash_layers > c.num_hidden_layers) {
    bad(`num_hash_layers (${c.num_hash_layers}) exceeds num_hidden_layers (${c.num_hidden_layers})`);
  }
  if (c.bos_token_id >= c.vocab_size) bad(`bos_token_id (${c.bos_token_id}) is not below vocab_size (${c.vocab_size})`);
  if (c.eos_token_id >= c.vocab_size) bad(`eos_token_id (${c.eos_token_id}) is not below vocab_size (${c.vocab_size})`);
  const all = [...c.compress_ratios, c.mtp_compress_ratio];
  if (all.includes(4)) {
    if (c.index_n_heads < 1 || c.index_head_dim < 1 || c.index_topk < 1) {
      bad('ratio-4 layers need index_n_heads, index_head_dim and index_topk >= 1');
    }
    if (c.qk_rope_head_dim > c.index_head_dim) {
      bad(`qk_rope_head_dim (${c.qk_rope_head_dim}) exceeds index_head_dim (${c.index_head_dim})`);
    }
  }
  if (c.expert_dtype === 'fp4' && c.hidden_size % 32 !== 0) bad(`hidden_size (${c.hidden_size}) must be a multiple of 32 for FP4 experts`);
  if (c.expert_dtype === 'fp4' && c.moe_intermediate_size % 32 !== 0) {
    bad(`moe_intermediate_size (${c.moe_intermediate_size}) must be a multiple of 32 for FP4 experts`);
  }
  if (c.scoring_func !== 'sqrtsoftplus' && c.scoring_func !== 'softmax' && c.scoring_func !== 'sigmoid') {
    bad(`scoring_func "${c.scoring_func}" is not one of sqrtsoftplus, softmax, sigmoid`);
  }
  if (c.expert_dtype !== null && c.expert_dtype !== 'fp4' && c.expert_dtype !== 'fp8' && c.expert_dtype !== 'bf16') {
    bad(`expert_dtype "${c.expert_dtype}" is not one of fp4, fp8, bf16`);
  }
  const warnings: string[] = [];
  if (all.includes(4) && c.index_head_dim % 64 !== 0) {
    warnings.push(`${file}: index_head_dim ${c.index_head_dim} is not a multiple of 64; llama.cpp's deepseek4 graph needs one`);
  }
  return warnings;
}

/** The fields that fix the shapes and the math: an adapter trained on one base fits another iff these agree. */
const ARCH_FIELDS: ReadonlyArray<keyof V4Config> = [
  'vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'head_dim', 'qk_rope_head_dim',
  'q_lora_rank', 'o_groups', 'o_lora_rank', 'n_routed_experts', 'n_shared_experts', 'num_experts_per_tok',
  'moe_intermediate_size', 'num_hash_layers', 'compress_ratios', 'mtp_compress_ratio', 'index_n_heads',
  'index_head_dim', 'hc_mult', 'num_nextn_predict_layers',
];

/** sha256 (first 16 hex digits) of the architecture fields, in a fixed order: stable across runs and key order. */
export function configFingerprint(c: V4Config): string {
  const parts = ARCH_FIELDS.map((k) => [k, c[k]]);
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16);
}
