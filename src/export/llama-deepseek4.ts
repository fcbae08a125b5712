// llama.cpp's `deepseek4` architecture as its loader reads it: tensor names, the hyperparameter
// keys and their GGUF value types, and the embedded vocabulary. Written from llama.cpp's
// src/models/deepseek4.cpp (load_arch_hparams, load_arch_tensors), src/llama-arch.cpp (key and
// tensor names), src/llama-model.cpp (the generic keys) and what convert_hf_to_gguf.py
// (conversion/deepseek.py DeepseekV4Model, base.py get_vocab_base, gguf-py SpecialVocab) writes
// for a DeepSeek V4 folder. Checked against the llama.cpp inside node-llama-cpp 3.22.1 by the
// interop tests (test/interop/gguf-llama.test.ts).
//
// The MTP block: like `convert_hf_to_gguf.py --mtp`, a separate file whose block_count counts the
// trunk layers plus the nextn layer, with only the embedding, the final norm and the head of the
// trunk, the MTP block as layer `blk.{L}` (`nextn.eh_proj` = [e_proj | h_proj] along the input,
// `nextn.enorm`, `nextn.hnorm`, `nextn.shared_head_norm` = mtp.0.norm) and the MTP block's own
// hc_head as the file's `output_hc_*` (llama.cpp's MTP graph reads the root hc_head). The main
// file holds the trunk, as the converter's default output does.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError, V4tuneError } from '../errors.js';
import { readJsonFile } from '../fsutil.js';
import type { V4Config } from '../model/config.js';
import { GgufType, type GgufKv } from './gguf.js';

export const ARCH = 'deepseek4';

/** llama.cpp `deepseek4` names of per-layer tensors (official suffix → GGUF suffix) */
const LAYER_NAMES: Readonly<Record<string, string>> = {
  'attn_norm.weight': 'attn_norm.weight',
  'ffn_norm.weight': 'ffn_norm.weight',
  hc_attn_fn: 'hc_attn_fn.weight',
  hc_attn_base: 'hc_attn_base.weight',
  hc_attn_scale: 'hc_attn_scale.weight',
  hc_ffn_fn: 'hc_ffn_fn.weight',
  hc_ffn_base: 'hc_ffn_base.weight',
  hc_ffn_scale: 'hc_ffn_scale.weight',
  'attn.attn_sink': 'attn_sinks.weight',
  'attn.wq_a.weight': 'attn_q_a.weight',
  'attn.q_norm.weight': 'attn_q_a_norm.weight',
  'attn.wq_b.weight': 'attn_q_b.weight',
  'attn.wkv.weight': 'attn_kv.weight',
  'attn.kv_norm.weight': 'attn_kv_a_norm.weight',
  'attn.wo_a.weight': 'attn_output_a.weight',
  'attn.wo_b.weight': 'attn_output_b.weight',
  'attn.compressor.wkv.weight': 'attn_compressor_kv.weight',
  'attn.compressor.wgate.weight': 'attn_compressor_gate.weight',
  'attn.compressor.ape': 'attn_compressor_ape.weight',
  'attn.compressor.norm.weight': 'attn_compressor_norm.weight',
  'attn.indexer.wq_b.weight': 'indexer.attn_q_b.weight',
  'attn.indexer.weights_proj.weight': 'indexer.proj.weight',
  'attn.indexer.compressor.wkv.weight': 'indexer_compressor_kv.weight',
  'attn.indexer.compressor.wgate.weight': 'indexer_compressor_gate.weight',
  'attn.indexer.compressor.ape': 'indexer_compressor_ape.weight',
  'attn.indexer.compressor.norm.weight': 'indexer_compressor_norm.weight',
  'ffn.gate.weight': 'ffn_gate_inp.weight',
  'ffn.gate.bias': 'exp_probs_b.bias',
  'ffn.gate.tid2eid': 'ffn_gate_tid2eid.weight',
  'ffn.shared_experts.w1.weight': 'ffn_gate_shexp.weight',
  'ffn.shared_experts.w2.weight': 'ffn_down_shexp.weight',
  'ffn.shared_experts.w3.weight': 'ffn_up_shexp.weight',
};
/** the MTP block's own tensors (official suffix inside `mtp.0.` → nextn name inside `blk.{L}.`) */
const NEXTN_NAMES: Readonly<Record<string, string>> = {
  'enorm.weight': 'nextn.enorm.weight',
  'hnorm.weight': 'nextn.hnorm.weight',
  'norm.weight': 'nextn.shared_head_norm.weight',
};
const TOP_NAMES: Readonly<Record<string, string>> = {
  'embed.weight': 'token_embd.weight',
  'head.weight': 'output.weight',
  'norm.weight': 'output_norm.weight',
  hc_head_fn: 'output_hc_fn.weight',
  hc_head_base: 'output_hc_base.weight',
  hc_head_scale: 'output_hc_scale.weight',
};
const EXPERT_NAMES: Readonly<Record<string, string>> = { w1: 'ffn_gate_exps.weight', w2: 'ffn_down_exps.weight', w3: 'ffn_up_exps.weight' };

