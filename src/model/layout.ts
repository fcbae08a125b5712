// Tensor names: the official release layout (what config.json implies), and the transformers
// layout mapped onto it. Checkpoint and init-model use expectedTensors() as the one list of
// what a V4 checkpoint holds.
import type { V4Config } from './config.js';

/** How a weight is stored in the official release. */
/**
 * The linears LoRA adapts by default (patterns over the module names without `layers.N.`):
 * every attention projection but the indexer's, and the shared and routed experts.
 */
export const DEFAULT_TARGETS: ReadonlyArray<string> = [
  'attn.wq_a', 'attn.wq_b', 'attn.wkv', 'attn.wo_a', 'attn.wo_b',
  'ffn.shared_experts.w1', 'ffn.shared_experts.w2', 'ffn.shared_experts.w3',
  'ffn.experts.*.w1', 'ffn.experts.*.w2', 'ffn.experts.*.w3',
];

export type StoredKind = 'fp8' | 'fp4' | 'bf16' | 'f32' | 'i64';

export interface ExpectedTensor {
  /** official name */
  name: string;
  /** logical (dequantised) shape */
  shape: number[];
  /** how the official release stores it (fp4: routed experts when expert_dtype is fp4) */
  kind: StoredKind;
  /** which part of the model it belongs to (for inspect and init scales) */
  part: ModelPart;
}

export type ModelPart = 'attention' | 'compressor+indexer' | 'routed experts' | 'shared expert' | 'router' | 'mHC' | 'norms' | 'embed+head' | 'MTP';

/** the hidden layers' prefixes, then the MTP blocks' */
export function blockPrefixes(c: V4Config): string[] {
  const out: string[] = [];
  for (let i = 0; i < c.num_hidden_layers; i++) out.push(`layers.${i}.`);
  for (let i = 0; i < c.num_nextn_predict_layers; i++) out.push(`mtp.${i}.`);
  return out;
}

/**
 * Every tensor of an official V4 checkpoint, in name order, with its logical shape and stored kind.
 * Per block (hidden layer N or MTP block): mHC, norms, attention (+ compressor when the ratio is
 * non-zero, + indexer when it is 4), the router (tid2eid on hash layers, else bias), routed and
 * shared experts; MTP blocks add e_proj/h_proj/enorm/hnorm/norm/hc_head.
 */
