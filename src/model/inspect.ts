// `v4tune inspect <model dir>`: what a V4 checkpoint holds — config summary, parameters by part,
// storage formats, layout — from the headers alone (no weight is read).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Checkpoint, type WeightFormat } from './checkpoint.js';
import { configFingerprint } from './config.js';
import { expectedTensors, type ModelPart } from './layout.js';
import { DTYPE_BYTES, numel, type Dtype } from './safetensors.js';

export interface ModelSummary {
  dir: string;
  layout: 'official' | 'transformers';
  fingerprint: string;
  config: {
    hidden_size: number;
    num_hidden_layers: number;
    num_attention_heads: number;
    head_dim: number;
    vocab_size: number;
    n_routed_experts: number;
    num_experts_per_tok: number;
    n_shared_experts: number;
    moe_intermediate_size: number;
    compress_ratios: number[];
    mtp_compress_ratio: number;
    num_hash_layers: number;
    num_nextn_predict_layers: number;
    expert_dtype: string | null;
  };
  /** logical (dequantised) parameter count by part; `other` holds tensors config.json does not imply */
  parameters: Record<ModelPart | 'other', number>;
  totalParameters: number;
  /** tensors and bytes on disk (weights plus their scales) by storage format */
  formats: Partial<Record<WeightFormat, { tensors: number; bytes: number }>>;
  totalBytes: number;
  tokenizer: boolean;
  warnings: string[];
}

const PARTS: ReadonlyArray<ModelPart | 'other'> = [
  'embed+head', 'attention', 'compressor+indexer', 'router', 'routed experts', 'shared expert', 'mHC', 'norms', 'MTP', 'other',
];

/** Summarise a model folder (opens and validates it; reads headers only). */
export async function inspectModel(dir: string): Promise<ModelSummary> {
  const ck = await Checkpoint.open(dir);
  try {
    const c = ck.config;
    const partOf = new Map(expectedTensors(c).map((t) => [t.name, t.part]));
    const parameters = Object.fromEntries(PARTS.map((p) => [p, 0])) as Record<ModelPart | 'other', number>;
    const formats: ModelSummary['formats'] = {};
    let totalBytes = 0;
    for (const name of ck.names()) {
      const m = ck.meta(name);
      const plan = ck.plan(name);
      parameters[partOf.get(name) ?? 'other'] += numel(m.logicalShape);
      const bytes = numel(m.shape) * DTYPE_BYTES[m.dtype as Dtype] + (plan.scaleShape ? numel(plan.scaleShape) : 0);
      const f = (formats[m.format] ??= { tensors: 0, bytes: 0 });
      f.tensors += 1;
      f.bytes += bytes;
      totalBytes += bytes;
    }
    return {
      dir,
      layout: ck.layout,
      fingerprint: configFingerprint(c),
      config: {
        hidden_size: c.hidden_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        head_dim: c.head_dim,
        vocab_size: c.vocab_size,
        n_routed_experts: c.n_routed_experts,
        num_experts_per_tok: c.num_experts_per_tok,
        n_shared_experts: c.n_shared_experts,
        moe_intermediate_size: c.moe_intermediate_size,
        compress_ratios: c.compress_ratios,
        mtp_compress_ratio: c.mtp_compress_ratio,
        num_hash_layers: c.num_hash_layers,
        num_nextn_predict_layers: c.num_nextn_predict_layers,
        expert_dtype: c.expert_dtype,
      },
      parameters,
      totalParameters: Object.values(parameters).reduce((a, b) => a + b, 0),
      formats,
      totalBytes,
      tokenizer: existsSync(join(dir, 'tokenizer.json')),
      warnings: ck.warnings,
    };
  } finally {
    await ck.close();
  }
}

function human(n: number, unit: string): string {
  const steps: Array<[number, string]> = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [v, s] of steps) if (n >= v) return `${(n / v).toFixed(2)}${s}${unit}`;
  return `${n}${unit}`;
}

/** The summary as a few aligned lines for people. */
export function renderModelSummary(s: ModelSummary): string {
  const c = s.config;
  const lines = [
    `model ${s.dir} (${s.layout} layout, config fingerprint ${s.fingerprint})`,
    `  hidden ${c.hidden_size}, ${c.num_hidden_layers} layers + ${c.num_nextn_predict_layers} MTP, ${c.num_attention_heads} heads x ${c.head_dim}, vocab ${c.vocab_size}`,
    `  experts ${c.n_routed_experts} routed (top ${c.num_experts_per_tok}, ${c.num_hash_layers} hash layers) + ${c.n_shared_experts} shared, intermediate ${c.moe_intermediate_size}, expert dtype ${c.expert_dtype ?? 'as stored'}`,
    `  compress ratios [${c.compress_ratios.join(', ')}], MTP ${c.mtp_compress_ratio}`,
    `  tokenizer: ${s.tokenizer ? 'tokenizer.json' : 'none'}`,
    `parameters ${human(s.totalParameters, '')}`,
  ];
  for (const p of PARTS) if (s.parameters[p] > 0) lines.push(`  ${p.padEnd(20)} ${human(s.parameters[p], '').padStart(9)}`);
  lines.push(`storage ${human(s.totalBytes, 'B')}`);
  for (const [f, v] of Object.entries(s.formats)) lines.push(`  ${f.padEnd(20)} ${String(v.tensors).padStart(5)} tensors ${human(v.bytes, 'B').padStart(10)}`);
  for (const w of s.warnings) lines.push(`warning: ${w}`);
  return lines.join('\n');
}