/** the eh_proj of the nextn layer is made of these two (concatenated along the input: e first) */
export const MTP_EH_PARTS = ['e_proj.weight', 'h_proj.weight'] as const;

/** which GGUF file a tensor goes to: the trunk (main) file or the MTP file */
export type GgufPart = 'main' | 'mtp';

/**
 * The GGUF name of an official tensor in one of the two files, or null when that file does not
 * hold it. main: the trunk. mtp: embed, norm and head of the trunk, the MTP block as `blk.{L}`
 * (its hc_head as the root `output_hc_*`; e_proj / h_proj map to `blk.{L}.nextn.eh_proj.weight`).
 */
export function ggufName(name: string, part: GgufPart = 'main', numLayers = 0): string | null {
  const top = TOP_NAMES[name];
  if (top) {
    if (part === 'main') return top;
    return name.startsWith('hc_head_') ? null : top;
  }
  const m = /^(layers|mtp)\.(\d+)\.(.+)$/.exec(name);
  if (!m) throw new V4tuneError(`GGUF export: no llama.cpp deepseek4 name for tensor ${name}`);
  const [, kind, idx, rest] = m as unknown as [string, string, string, string];
  if (kind === 'layers') {
    if (part !== 'main') return null;
    return `blk.${idx}.${layerSuffix(rest, name)}`;
  }
  if (part !== 'mtp' || idx !== '0') return null;
  const blk = `blk.${numLayers}`;
  if (rest.startsWith('hc_head_')) return TOP_NAMES[rest]!;
  if (NEXTN_NAMES[rest]) return `${blk}.${NEXTN_NAMES[rest]}`;
  if ((MTP_EH_PARTS as readonly string[]).includes(rest)) return `${blk}.nextn.eh_proj.weight`;
  return `${blk}.${layerSuffix(rest, name)}`;
}

function layerSuffix(rest: string, name: string): string {
  const e = /^ffn\.experts\.\d+\.(w[123])\.weight$/.exec(rest);
  if (e) return EXPERT_NAMES[e[1]!]!;
  const s = LAYER_NAMES[rest];
  if (!s) throw new V4tuneError(`GGUF export: no llama.cpp deepseek4 name for tensor ${name}`);
  return s;
}

/** llama_expert_gating_func_type LLAMA_EXPERT_GATING_FUNC_TYPE_SQRT_SOFTPLUS (llama-hparams.h) */
export const GATING_SQRT_SOFTPLUS = 4;

export interface Deepseek4MetadataOptions {
  /** general.name */
  name: string;
  /** general.file_type (llama_ftype) */
  fileType: number;
  /** which file: the trunk, or the MTP draft (block_count + 1, nextn_predict_layers 1) */
  part: GgufPart;
  /** config.json's max_position_embeddings, when it has one (the converter's context_length) */
  maxPositionEmbeddings?: number;
}