export function expectedTensors(c: V4Config): ExpectedTensor[] {
  const d = c.hidden_size;
  const H = c.num_attention_heads;
  const hd = c.head_dim;
  const hc = c.hc_mult;
  const I = c.moe_intermediate_size;
  const g = c.o_groups;
  const expertKind: StoredKind = c.expert_dtype === 'fp4' ? 'fp4' : c.expert_dtype === 'bf16' ? 'bf16' : 'fp8';
  const out: ExpectedTensor[] = [];
  const add = (name: string, shape: number[], kind: StoredKind, part: ModelPart): void => {
    out.push({ name, shape, kind, part });
  };
  add('embed.weight', [c.vocab_size, d], 'bf16', 'embed+head');
  add('head.weight', [c.vocab_size, d], 'bf16', 'embed+head');
  add('norm.weight', [d], 'bf16', 'norms');
  add('hc_head_fn', [hc, hc * d], 'f32', 'mHC');
  add('hc_head_base', [hc], 'f32', 'mHC');
  add('hc_head_scale', [1], 'f32', 'mHC');
  blockPrefixes(c).forEach((p, bi) => {
    const mtp = bi >= c.num_hidden_layers;
    const ratio = mtp ? c.mtp_compress_ratio : c.compress_ratios[bi]!;
    const P = (part: ModelPart): ModelPart => (mtp ? 'MTP' : part);
    const mix = (2 + hc) * hc;
    for (const s of ['attn', 'ffn']) {
      add(`${p}hc_${s}_fn`, [mix, hc * d], 'f32', P('mHC'));
      add(`${p}hc_${s}_base`, [mix], 'f32', P('mHC'));
      add(`${p}hc_${s}_scale`, [3], 'f32', P('mHC'));
    }
    add(`${p}attn_norm.weight`, [d], 'bf16', P('norms'));
    add(`${p}ffn_norm.weight`, [d], 'bf16', P('norms'));
    add(`${p}attn.wq_a.weight`, [c.q_lora_rank, d], 'fp8', P('attention'));
    add(`${p}attn.q_norm.weight`, [c.q_lora_rank], 'bf16', P('attention'));
    add(`${p}attn.wq_b.weight`, [H * hd, c.q_lora_rank], 'fp8', P('attention'));
    add(`${p}attn.wkv.weight`, [hd, d], 'fp8', P('attention'));
    add(`${p}attn.kv_norm.weight`, [hd], 'bf16', P('attention'));
    add(`${p}attn.wo_a.weight`, [g * c.o_lora_rank, (H * hd) / g], 'fp8', P('attention'));
    add(`${p}attn.wo_b.weight`, [d, g * c.o_lora_rank], 'fp8', P('attention'));
    add(`${p}attn.attn_sink`, [H], 'f32', P('attention'));
    if (ratio !== 0) {
      const co = ratio === 4 ? 2 : 1;
      const comp = (q: string, dim: number): void => {
        add(`${q}.wkv.weight`, [co * dim, d], 'bf16', P('compressor+indexer'));
        add(`${q}.wgate.weight`, [co * dim, d], 'bf16', P('compressor+indexer'));
        add(`${q}.ape`, [ratio, co * dim], 'f32', P('compressor+indexer'));
        add(`${q}.norm.weight`, [dim], 'bf16', P('compressor+indexer'));
      };
      comp(`${p}attn.compressor`, hd);
      if (ratio === 4) {
        add(`${p}attn.indexer.wq_b.weight`, [c.index_n_heads * c.index_head_dim, c.q_lora_rank], 'fp8', P('compressor+indexer'));
        add(`${p}attn.indexer.weights_proj.weight`, [c.index_n_heads, d], 'bf16', P('compressor+indexer'));
        comp(`${p}attn.indexer.compressor`, c.index_head_dim);
      }
    }
    add(`${p}ffn.gate.weight`, [c.n_routed_experts, d], 'bf16', P('router'));
    if (!mtp && bi < c.num_hash_layers) add(`${p}ffn.gate.tid2eid`, [c.vocab_size, c.num_experts_per_tok], 'i64', P('router'));
    else add(`${p}ffn.gate.bias`, [c.n_routed_experts], 'f32', P('router'));
    for (let e = 0; e < c.n_routed_experts; e++) {
      add(`${p}ffn.experts.${e}.w1.weight`, [I, d], expertKind, P('routed experts'));
      add(`${p}ffn.experts.${e}.w2.weight`, [d, I], expertKind, P('routed experts'));
      add(`${p}ffn.experts.${e}.w3.weight`, [I, d], expertKind, P('routed experts'));
    }
    if (c.n_shared_experts > 0) {
      const Is = I * c.n_shared_experts;
      add(`${p}ffn.shared_experts.w1.weight`, [Is, d], 'fp8', P('shared expert'));
      add(`${p}ffn.shared_experts.w2.weight`, [d, Is], 'fp8', P('shared expert'));
      add(`${p}ffn.shared_experts.w3.weight`, [Is, d], 'fp8', P('shared expert'));
    }
    if (mtp) {
      add(`${p}e_proj.weight`, [d, d], 'fp8', 'MTP');
      add(`${p}h_proj.weight`, [d, d], 'fp8', 'MTP');
      add(`${p}enorm.weight`, [d], 'bf16', 'MTP');
      add(`${p}hnorm.weight`, [d], 'bf16', 'MTP');
      add(`${p}norm.weight`, [d], 'bf16', 'MTP');
      add(`${p}hc_head_fn`, [hc, hc * d], 'f32', 'MTP');
      add(`${p}hc_head_base`, [hc], 'f32', 'MTP');
      add(`${p}hc_head_scale`, [1], 'f32', 'MTP');
    }
  });
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** `X.weight` -> `X.scale` (the official name of a quantised weight's scale) */
export function scaleNameOf(weightName: string): string {
  return weightName.endsWith('.weight') ? `${weightName.slice(0, -'.weight'.length)}.scale` : `${weightName}.scale`;
}

// ---------------------------------------------------------------- transformers layout
// huggingface/transformers models/deepseek_v4 (modeling_deepseek_v4.py) names the same weights
// under `model.` with its own module names, stacks the routed experts as
// `mlp.experts.gate_up_proj` [E, 2I, d] (w1 rows then w3 rows) and `mlp.experts.down_proj`
// [E, d, I] (w2), and ignores `mtp.*` (kept here under the official names). A quantised weight's
// scale is `<weight>_scale_inv` (same E8M0 bytes as the official `.scale`).

export type Layout = 'official' | 'transformers';

/** where an official tensor lives on disk */
export interface TensorSource {
  /** on-disk tensor name */
  tensor: string;
  /** on-disk scale tensor name (FP8 / FP4), or null */
  scale: string | null;
  /** for a stacked tensor [E, ...]: which expert; else null */
  expert: number | null;
  /** a row range [from, to) of the (per-expert) matrix, e.g. w1 or w3 inside gate_up_proj; else null */
  rows: [number, number] | null;
}

/** [official suffix inside a block, transformers suffix inside `model.layers.N.`] */
const BLOCK_RENAMES: ReadonlyArray<readonly [string, string]> = [
  ['attn_norm.weight', 'input_layernorm.weight'],
  ['ffn_norm.weight', 'post_attention_layernorm.weight'],
  ['hc_attn_fn', 'attn_hc.fn'],
  ['hc_attn_base', 'attn_hc.base'],
  ['hc_attn_scale', 'attn_hc.scale'],
  ['hc_ffn_fn', 'ffn_hc.fn'],
  ['hc_ffn_base', 'ffn_hc.base'],
  ['hc_ffn_scale', 'ffn_hc.scale'],
  ['attn.wq_a.weight', 'self_attn.q_a_proj.weight'],
  ['attn.q_norm.weight', 'self_attn.q_a_norm.weight'],
  ['attn.wq_b.weight', 'self_attn.q_b_proj.weight'],
  ['attn.wkv.weight', 'self_attn.kv_proj.weight'],
  ['attn.kv_norm.weight', 'self_attn.kv_norm.weight'],
  ['attn.wo_a.weight', 'self_attn.o_a_proj.weight'],
  ['attn.wo_b.weight', 'self_attn.o_b_proj.weight'],
  ['attn.attn_sink', 'self_attn.sinks'],
  ['attn.compressor.wkv.weight', 'self_attn.compressor.kv_proj.weight'],
  ['attn.compressor.wgate.weight', 'self_attn.compressor.gate_proj.weight'],
  ['attn.compressor.ape', 'self_attn.compressor.position_bias'],
  ['attn.compressor.norm.weight', 'self_attn.compressor.kv_norm.weight'],
  ['attn.indexer.compressor.wkv.weight', 'self_attn.compressor.indexer.kv_proj.weight'],
  ['attn.indexer.compressor.wgate.weight', 'self_attn.compressor.indexer.gate_proj.weight'],
  ['attn.indexer.compressor.ape', 'self_attn.compressor.indexer.position_bias'],
  ['attn.indexer.compressor.norm.weight', 'self_attn.compressor.indexer.kv_norm.weight'],
  ['attn.indexer.wq_b.weight', 'self_attn.compressor.indexer.q_b_proj.weight'],
  ['attn.indexer.weights_proj.weight', 'self_attn.compressor.indexer.weights_proj.weight'],
  ['ffn.gate.weight', 'mlp.gate.weight'],
  ['ffn.gate.bias', 'mlp.gate.e_score_correction_bias'],
  ['ffn.gate.tid2eid', 'mlp.gate.tid2eid'],
  ['ffn.shared_experts.w1.weight', 'mlp.shared_experts.gate_proj.weight'],
  ['ffn.shared_experts.w3.weight', 'mlp.shared_experts.up_proj.weight'],
  ['ffn.shared_experts.w2.weight', 'mlp.shared_experts.down_proj.weight'],
];

const TOP_RENAMES: ReadonlyArray<readonly [string, string]> = [
  ['embed.weight', 'model.embed_tokens.weight'],
  ['head.weight', 'lm_head.weight'],
  ['norm.weight', 'model.norm.weight'],
  ['hc_head_fn', 'model.hc_head.hc_fn'],
  ['hc_head_base', 'model.hc_head.hc_base'],
  ['hc_head_scale', 'model.hc_head.hc_scale'],
];

const BLOCK_TO_HF = new Map(BLOCK_RENAMES.map(([o, t]) => [o, t]));
const BLOCK_FROM_HF = new Map(BLOCK_RENAMES.map(([o, t]) => [t, o]));
const TOP_TO_HF = new Map(TOP_RENAMES.map(([o, t]) => [o, t]));
const TOP_FROM_HF = new Map(TOP_RENAMES.map(([o, t]) => [t, o]));

const EXPERT_RE = /^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$/;

/** the transformers scale name of a (transformers) weight name */
export function transformersScaleName(tensor: string): string {
  return `${tensor}_scale_inv`;
}

/**
 * The transformers location of an official name: a plain rename, or a slice of a stacked
 * expert tensor (w1 = rows [0, I) of gate_up_proj[e], w3 = rows [I, 2I), w2 = down_proj[e]).
 * Names transformers does not model (mtp.*) keep their official name.
 */
export function officialToTransformers(name: string, moeIntermediate: number): TensorSource {
  const top = TOP_TO_HF.get(name);
  if (top) return { tensor: top, scale: transformersScaleName(top), expert: null, rows: null };
  const m = EXPERT_RE.exec(name);
  if (m) {
    const [, layer, e, w] = m;
    const base = `model.layers.${layer}.mlp.experts.`;
    const tensor = w === 'w2' ? `${base}down_proj` : `${base}gate_up_proj`;
    const rows: [number, number] | null = w === 'w1' ? [0, moeIntermediate] : w === 'w3' ? [moeIntermediate, 2 * moeIntermediate] : null;
    return { tensor, scale: transformersScaleName(tensor), expert: Number(e), rows };
  }
  const lm = /^layers\.(\d+)\.(.+)$/.exec(name);
  if (lm) {
    const t = BLOCK_TO_HF.get(lm[2]!);
    if (t) {
      const tensor = `model.layers.${lm[1]}.${t}`;
      return { tensor, scale: transformersScaleName(tensor), expert: null, rows: null };
    }
  }
  return { tensor: name, scale: scaleNameOf(name), expert: null, rows: null };
}

/** transformers when the names carry the `model.` prefix or `lm_head`, else official */
export function detectLayout(names: Iterable<string>): Layout {
  for (const n of names) if (n.startsWith('model.') || n.startsWith('lm_head.')) return 'transformers';
  return 'official';
}

/** what mapTransformersLayout needs of a safetensors set */
export interface NamedShapes {
  entries: Map<string, { shape: number[] }>;
  has(name: string): boolean;
}

/** official name -> on-disk source, for a transformers-layout checkpoint */
export function mapTransformersLayout(set: NamedShapes): Map<string, TensorSource> {
  const out = new Map<string, TensorSource>();
  const scaleOrNull = (t: string): string | null => (set.has(transformersScaleName(t)) ? transformersScaleName(t) : null);
  for (const [name, e] of set.entries) {
    if (name.endsWith('_scale_inv')) continue;
    if (name.endsWith('.scale') && set.has(`${name.slice(0, -'.scale'.length)}.weight`)) continue;
    const top = TOP_FROM_HF.get(name);
    if (top) {
      out.set(top, { tensor: name, scale: scaleOrNull(name), expert: null, rows: null });
      continue;
    }
    const lm = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
    if (!lm) {
      out.set(name, { tensor: name, scale: set.has(scaleNameOf(name)) && name.endsWith('.weight') ? scaleNameOf(name) : null, expert: null, rows: null });
      continue;
    }
    const [, layer, rest] = lm;
    const scale = scaleOrNull(name);
    if (rest === 'mlp.experts.gate_up_proj' || rest === 'mlp.experts.down_proj') {
      const E = e.shape[0] ?? 0;
      const twoI = e.shape[1] ?? 0;
      for (let x = 0; x < E; x++) {
        const p = `layers.${layer}.ffn.experts.${x}.`;
        if (rest === 'mlp.experts.down_proj') out.set(`${p}w2.weight`, { tensor: name, scale, expert: x, rows: null });
        else {
          out.set(`${p}w1.weight`, { tensor: name, scale, expert: x, rows: [0, twoI / 2] });
          out.set(`${p}w3.weight`, { tensor: name, scale, expert: x, rows: [twoI / 2, twoI] });
        }
      }
      continue;
    }
    const o = BLOCK_FROM_HF.get(rest!);
    out.set(o ? `layers.${layer}.${o}` : name, { tensor: name, scale, expert: null, rows: null });
  }
  return out;
}

/**
 * The PEFT key of an official module's LoRA factor (`base_model.model.<module>.lora_A.weight`):
 * how the model names the gradients it returns and how the official adapter layout names factors.
 */
export function peftKey(module: string, which: 'A' | 'B'): string {
  return `base_model.model.${module}.lora_${which}.weight`;
}
