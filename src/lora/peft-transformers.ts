// The transformers layout of a PEFT LoRA adapter: what `PeftModel.from_pretrained` (PEFT 0.21)
// applies to transformers' DeepseekV4ForCausalLM (5.18), converted exactly from and to v4tune's
// adapters (official module names, one pair per module).
//
// - attention and shared-expert linears (and the compressors' wkv / wgate): PEFT target_modules by
//   their full transformers names (`model.layers.N.self_attn.q_a_proj`, ...), keys
//   `base_model.model.<name>.lora_A.weight` [r, in] / `lora_B.weight` [out, r].
// - wo_a: transformers' `self_attn.o_a_proj` is a grouped linear whose forward PEFT's Linear
//   wrapper does not follow, but its weight [g·o_lora_rank, in/g] is exactly the matrix v4tune's
//   wo_a LoRA adapts: target_parameters `...self_attn.o_a_proj.weight` (ParamWrapper, 2-D: the
//   same A [r, in] / B [out, r] and the same keys as a module).
// - routed experts: target_parameters on the stacked `mlp.experts.gate_up_proj` [E, 2I, d] and
//   `mlp.experts.down_proj` [E, d, I]. PEFT's ParamWrapper keeps A [R·E, in] (expert e: rows
//   e·R..e·R+R) and B [out, R·E] (expert e, rank k: column k·E + e); ΔW[e] = s·B_e·A_e. v4tune's
//   separate w1 and w3 pairs (ranks r1, r3) are the gate-up pair of rank R = r1 + r3 with
//   A_e = [A1; A3], B_e = blockdiag(B1, B3) — exactly w1's and w3's deltas stacked as gate_up_proj
//   stacks w1 and w3. Experts without a pair get zero factors (ΔW = 0). Two parameters of one
//   module nest: the first registered (gate_up_proj) is the inner wrapper, its keys carry
//   `.base_layer` (`mlp.experts.base_layer.lora_A.weight`).
// - scaling: PEFT's alpha / r per target via rank_pattern / alpha_pattern keyed by the full target
//   name (regex-escaped), so every module keeps v4tune's scaling; a fused pair whose w1 and w3
//   scalings differ folds the ratio into w3's B.
// - the MTP block (mtp.*): transformers' model has none. Its pairs are kept under their official
//   names in the same file (PEFT reports them as unexpected keys and ignores them) and listed in
//   adapter_config.json `v4tune.not_in_transformers` with the reason.
// adapter_config.json `v4tune.modules` lists every official module with its rank and alpha, so
// v4tune reads its own adapter back exactly (the same modules, the same factors); an adapter PEFT
// trained has no such list and is read generically (a gate-up pair of rank R is w1's and w3's pair
// with A = A_e, B = the gate or up rows of B_e: rank R each, the same ΔW).
import { InputError } from '../errors.js';
import type { LoraLayer } from './adapter.js';

/** transformers' module name of an official non-expert module inside a block (null: no such module) */
const BLOCK_MODULES: Readonly<Record<string, string>> = {
  'attn.wq_a': 'self_attn.q_a_proj',
  'attn.wq_b': 'self_attn.q_b_proj',
  'attn.wkv': 'self_attn.kv_proj',
  'attn.wo_b': 'self_attn.o_b_proj',
  'attn.compressor.wkv': 'self_attn.compressor.kv_proj',
  'attn.compressor.wgate': 'self_attn.compressor.gate_proj',
  'attn.indexer.compressor.wkv': 'self_attn.compressor.indexer.kv_proj',
  'attn.indexer.compressor.wgate': 'self_attn.compressor.indexer.gate_proj',
  'attn.indexer.wq_b': 'self_attn.compressor.indexer.q_b_proj',
  'attn.indexer.weights_proj': 'self_attn.compressor.indexer.scorer.weights_proj',
  'ffn.shared_experts.w1': 'mlp.shared_experts.gate_proj',
  'ffn.shared_experts.w3': 'mlp.shared_experts.up_proj',
  'ffn.shared_experts.w2': 'mlp.shared_experts.down_proj',
};
const BLOCK_MODULES_BACK = new Map(Object.entries(BLOCK_MODULES).map(([o, t]) => [t, o]));
const WO_A = 'self_attn.o_a_proj.weight';
/** the expert parameters in the order transformers registers them (PEFT nests wrappers in this order) */
const EXPERT_PARAMS = ['mlp.experts.gate_up_proj', 'mlp.experts.down_proj'] as const;

