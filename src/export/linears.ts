// Which tensors the quantize stage quantises: every attention projection (attn.wq_a, wq_b, wkv,
// wo_a, wo_b), the shared expert and every routed expert (w1, w2, w3), in the layers and in the
// MTP block. Kept: embed, head, norms, the router (ffn.gate), the compressors, the indexer, hc_*,
// attn_sink, ape, MTP e_proj/h_proj — small or precision-critical tensors.
import type { Checkpoint } from '../model/checkpoint.js';

/** the kinds of quantised linears, for the error report */
export type LinearKind = 'attention' | 'shared_expert' | 'routed_expert';

const QUANT_RE = /^((?:layers|mtp)\.\d+)\.(attn\.(?:wq_a|wq_b|wkv|wo_a|wo_b)|ffn\.shared_experts\.w[123]|ffn\.experts\.\d+\.w[123])\.weight$/;

/** the kind of a quantisable linear weight (official name), or null for a kept tensor */
export function linearKind(name: string): LinearKind | null {
  const m = QUANT_RE.exec(name);
  if (!m) return null;
  const mod = m[2]!;
  return mod.startsWith('attn.') ? 'attention' : mod.startsWith('ffn.shared_experts.') ? 'shared_expert' : 'routed_expert';
}

/**
 * The module whose input a quantised linear reads, where two of them read one tensor: an expert's
 * (routed or shared) w3 reads its w1's, attention's wkv reads wq_a's (both x after attn_norm);
 * otherwise the module itself. Such linears share one GPTQ Hessian and factor (calibrate.ts).
 */
export function linearInput(module: string): string {
  return module.replace(/(\.ffn\.(?:shared_experts|experts\.\d+))\.w3$/, '$1.w1').replace(/\.attn\.wkv$/, '.attn.wq_a');
}

/**
 * Tensor names in block order: numbers compared as numbers (`layers.2` before `layers.10`,
 * `experts.9` before `experts.10`), the rest as text. The exports write and quantise in this
 * order, which is also llama.cpp's converter's, so that GPTQ calibration, which runs the model
 * one block at a time (calibrate.ts), goes through the blocks once, in order.
 */
export function blockOrder(names: readonly string[]): string[] {
  const key = (n: string): Array<string | number> => n.split(/(\d+)/).map((p, i) => (i % 2 === 1 ? Number(p) : p));
  const keys = new Map(names.map((n) => [n, key(n)]));
  const cmp = (a: string, b: string): number => {
    const x = keys.get(a)!;
    const y = keys.get(b)!;
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      const p = x[i]!;
      const q = y[i]!;
      if (p === q) continue;
      if (typeof p === 'number' && typeof q === 'number') return p - q;
      return String(p) < String(q) ? -1 : 1;
    }
    return x.length - y.length;
  };
  return [...names].sort(cmp);
}

/** let the event loop run (Ctrl-C, progress) between tensors */
export const yieldLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * One float32 buffer for the tensors an export decodes in turn (as large as the largest so far),
 * for Checkpoint.f32's `into`: each tensor is quantised or converted into new bytes before the
 * next is decoded, so the export leaves no tensor-sized array per tensor for the collector.
 */
export function decodeBuffer(ckpt: Checkpoint): (name: string) => Float32Array {
  let buf = new Float32Array(0);
  return (name) => {
    const size = ckpt.meta(name).logicalShape.reduce((a, b) => a * b, 1);
    if (buf.length < size) buf = new Float32Array(size);
    return buf;
  };
}
