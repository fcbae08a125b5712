// The V4 base weights as backend handles, grouped by the part of the graph that uses them.
// Names are the official checkpoint names (../shared/docs/v4-architecture.md, Checkpoint layout).
import type { Backend, ExpertWeights, WeightHandle, WeightSource } from '../../backend/ops.js';
import type { V4Config } from '../config.js';

/** A checkpoint as the graph reads it (src/model/checkpoint.ts `Checkpoint` satisfies this). */
export interface ModelSource extends WeightSource {
  readonly config: V4Config;
  has(name: string): boolean;
  ints(name: string): Promise<Int32Array>;
}

export interface HcWeights {
  fn: WeightHandle;
  scale: WeightHandle;
  base: WeightHandle;
}

export interface CompressorWeights {
  wkv: WeightHandle;
  wgate: WeightHandle;
  ape: WeightHandle;
  norm: WeightHandle;
}

export interface IndexerWeights {
  wq_b: WeightHandle;
  weights_proj: WeightHandle;
  compressor: CompressorWeights;
}

export interface AttentionWeights {
  wq_a: WeightHandle;
  q_norm: WeightHandle;
  wq_b: WeightHandle;
  wkv: WeightHandle;
  kv_norm: WeightHandle;
  wo_a: WeightHandle;
  wo_b: WeightHandle;
  attn_sink: WeightHandle;
  compressor: CompressorWeights | null;
  indexer: IndexerWeights | null;
}

export interface FfnWeights {
  gate: WeightHandle;
  /** selection bias (scored layers) */
  bias: WeightHandle | null;
  /** token id → k expert ids, [vocab, k] (hash layers) */
  tid2eid: Int32Array | null;
  experts: ExpertWeights[];
  shared: ExpertWeights;
}

export interface BlockWeights {
  /** module prefix: `layers.N` or `mtp.0` */
  prefix: string;
  layerId: number;
  ratio: number;
  hcAttn: HcWeights;
  hcFfn: HcWeights;
  attnNorm: WeightHandle;
  ffnNorm: WeightHandle;
  attn: AttentionWeights;
  ffn: FfnWeights;
}

export interface MtpWeights {
  block: BlockWeights;
  e_proj: WeightHandle;
  h_proj: WeightHandle;
  enorm: WeightHandle;
  hnorm: WeightHandle;
  norm: WeightHandle;
  hcHead: HcWeights;
}

export interface V4Weights {
  embed: WeightHandle;
  head: WeightHandle;
  norm: WeightHandle;
  hcHead: HcWeights;
  layers: BlockWeights[];
  mtp: MtpWeights[];
}

async function hc(be: Backend, src: ModelSource, p: string): Promise<HcWeights> {
  const [fn, scale, base] = await Promise.all(['fn', 'scale', 'base'].map((s) => be.prepareWeight(src, `${p}_${s}`)));
  return { fn, scale, base };
}

async function compressor(be: Backend, src: ModelSource, p: string): Promise<CompressorWeights> {
  const [wkv, wgate, ape, norm] = await Promise.all(
    [`${p}.wkv.weight`, `${p}.wgate.weight`, `${p}.ape`, `${p}.norm.weight`].map((n) => be.prepareWeight(src, n)),
  );
  return { wkv, wgate, ape, norm };
}

async function expert(be: Backend, src: ModelSource, p: string): Promise<ExpertWeights> {
  const [w1, w2, w3] = await Promise.all(['w1', 'w2', 'w3'].map((w) => be.prepareWeight(src, `${p}.${w}.weight`)));
  return { w1, w2, w3 };
}