/** the `deepseek4.*` hyperparameters and general.* metadata, with the value types llama.cpp's loader accepts */
export function deepseek4Metadata(c: V4Config, o: Deepseek4MetadataOptions): GgufKv[] {
  if (c.scoring_func !== 'sqrtsoftplus') throw new InputError(`GGUF export: llama.cpp's deepseek4 runs scoring_func sqrtsoftplus only (config.json has ${c.scoring_func})`);
  const blocks = c.num_hidden_layers + (o.part === 'mtp' ? 1 : 0);
  const k = (key: string): string => `${ARCH}.${key}`;
  const u32 = (key: string, v: number): GgufKv => ({ key: k(key), type: GgufType.UINT32, value: v });
  const f32 = (key: string, v: number): GgufKv => ({ key: k(key), type: GgufType.FLOAT32, value: v });
  const f32s = (key: string, v: number[]): GgufKv => ({ key: k(key), type: GgufType.ARRAY, itemType: GgufType.FLOAT32, value: v });
  const ratios = c.num_nextn_predict_layers > 0 ? [...c.compress_ratios, c.mtp_compress_ratio] : [...c.compress_ratios];
  const ctx = o.maxPositionEmbeddings ?? (c.rope_scaling ? c.rope_scaling.original_max_position_embeddings * c.rope_scaling.factor : 4096);
  const kv: GgufKv[] = [
    { key: 'general.architecture', type: GgufType.STRING, value: ARCH },
    { key: 'general.name', type: GgufType.STRING, value: o.name },
    { key: 'general.file_type', type: GgufType.UINT32, value: o.fileType },
    { key: 'general.quantization_version', type: GgufType.UINT32, value: 2 },
    { key: 'general.alignment', type: GgufType.UINT32, value: 32 },
    u32('block_count', blocks),
    u32('context_length', ctx),
    u32('embedding_length', c.hidden_size),
    u32('embedding_length_out', c.hidden_size * c.hc_mult),
    u32('vocab_size', c.vocab_size),
    u32('attention.head_count', c.num_attention_heads),
    u32('attention.head_count_kv', 1),
    u32('attention.key_length', c.head_dim),
    u32('attention.value_length', c.head_dim),
    f32('attention.layer_norm_rms_epsilon', c.rms_norm_eps),
    u32('attention.q_lora_rank', c.q_lora_rank),
    u32('attention.sliding_window', c.sliding_window),
    u32('attention.output_group_count', c.o_groups),
    u32('attention.output_lora_rank', c.o_lora_rank),
    { key: k('attention.compress_ratios'), type: GgufType.ARRAY, itemType: GgufType.UINT32, value: ratios },
    f32('attention.compress_rope_freq_base', c.compress_rope_theta),
    u32('attention.indexer.head_count', c.index_n_heads),
    u32('attention.indexer.key_length', c.index_head_dim),
    u32('attention.indexer.top_k', c.index_topk),
    u32('rope.dimension_count', c.qk_rope_head_dim),
    f32('rope.freq_base', c.rope_theta),
    u32('expert_count', c.n_routed_experts),
    u32('expert_used_count', c.num_experts_per_tok),
    u32('expert_shared_count', c.n_shared_experts),
    u32('expert_feed_forward_length', c.moe_intermediate_size),
    f32('expert_weights_scale', c.routed_scaling_factor),
    { key: k('expert_weights_norm'), type: GgufType.BOOL, value: c.norm_topk_prob },
    u32('expert_gating_func', GATING_SQRT_SOFTPLUS),
    f32s('swiglu_clamp_exp', new Array<number>(blocks).fill(c.swiglu_limit)),
    f32s('swiglu_clamp_shexp', new Array<number>(blocks).fill(c.swiglu_limit)),
    u32('hash_layer_count', c.num_hash_layers),
    u32('hyper_connection.count', c.hc_mult),
    u32('hyper_connection.sinkhorn_iterations', c.hc_sinkhorn_iters),
    f32('hyper_connection.epsilon', c.hc_eps),
  ];
  if (o.part === 'mtp') kv.push(u32('nextn_predict_layers', 1));
  if (c.rope_scaling) {
    if (c.rope_scaling.type !== 'yarn') throw new InputError(`GGUF export: rope_scaling.type ${c.rope_scaling.type} is not what llama.cpp's deepseek4 runs (yarn)`);
    kv.push(
      { key: k('rope.scaling.type'), type: GgufType.STRING, value: 'yarn' },
      f32('rope.scaling.factor', c.rope_scaling.factor),
      u32('rope.scaling.original_context_length', c.rope_scaling.original_max_position_embeddings),
      f32('rope.scaling.yarn_beta_fast', c.rope_scaling.beta_fast),
      f32('rope.scaling.yarn_beta_slow', c.rope_scaling.beta_slow),
    );
  }
  return kv;
}

// ---------------------------------------------------------------- vocabulary

/** llama.cpp's llama_token_type (gguf-py TokenType) */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: Array<string | [string, string]> };
  added_tokens?: Array<{ id: number; content: string; special: boolean }>;
}

/** what convert_hf_to_gguf.py's does_token_look_special calls special (for DeepSeek: `<｜…｜>`, `<|…|>`) */
function looksSpecial(t: string): boolean {
  return (t.startsWith('<|') && t.endsWith('|>')) || (t.startsWith('<｜') && t.endsWith('｜>'));
}

