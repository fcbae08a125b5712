// Tensor names of the `gptq` output (src/export/gptq-export.ts): GPTQModel's deepseek_v4 definition
// (gptqmodel/models/definitions/deepseek_v4.py) walks transformers' module tree — `model.layers.N`
// with self_attn.{q_a_proj, q_b_proj, kv_proj, o_b_proj}, mlp.shared_experts.{gate,up,down}_proj,
// and the routed experts one module per expert, mlp.experts.E.{gate,up,down}_proj (w1, w3, w2).
// Everything else keeps its transformers name (layout.ts); the MTP block, which transformers does
// not model, keeps its official names. The writer and the GPTQ-folder reader both use this.
import { officialToTransformers } from './layout.js';

const EXPERT_RE = /^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$/;
const EXPERT_PROJ: Readonly<Record<string, string>> = { w1: 'gate_proj', w2: 'down_proj', w3: 'up_proj' };

/** the GPTQModel name of an official tensor (`X.weight` of a quantised linear: its module `X` + `.weight`) */
export function gptqModelName(official: string, moeIntermediate: number): string {
  const e = EXPERT_RE.exec(official);
  if (e) return `model.layers.${e[1]}.mlp.experts.${e[2]}.${EXPERT_PROJ[e[3]!]}.weight`;
  return officialToTransformers(official, moeIntermediate).tensor;
}
