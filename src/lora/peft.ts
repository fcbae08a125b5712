// Adapters on disk in PEFT's format: adapter_config.json + adapter_model.safetensors, in one of
// two layouts, both read and written, converted exactly:
// - `transformers` (default): the module and parameter names of transformers'
//   DeepseekV4ForCausalLM, what PeftModel.from_pretrained applies (peft-transformers.ts);
// - `official`: keys `base_model.model.<official module>.lora_A.weight` [r, in] /
//   `.lora_B.weight` [out, r], for DeepSeek's own inference code.
// Saved F32, atomically (the folder appears whole or not at all); F32, F16 and BF16 load.
// adapter_config.json also records the base's config fingerprint (`v4tune.base_config_fingerprint`),
// the layout, and v4tune's own options (so v4tune reads its adapter back as it was).
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { readJsonFile, writeDirAtomic } from '../fsutil.js';
import { bf16BytesToF32, f16BytesToF32, f32ToBytes } from '../model/formats.js';
import { SafetensorsFile, writeSafetensorsFile, type TensorSpec } from '../model/safetensors.js';
import { VERSION } from '../version.js';
import type { V4Config } from '../model/config.js';
import { Adapter, assertFiniteFactors, type LoraLayer } from './adapter.js';
import { fromTransformersLayout, isTransformersLayout, moduleRecord, MTP_REASON, toTransformersLayout, type StoredPairs } from './peft-transformers.js';
import { loraScaling, resolveLoraOptions, type ResolvedLoraOptions } from './config.js';
import { patternValue } from './patterns.js';
import { peftKey } from '../model/layout.js';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';

/** the PEFT key of a module's factor (defined with the model's names: the model names its gradients so) */
export { peftKey };

const KEY_RE = /^base_model\.model\.(.+)\.lora_(A|B)(?:\.default)?\.weight$/;

export type AdapterLayout = 'transformers' | 'official';
export const ADAPTER_LAYOUTS: readonly AdapterLayout[] = ['transformers', 'official'];

/** adapter_config.json as v4tune writes it in the official layout */
export function adapterConfigJson(a: Adapter): Record<string, unknown> {
  const o = a.options;
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: a.baseModel,
    r: o.r,
    lora_alpha: o.alpha,
    target_modules: o.targets,
    rank_pattern: o.rankPattern,
    alpha_pattern: o.alphaPattern,
    use_rslora: o.rsLoRA,
    lora_dropout: o.dropout,
    bias: 'none',
    fan_in_fan_out: false,
    init_lora_weights: o.init === 'kaiming' ? true : 'gaussian',
    modules_to_save: null,
    inference_mode: true,
    v4tune: { version: VERSION, base_config_fingerprint: a.fingerprint, seed: o.seed, layout: 'official' },
  };
}

export interface SaveAdapterOptions {
  /** transformers (default) or official */
  layout?: AdapterLayout;
  /**
   * the base's config: the transformers layout stacks routed experts per layer and needs its
   * n_routed_experts when the adapter does not cover every expert (a profiled subset)
   */
  config?: V4Config;
}

/** the routed experts per layer the transformers layout stacks, or null when the adapter cannot tell */
function expertCount(a: Adapter, config?: V4Config): number | null {
  if (config) return config.n_routed_experts;
  let max = -1;
  for (const m of a.layers.keys()) {
    const e = /\.ffn\.experts\.(\d+)\./.exec(m);
    if (e) max = Math.max(max, Number(e[1]));
  }
  if (max < 0) return 0;
  return Object.keys(a.options.expertSubset).length === 0 ? max + 1 : null;
}

/**
 * Write `dir` (replacing it whole): adapter_config.json and F32 adapter_model.safetensors, in the
 * transformers layout (default) or the official one.
 */