/** a special token of tokenizer_config.json (a string or an AddedToken object) → its content */
function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/**
 * The `tokenizer.*` metadata of a model folder's byte-level BPE tokenizer (tokenizer.json +
 * tokenizer_config.json), as the converter writes it for DeepSeek: model gpt2, pre deepseek-v3,
 * exactly vocab_size tokens (ids without a token are `[PAD<id>]`, UNUSED), token types (NORMAL;
 * added tokens CONTROL when special or DeepSeek-special-looking, else USER_DEFINED), the merges,
 * bos / eos / pad ids, add_bos / add_eos, and the chat template when the folder has one.
 */
export function deepseek4Vocab(dir: string, vocabSize: number): GgufKv[] {
  const tokPath = join(dir, 'tokenizer.json');
  if (!existsSync(tokPath)) throw new InputError(`${dir}: no tokenizer.json; llama.cpp needs the vocabulary inside the GGUF (put the model's tokenizer.json in the folder)`);
  const tok = readJsonFile(tokPath) as TokenizerJson;
  if (tok.model?.type !== 'BPE' || !tok.model.vocab || !Array.isArray(tok.model.merges)) {
    throw new InputError(`${tokPath}: model.type must be BPE with vocab and merges (llama.cpp's gpt2 tokenizer), got ${JSON.stringify(tok.model?.type)}`);
  }
  const tokens: string[] = new Array<string>(vocabSize);
  const types: number[] = new Array<number>(vocabSize).fill(TokenType.UNUSED);
  const put = (id: number, text: string, type: number, what: string): void => {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new InputError(`${tokPath}: ${what} "${text}" has id ${id}, outside vocab_size ${vocabSize}`);
    tokens[id] = text;
    types[id] = type;
  };
  for (const [text, id] of Object.entries(tok.model.vocab)) put(id, text, TokenType.NORMAL, 'token');
  for (const a of tok.added_tokens ?? []) put(a.id, a.content, a.special || looksSpecial(a.content) ? TokenType.CONTROL : TokenType.USER_DEFINED, 'added token');
  for (let i = 0; i < vocabSize; i++) if (tokens[i] === undefined) tokens[i] = `[PAD${i}]`;
  const merges = tok.model.merges.map((m) => (typeof m === 'string' ? m : m.map((p) => [...p].map((ch) => (ch === ' ' ? String.fromCharCode(0x120) : ch)).join('')).join(' ')));
  const kv: GgufKv[] = [
    { key: 'tokenizer.ggml.model', type: GgufType.STRING, value: 'gpt2' },
    { key: 'tokenizer.ggml.pre', type: GgufType.STRING, value: 'deepseek-v3' },
    { key: 'tokenizer.ggml.tokens', type: GgufType.ARRAY, itemType: GgufType.STRING, value: tokens },
    { key: 'tokenizer.ggml.token_type', type: GgufType.ARRAY, itemType: GgufType.INT32, value: types },
    { key: 'tokenizer.ggml.merges', type: GgufType.ARRAY, itemType: GgufType.STRING, value: merges },
  ];
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = existsSync(cfgPath) ? (readJsonFile(cfgPath) as Record<string, unknown>) : {};
  const added = new Map((tok.added_tokens ?? []).map((a) => [a.content, a.id]));
  for (const [typ, key] of [['bos', 'bos_token_id'], ['eos', 'eos_token_id'], ['unk', 'unknown_token_id'], ['pad', 'padding_token_id']] as const) {
    const content = tokenContent(cfg[`${typ}_token`]);
    const id = content === null ? undefined : added.get(content);
    if (id !== undefined) kv.push({ key: `tokenizer.ggml.${key}`, type: GgufType.UINT32, value: id });
  }
  for (const typ of ['bos', 'eos'] as const) {
    const v = cfg[`add_${typ}_token`];
    if (typeof v === 'boolean') kv.push({ key: `tokenizer.ggml.add_${typ}_token`, type: GgufType.BOOL, value: v });
  }
  const jinja = join(dir, 'chat_template.jinja');
  const template = typeof cfg.chat_template === 'string' ? cfg.chat_template : existsSync(jinja) ? readFileSync(jinja, 'utf8') : null;
  if (template !== null) kv.push({ key: 'tokenizer.chat_template', type: GgufType.STRING, value: template });
  return kv;
}