export const MTP_REASON = "transformers' DeepseekV4ForCausalLM has no MTP block";

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export interface PeftTensor {
  name: string;
  shape: [number, number];
  data: Float32Array;
}

export interface TransformersAdapter {
  tensors: PeftTensor[];
  /** adapter_config.json fields of the layout */
  config: {
    r: number;
    lora_alpha: number;
    use_rslora: false;
    target_modules: string[];
    target_parameters: string[];
    rank_pattern: Record<string, number>;
    alpha_pattern: Record<string, number>;
  };
  /** official modules kept under their official names, with the reason */
  notInTransformers: string[];
}

interface ModuleRecord { r: number; alpha: number; scaling: number }

/** the `v4tune.modules` record: official module → rank and alpha */
export function moduleRecord(layers: ReadonlyMap<string, LoraLayer>): Record<string, ModuleRecord> {
  const out: Record<string, ModuleRecord> = {};
  for (const m of [...layers.keys()].sort()) {
    const l = layers.get(m)!;
    out[m] = { r: l.r, alpha: l.alpha, scaling: l.scaling };
  }
  return out;
}

/**
 * v4tune's pairs (official modules) in the transformers layout. `experts`: the routed experts per
 * layer (the base's n_routed_experts; the stacked tensors need it). `r`, `alpha`: the adapter's
 * defaults (PEFT's r / lora_alpha; modules whose scaling differs get pattern entries).
 */
export function toTransformersLayout(layers: ReadonlyMap<string, LoraLayer>, experts: number, r: number, alpha: number, rsLoRA: boolean): TransformersAdapter {
  const defScale = rsLoRA ? alpha / Math.sqrt(r) : alpha / r;
  const defAlpha = defScale * r;
  const tensors: PeftTensor[] = [];
  const targetModules: string[] = [];
  const targetParams: string[] = [];
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  const notIn: string[] = [];
  const pattern = (key: string, rank: number, scaling: number): void => {
    if (rank !== r) rankPattern[esc(key)] = rank;
    if (scaling !== defScale || rank !== r) alphaPattern[esc(key)] = scaling * rank;
  };
  const put = (name: string, A: Float32Array, B: Float32Array, rank: number, inF: number, out: number): void => {
    tensors.push({ name: `base_model.model.${name}.lora_A.weight`, shape: [rank, inF], data: A });
    tensors.push({ name: `base_model.model.${name}.lora_B.weight`, shape: [out, rank], data: B });
  };
  const expertPairs = new Map<string, Map<number, { w1?: LoraLayer; w2?: LoraLayer; w3?: LoraLayer }>>();
  for (const [m, l] of layers) {
    if (m.startsWith('mtp.')) {
      notIn.push(m);
      put(m, l.A, l.B, l.r, l.in, l.out);
      continue;
    }
    const ex = /^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])$/.exec(m);
    if (ex) {
      const [, layer, e, w] = ex as unknown as [string, string, string, 'w1' | 'w2' | 'w3'];
      if (Number(e) >= experts) throw new InputError(`adapter module ${m}: expert ${e} is outside the base's ${experts} routed experts`);
      const byE = expertPairs.get(layer) ?? new Map();
      const p = byE.get(Number(e)) ?? {};
      p[w] = l;
      byE.set(Number(e), p);
      expertPairs.set(layer, byE);
      continue;
    }
    const bm = /^layers\.(\d+)\.(.+)$/.exec(m);
    if (!bm) throw new InputError(`adapter module ${m}: not a module of a V4 layer or MTP block`);
    const [, layer, rest] = bm as unknown as [string, string, string];
    if (rest === 'attn.wo_a') {
      const key = `model.layers.${layer}.${WO_A}`;
      targetParams.push(key);
      pattern(key, l.r, l.scaling);
      put(`model.layers.${layer}.self_attn.o_a_proj`, l.A, l.B, l.r, l.in, l.out);
      continue;
    }
    const t = BLOCK_MODULES[rest];
    if (!t) throw new InputError(`adapter module ${m}: no transformers module for ${rest}`);
    const name = `model.layers.${layer}.${t}`;
    targetModules.push(name);
    pattern(name, l.r, l.scaling);
    put(name, l.A, l.B, l.r, l.in, l.out);
  }
  for (const [layer, byE] of [...expertPairs].sort((a, b) => Number(a[0]) - Number(b[0]))) {
    const pairs = [...byE.values()];
    const any = (w: 'w1' | 'w2' | 'w3'): LoraLayer | undefined => pairs.find((p) => p[w])?.[w];
    const base = `model.layers.${layer}.mlp.experts`;
    const params: Array<{ key: string; build: () => { A: Float32Array; B: Float32Array; R: number; inF: number; out: number; s: number } }> = [];
    const g1 = any('w1') ?? any('w3');
    if (g1) {
      params.push({ key: `${base}.gate_up_proj`, build: () => fuseGateUp(byE, experts, g1) });
    }
    const g2 = any('w2');
    if (g2) params.push({ key: `${base}.down_proj`, build: () => stackDown(byE, experts, g2) });
    params.forEach((p, i) => {
      const { A, B, R, inF, out, s } = p.build();
      targetParams.push(p.key);
      pattern(p.key, R, s);
      const nest = '.base_layer'.repeat(params.length - 1 - i);
      put(`${base}${nest}`, A, B, R * experts, inF, out);
    });
  }
  return {
    tensors,
    config: { r, lora_alpha: defAlpha, use_rslora: false, target_modules: targetModules, target_parameters: targetParams, rank_pattern: rankPattern, alpha_pattern: alphaPattern },
    notInTransformers: notIn.sort(),
  };
}