/** One block's weights: `layers.N` (layerId N) or the MTP block `mtp.i` (layerId num_hidden_layers + i). */
export async function loadBlock(be: Backend, src: ModelSource, prefix: string, layerId: number, ratio: number): Promise<BlockWeights> {
  const c = src.config;
  const w = (n: string): Promise<WeightHandle> => be.prepareWeight(src, `${prefix}.${n}`);
  const a = `${prefix}.attn`;
  const attn: AttentionWeights = {
    wq_a: await w('attn.wq_a.weight'),
    q_norm: await w('attn.q_norm.weight'),
    wq_b: await w('attn.wq_b.weight'),
    wkv: await w('attn.wkv.weight'),
    kv_norm: await w('attn.kv_norm.weight'),
    wo_a: await w('attn.wo_a.weight'),
    wo_b: await w('attn.wo_b.weight'),
    attn_sink: await w('attn.attn_sink'),
    compressor: ratio ? await compressor(be, src, `${a}.compressor`) : null,
    indexer: ratio === 4
      ? {
          wq_b: await w('attn.indexer.wq_b.weight'),
          weights_proj: await w('attn.indexer.weights_proj.weight'),
          compressor: await compressor(be, src, `${a}.indexer.compressor`),
        }
      : null,
  };
  const hash = layerId < c.num_hash_layers;
  const experts: ExpertWeights[] = [];
  for (let e = 0; e < c.n_routed_experts; e++) experts.push(await expert(be, src, `${prefix}.ffn.experts.${e}`));
  const ffn: FfnWeights = {
    gate: await w('ffn.gate.weight'),
    bias: hash ? null : await w('ffn.gate.bias'),
    tid2eid: hash ? await src.ints(`${prefix}.ffn.gate.tid2eid`) : null,
    experts,
    shared: await expert(be, src, `${prefix}.ffn.shared_experts`),
  };
  return {
    prefix,
    layerId,
    ratio,
    hcAttn: await hc(be, src, `${prefix}.hc_attn`),
    hcFfn: await hc(be, src, `${prefix}.hc_ffn`),
    attnNorm: await w('attn_norm.weight'),
    ffnNorm: await w('ffn_norm.weight'),
    attn,
    ffn,
  };
}

/** Layer `i`'s block (`layers.i`). */
export function loadLayer(be: Backend, src: ModelSource, i: number): Promise<BlockWeights> {
  return loadBlock(be, src, `layers.${i}`, i, src.config.compress_ratios[i]!);
}

/** whether the checkpoint has MTP block `i` */
export function hasMtp(src: ModelSource, i: number): boolean {
  return i < src.config.num_nextn_predict_layers && src.has(`mtp.${i}.e_proj.weight`);
}

/** MTP block `i` (`mtp.i`): its block and its own projections and norms. */
export async function loadMtp(be: Backend, src: ModelSource, i: number): Promise<MtpWeights> {
  const c = src.config;
  const p = `mtp.${i}`;
  const w = (n: string): Promise<WeightHandle> => be.prepareWeight(src, `${p}.${n}`);
  return {
    block: await loadBlock(be, src, p, c.num_hidden_layers + i, c.mtp_compress_ratio),
    e_proj: await w('e_proj.weight'),
    h_proj: await w('h_proj.weight'),
    enorm: await w('enorm.weight'),
    hnorm: await w('hnorm.weight'),
    norm: await w('norm.weight'),
    hcHead: await hc(be, src, `${p}.hc_head`),
  };
}

/** Every base weight of the model (MTP blocks included when the checkpoint has them). */
export async function loadWeights(be: Backend, src: ModelSource): Promise<V4Weights> {
  const c = src.config;
  const layers: BlockWeights[] = [];
  for (let i = 0; i < c.num_hidden_layers; i++) layers.push(await loadLayer(be, src, i));
  const mtp: MtpWeights[] = [];
  for (let i = 0; hasMtp(src, i); i++) mtp.push(await loadMtp(be, src, i));
  return {
    embed: await be.prepareWeight(src, 'embed.weight'),
    head: await be.prepareWeight(src, 'head.weight'),
    norm: await be.prepareWeight(src, 'norm.weight'),
    hcHead: await hc(be, src, 'hc_head'),
    layers,
    mtp,
  };
}

/** every weight handle inside a block's (or an MTP block's) weights, for Backend.releaseWeights */
export function weightHandles(w: BlockWeights | MtpWeights): WeightHandle[] {
  const out: WeightHandle[] = [];
  const walk = (v: unknown): void => {
    if (v === null || typeof v !== 'object' || ArrayBuffer.isView(v)) return;
    if (Array.isArray(v)) {
      for (const x of v) walk(x);
      return;
    }
    const o = v as Record<string, unknown>;
    if (typeof o.name === 'string' && Array.isArray(o.shape)) {
      out.push(o as unknown as WeightHandle);
      return;
    }
    for (const x of Object.values(o)) walk(x);
  };
  walk(w);
  return out;
}