export async function saveAdapter(a: Adapter, dir: string, opts: SaveAdapterOptions = {}): Promise<void> {
  const layout = opts.layout ?? 'transformers';
  if (!ADAPTER_LAYOUTS.includes(layout)) throw new InputError(`adapter layout must be transformers or official (got ${JSON.stringify(layout)})`);
  const tensors: Array<TensorSpec & { data: Uint8Array }> = [];
  let cfg: Record<string, unknown>;
  if (layout === 'official') {
    for (const m of a.modules()) {
      const l = a.layers.get(m)!;
      tensors.push({ name: peftKey(m, 'A'), dtype: 'F32', shape: [l.r, l.in], data: f32ToBytes(l.A) });
      tensors.push({ name: peftKey(m, 'B'), dtype: 'F32', shape: [l.out, l.r], data: f32ToBytes(l.B) });
    }
    cfg = adapterConfigJson(a);
  } else {
    const E = expertCount(a, opts.config);
    if (E === null) throw new InputError(`${dir}: the transformers layout stacks every routed expert of a layer; this adapter covers a subset of them, so saving it needs the base's config (saveAdapter(adapter, dir, { config })) — or use the official layout`);
    const o = a.options;
    const t = toTransformersLayout(a.layers, E, o.r, o.alpha, o.rsLoRA);
    for (const x of t.tensors) tensors.push({ name: x.name, dtype: 'F32', shape: x.shape, data: f32ToBytes(x.data) });
    cfg = {
      peft_type: 'LORA',
      task_type: 'CAUSAL_LM',
      base_model_name_or_path: a.baseModel,
      ...t.config,
      lora_dropout: 0,
      bias: 'none',
      fan_in_fan_out: false,
      init_lora_weights: true,
      modules_to_save: null,
      inference_mode: true,
      v4tune: {
        version: VERSION,
        base_config_fingerprint: a.fingerprint,
        seed: o.seed,
        layout: 'transformers',
        options: { r: o.r, lora_alpha: o.alpha, target_modules: o.targets, rank_pattern: o.rankPattern, alpha_pattern: o.alphaPattern, use_rslora: o.rsLoRA, lora_dropout: o.dropout, init: o.init, expert_subset: o.expertSubset },
        modules: moduleRecord(a.layers),
        ...(t.notInTransformers.length ? { not_in_transformers: { reason: MTP_REASON, modules: t.notInTransformers } } : {}),
      },
    };
  }
  tensors.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  await writeDirAtomic(dir, (tmp) => {
    writeFileSync(join(tmp, ADAPTER_CONFIG), `${JSON.stringify(cfg, null, 2)}\n`);
    writeSafetensorsFile(join(tmp, ADAPTER_WEIGHTS), tensors, { format: 'pt' });
  }, { kind: 'adapter' });
}

export interface LoadAdapterOptions {
  /** where the one-line warning goes (adapter without a base fingerprint); default stderr */
  warn?: (line: string) => void;
  /** read only the modules it accepts (a rank of an expert-parallel run: its routed experts and the replicated modules) */
  holds?: (module: string) => boolean;
}

function toF32(f: SafetensorsFile, key: string): Float32Array {
  const e = f.entries.get(key)!;
  if (e.dtype === 'F32') {
    // read straight into the float array (safetensors and the host are little-endian): one fresh
    // buffer, not two and a copy
    const out = new Float32Array((e.end - e.begin) >> 2);
    f.readInto(e.begin, new Uint8Array(out.buffer), key);
    return out;
  }
  const b = f.read(key);
  switch (e.dtype) {
    case 'F16': return f16BytesToF32(b);
    case 'BF16': return bf16BytesToF32(b);
    default: throw new InputError(`${f.path}: tensor ${key} is ${e.dtype}; adapters must be F32, F16 or BF16`);
  }
}

/**
 * Read a PEFT LoRA adapter folder. Every module needs both factors with A [r, in] and B [out, r];
 * r must agree with adapter_config.json (r or rank_pattern). Apply it with adapter.assertFits(config).
 */