/** the stacked ParamWrapper factors of per-expert pairs A_e [R, in], B_e [out, R]: A [R·E, in], B [out, R·E] (column k·E + e) */
function stackFactors(E: number, R: number, inF: number, out: number, fill: (e: number, A: Float32Array, B: Float32Array) => void): { A: Float32Array; B: Float32Array } {
  const A = new Float32Array(R * E * inF);
  const B = new Float32Array(out * R * E);
  const Ae = new Float32Array(R * inF);
  const Be = new Float32Array(out * R);
  for (let e = 0; e < E; e++) {
    Ae.fill(0);
    Be.fill(0);
    fill(e, Ae, Be);
    A.set(Ae, e * R * inF);
    for (let o = 0; o < out; o++) for (let k = 0; k < R; k++) B[o * R * E + k * E + e] = Be[o * R + k]!;
  }
  return { A, B };
}

function fuseGateUp(byE: Map<number, { w1?: LoraLayer; w3?: LoraLayer }>, E: number, ref: LoraLayer): { A: Float32Array; B: Float32Array; R: number; inF: number; out: number; s: number } {
  let r1 = 0;
  let r3 = 0;
  for (const p of byE.values()) {
    r1 = Math.max(r1, p.w1?.r ?? 0);
    r3 = Math.max(r3, p.w3?.r ?? 0);
  }
  const R = r1 + r3;
  const inF = ref.in;
  const I = ref.out;
  const s = ref.scaling;
  const { A, B } = stackFactors(E, R, inF, 2 * I, (e, Ae, Be) => {
    const p = byE.get(e);
    if (!p) return;
    for (const [l, k0, o0] of [[p.w1, 0, 0], [p.w3, r1, I]] as const) {
      if (!l) continue;
      const f = l.scaling / s;
      Ae.set(l.A, k0 * inF);
      for (let o = 0; o < I; o++) for (let k = 0; k < l.r; k++) Be[(o0 + o) * R + k0 + k] = f === 1 ? l.B[o * l.r + k]! : l.B[o * l.r + k]! * f;
    }
  });
  return { A, B, R, inF, out: 2 * I, s };
}

function stackDown(byE: Map<number, { w2?: LoraLayer }>, E: number, ref: LoraLayer): { A: Float32Array; B: Float32Array; R: number; inF: number; out: number; s: number } {
  let R = 0;
  for (const p of byE.values()) R = Math.max(R, p.w2?.r ?? 0);
  const s = ref.scaling;
  const { A, B } = stackFactors(E, R, ref.in, ref.out, (e, Ae, Be) => {
    const l = byE.get(e)?.w2;
    if (!l) return;
    const f = l.scaling / s;
    Ae.set(l.A);
    for (let o = 0; o < ref.out; o++) for (let k = 0; k < l.r; k++) Be[o * R + k] = f === 1 ? l.B[o * l.r + k]! : l.B[o * l.r + k]! * f;
  });
  return { A, B, R, inF: ref.in, out: ref.out, s };
}

// ---------------------------------------------------------------- reading

/** PEFT's get_pattern_key: the first pattern p with `(.*\.)?(p)$` matching the key */
function patternLookup(patterns: Record<string, number>, key: string, dflt: number): number {
  for (const [p, v] of Object.entries(patterns)) if (new RegExp(`^(.*\\.)?(${p})$`).test(key)) return v;
  return dflt;
}

export interface TransformersAdapterConfig {
  r: number;
  lora_alpha: number;
  use_rslora: boolean;
  target_parameters: string[];
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  /** v4tune.modules when v4tune wrote it */
  modules: Record<string, ModuleRecord> | null;
}

/** the factors as stored, by PEFT key prefix (`base_model.model.<name>`) */
export type StoredPairs = Map<string, { A: Float32Array; B: Float32Array; aShape: number[]; bShape: number[] }>;

/** Whether keys name transformers modules (`base_model.model.model.layers.` / `lm_head`) */
export function isTransformersLayout(prefixes: Iterable<string>): boolean {
  for (const p of prefixes) if (p.startsWith('base_model.model.model.')) return true;
  return false;
}

/**
 * The official-module pairs of a transformers-layout adapter (see the file comment). `file` names
 * the safetensors file in errors.
 */
export function fromTransformersLayout(pairs: StoredPairs, cfg: TransformersAdapterConfig, file: string): Map<string, LoraLayer> {
  const out = new Map<string, LoraLayer>();
  const scaleOf = (alpha: number, r: number): number => (cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r);
  const params = new Set(cfg.target_parameters.map((t) => t.replace(/^.*?(mlp\.experts\.(gate_up_proj|down_proj)|self_attn\.o_a_proj\.weight)$/, '$1')));
  const targetedExpertParams = EXPERT_PARAMS.filter((p) => params.has(p));
  for (const [prefix, f] of pairs) {
    const name = prefix.slice('base_model.model.'.length);
    if (name.startsWith('mtp.')) {
      const rec = cfg.modules?.[name];
      const alpha = patternLookup(cfg.alpha_pattern, name, cfg.lora_alpha);
      out.set(name, { A: f.A, B: f.B, r: f.aShape[0]!, alpha: rec?.alpha ?? alpha, scaling: rec?.scaling ?? scaleOf(alpha, f.aShape[0]!), in: f.aShape[1]!, out: f.bShape[0]! });
      continue;
    }
    const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
    if (!m) throw new InputError(`${file}: ${prefix}: not a module of transformers' DeepseekV4ForCausalLM layers`);
    const [, layer, rest0] = m as unknown as [string, string, string];
    let rest = rest0;
    let depth = 0;
    while (rest.endsWith('.base_layer')) {
      rest = rest.slice(0, -'.base_layer'.length);
      depth++;
    }
    if (rest === 'mlp.experts') {
      const idx = targetedExpertParams.length - 1 - depth;
      const param = targetedExpertParams[idx];
      if (!param) throw new InputError(`${file}: ${prefix}: factors on mlp.experts but adapter_config.json's target_parameters has no matching expert parameter`);
      const key = `model.layers.${layer}.${param}`;
      const R = patternLookup(cfg.rank_pattern, key, cfg.r);
      const alpha = patternLookup(cfg.alpha_pattern, key, cfg.lora_alpha);
      if (f.aShape[0]! % R !== 0) throw new InputError(`${file}: ${prefix}.lora_A.weight has ${f.aShape[0]} rows, not a multiple of the rank ${R} of ${key}`);
      const E = f.aShape[0]! / R;
      splitExperts(out, layer, param, f, E, R, scaleOf(alpha, R), cfg.modules, alpha);
      continue;
    }
    const r = f.aShape[0]!;
    if (rest === 'self_attn.o_a_proj') {
      const key = `model.layers.${layer}.${WO_A}`;
      const alpha = patternLookup(cfg.alpha_pattern, key, cfg.lora_alpha);
      const rec = cfg.modules?.[`layers.${layer}.attn.wo_a`];
      out.set(`layers.${layer}.attn.wo_a`, { A: f.A, B: f.B, r, alpha: rec?.alpha ?? alpha, scaling: rec?.scaling ?? scaleOf(alpha, r), in: f.aShape[1]!, out: f.bShape[0]! });
      continue;
    }
    const o = BLOCK_MODULES_BACK.get(rest);
    if (!o) throw new InputError(`${file}: ${prefix}: no v4tune module for transformers' ${rest}`);
    const alpha = patternLookup(cfg.alpha_pattern, name, cfg.lora_alpha);
    const mod = `layers.${layer}.${o}`;
    const rec = cfg.modules?.[mod];
    out.set(mod, { A: f.A, B: f.B, r, alpha: rec?.alpha ?? alpha, scaling: rec?.scaling ?? scaleOf(alpha, r), in: f.aShape[1]!, out: f.bShape[0]! });
  }
  return out;
}