export async function loadAdapter(dir: string, opts: LoadAdapterOptions = {}): Promise<Adapter> {
  const cfgPath = join(dir, ADAPTER_CONFIG);
  const wPath = join(dir, ADAPTER_WEIGHTS);
  if (!existsSync(cfgPath)) throw new InputError(`${dir}: no ${ADAPTER_CONFIG} (not a PEFT adapter folder)`);
  if (!existsSync(wPath)) throw new InputError(`${dir}: no ${ADAPTER_WEIGHTS}`);
  const cfg = readJsonFile(cfgPath) as Record<string, unknown>;
  if (typeof cfg !== 'object' || cfg === null) throw new InputError(`${cfgPath}: not a JSON object`);
  if (cfg.peft_type !== 'LORA') throw new InputError(`${cfgPath}: peft_type is ${JSON.stringify(cfg.peft_type)}, v4tune reads LORA adapters`);
  const v4 = (cfg.v4tune ?? {}) as { base_config_fingerprint?: unknown; seed?: unknown; options?: Record<string, unknown>; modules?: unknown };
  const fingerprint = typeof v4.base_config_fingerprint === 'string' ? v4.base_config_fingerprint : null;
  if (fingerprint === null) {
    (opts.warn ?? ((l: string) => process.stderr.write(`warning: ${l}\n`)))(`${dir}: the adapter records no base config fingerprint (made by another tool?); v4tune cannot check it fits the base`);
  }
  const f = SafetensorsFile.open(wPath);
  try {
    const modules = new Map<string, { A?: string; B?: string }>();
    for (const key of f.entries.keys()) {
      const m = KEY_RE.exec(key);
      if (!m) throw new InputError(`${wPath}: tensor ${key} is not a LoRA factor (base_model.model.<module>.lora_A|lora_B.weight)`);
      const e = modules.get(m[1]!) ?? {};
      e[m[2] as 'A' | 'B'] = key;
      modules.set(m[1]!, e);
    }
    for (const [module, k] of modules) {
      if (!k.A || !k.B) throw new InputError(`${wPath}: module ${module} has lora_${k.A ? 'A' : 'B'} but no lora_${k.A ? 'B' : 'A'}`);
      const sa = f.entries.get(k.A)!.shape;
      const sb = f.entries.get(k.B)!.shape;
      if (sa.length !== 2 || sb.length !== 2 || sa[0] !== sb[1]) {
        throw new InputError(`${wPath}: ${k.A} is [${sa.join(', ')}] and ${k.B} is [${sb.join(', ')}]; expected A [r, in] and B [out, r]`);
      }
    }
    const transformers = isTransformersLayout([...modules.keys()].map((m) => `base_model.model.${m}`));
    const num = (v: unknown, dflt: number): number => (typeof v === 'number' ? v : dflt);
    let options: ResolvedLoraOptions;
    let layers: Map<string, LoraLayer>;
    if (transformers) {
      const pairs: StoredPairs = new Map();
      for (const [module, k] of modules) {
        pairs.set(`base_model.model.${module}`, { A: toF32(f, k.A!), B: toF32(f, k.B!), aShape: f.entries.get(k.A!)!.shape, bShape: f.entries.get(k.B!)!.shape });
      }
      const r = num(cfg.r, 8);
      const tp = cfg.target_parameters;
      layers = fromTransformersLayout(pairs, {
        r,
        lora_alpha: num(cfg.lora_alpha, r),
        use_rslora: cfg.use_rslora === true,
        target_parameters: Array.isArray(tp) ? (tp as string[]) : [],
        rank_pattern: (cfg.rank_pattern ?? {}) as Record<string, number>,
        alpha_pattern: (cfg.alpha_pattern ?? {}) as Record<string, number>,
        modules: typeof v4.modules === 'object' && v4.modules !== null ? (v4.modules as Record<string, { r: number; alpha: number; scaling: number }>) : null,
      }, wPath);
      const vo = v4.options;
      options = vo
        ? resolveLoraOptions({
          r: vo.r as number, alpha: vo.lora_alpha as number, targets: vo.target_modules as string[],
          rankPattern: (vo.rank_pattern ?? {}) as Record<string, number>, alphaPattern: (vo.alpha_pattern ?? {}) as Record<string, number>,
          rsLoRA: vo.use_rslora === true, dropout: num(vo.lora_dropout, 0), seed: typeof v4.seed === 'number' ? v4.seed : 0,
          init: vo.init === 'gaussian' ? 'gaussian' : 'kaiming', expertSubset: (vo.expert_subset ?? {}) as Record<string, number[]>,
        }, cfgPath)
        : resolveLoraOptions({ r, alpha: num(cfg.lora_alpha, r), targets: officialPatterns(layers.keys()), rsLoRA: cfg.use_rslora === true, dropout: num(cfg.lora_dropout, 0) }, cfgPath);
    } else {
      const targets = Array.isArray(cfg.target_modules) ? (cfg.target_modules as string[]) : typeof cfg.target_modules === 'string' ? [cfg.target_modules] : [];
      if (targets.length === 0) throw new InputError(`${cfgPath}: target_modules is missing`);
      options = resolveLoraOptions({
        r: cfg.r as number,
        alpha: (cfg.lora_alpha ?? cfg.r) as number,
        targets,
        rankPattern: (cfg.rank_pattern ?? {}) as Record<string, number>,
        alphaPattern: (cfg.alpha_pattern ?? {}) as Record<string, number>,
        rsLoRA: cfg.use_rslora === true,
        dropout: (cfg.lora_dropout ?? 0) as number,
        seed: typeof v4.seed === 'number' ? v4.seed : 0,
        init: cfg.init_lora_weights === 'gaussian' ? 'gaussian' : 'kaiming',
      }, cfgPath);
      layers = new Map<string, LoraLayer>();
      for (const [module, k] of modules) {
        if (opts.holds && !opts.holds(module)) continue;
        const sa = f.entries.get(k.A!)!.shape;
        const sb = f.entries.get(k.B!)!.shape;
        const r = sa[0]!;
        const wantR = patternValue(options.rankPattern, module, options.r);
        if (r !== wantR) throw new InputError(`${wPath}: ${k.A} has rank ${r} but ${ADAPTER_CONFIG} gives r = ${wantR}`);
        const alpha = patternValue(options.alphaPattern, module, options.alpha);
        layers.set(module, { A: toF32(f, k.A!), B: toF32(f, k.B!), r, alpha, scaling: loraScaling(alpha, r, options.rsLoRA), in: sa[1]!, out: sb[0]! });
      }
    }
    if (opts.holds) for (const m of [...layers.keys()]) if (!opts.holds(m)) layers.delete(m);
    if (layers.size === 0) throw new InputError(`${wPath}: holds no LoRA factors`);
    assertFiniteFactors(layers, wPath);
    return new Adapter(options, layers, typeof cfg.base_model_name_or_path === 'string' ? cfg.base_model_name_or_path : '', fingerprint);
  } finally {
    f.close();
  }
}

/** dotted-glob patterns (patterns.ts) covering official modules: `layers.N.` dropped, expert ids as `*` */
function officialPatterns(modules: Iterable<string>): string[] {
  const out = new Set<string>();
  for (const m of modules) out.add(m.replace(/^layers\.\d+\./, '').replace(/^(mtp)\.\d+\./, '$1.*.').replace(/\.experts\.\d+\./, '.experts.*.'));
  return [...out].sort();
}