/** per-expert pairs of a stacked ParamWrapper pair (gate_up_proj: w1 and w3; down_proj: w2) */
function splitExperts(out: Map<string, LoraLayer>, layer: string, param: string, f: { A: Float32Array; B: Float32Array; aShape: number[]; bShape: number[] }, E: number, R: number, s: number, modules: Record<string, ModuleRecord> | null, alpha: number): void {
  const inF = f.aShape[1]!;
  const outF = f.bShape[0]!;
  const Ae = (e: number, k0: number, k1: number): Float32Array => f.A.slice((e * R + k0) * inF, (e * R + k1) * inF);
  // B's column k·E + e is expert e's column k: each expert's [outF, R] gathered row by row of B
  // (one row's R·E floats stay in the cache while every expert takes its R of them, each written in
  // order; gathering one expert at a time reads B E times, a cache line per element)
  const Bt = Array.from({ length: E }, () => new Float32Array(outF * R));
  for (let o = 0; o < outF; o++) {
    const row = o * R * E;
    for (let e = 0; e < E; e++) {
      const dst = Bt[e]!;
      for (let k = 0, d = o * R, i = row + e; k < R; k++, d++, i += E) dst[d] = f.B[i]!;
    }
  }
  const Be = (e: number, o0: number, o1: number, k0: number, k1: number): Float32Array => {
    const src = Bt[e]!;
    if (o0 === 0 && o1 === outF && k0 === 0 && k1 === R) return src; // the whole block: no other module shares it
    const b = new Float32Array((o1 - o0) * (k1 - k0));
    for (let o = o0; o < o1; o++) b.set(src.subarray(o * R + k0, o * R + k1), (o - o0) * (k1 - k0));
    return b;
  };
  const add = (mod: string, A: Float32Array, B: Float32Array, r: number, o: number, sc: number): void => {
    out.set(mod, { A, B, r, alpha: modules?.[mod]?.alpha ?? alpha * (r / R), scaling: sc, in: inF, out: o });
  };
  for (let e = 0; e < E; e++) {
    const p = `layers.${layer}.ffn.experts.${e}`;
    if (param === 'mlp.experts.down_proj') {
      const rec = modules?.[`${p}.w2`];
      if (rec) add(`${p}.w2`, Ae(e, 0, rec.r), unfold(Be(e, 0, outF, 0, rec.r), s, rec.scaling), rec.r, outF, rec.scaling);
      else if (!modules) add(`${p}.w2`, Ae(e, 0, R), Be(e, 0, outF, 0, R), R, outF, s);
      continue;
    }
    const I = outF / 2;
    if (modules) {
      // v4tune's own: A_e = [A1; A3] (w1 padded to the layer's widest), B_e = blockdiag(B1, B3)
      let r1 = 0;
      for (let x = 0; x < E; x++) r1 = Math.max(r1, modules[`layers.${layer}.ffn.experts.${x}.w1`]?.r ?? 0);
      const w1 = modules[`${p}.w1`];
      const w3 = modules[`${p}.w3`];
      if (w1) add(`${p}.w1`, Ae(e, 0, w1.r), unfold(Be(e, 0, I, 0, w1.r), s, w1.scaling), w1.r, I, w1.scaling);
      if (w3) add(`${p}.w3`, Ae(e, r1, r1 + w3.r), unfold(Be(e, I, 2 * I, r1, r1 + w3.r), s, w3.scaling), w3.r, I, w3.scaling);
    } else {
      add(`${p}.w1`, Ae(e, 0, R), Be(e, 0, I, 0, R), R, I, s);
      add(`${p}.w3`, Ae(e, 0, R), Be(e, I, 2 * I, 0, R), R, I, s);
    }
  }
}

/** undo the s_module / s_fused factor folded into B when the module's scaling differs */
function unfold(B: Float32Array, fused: number, own: number): Float32Array {
  if (own === fused) return B;
  const f = fused / own;
  return B.map((x) => x * f);
}

