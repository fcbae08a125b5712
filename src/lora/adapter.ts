// An adapter: for each adapted module W (out x in) of the base, LoRA factors A (r x in) and
// B (out x r) and a scaling, so the adapted weight is W + scaling · B A (PEFT's lora layer).
// Module names are the official ones (`layers.3.attn.wo_a`, `layers.0.ffn.experts.7.w1`,
// `mtp.0.attn.wq_a`); shapes are the base's logical (dequantised) shapes, FP4 included.
import { firstNonFiniteNative } from '../backend/native/formats.js';
import { firstNonFinite, InputError } from '../errors.js';
import { configFingerprint, type V4Config } from '../model/config.js';
import { tensorRng } from '../random.js';
import { loraScaling, resolveLoraOptions, type LoraOptions, type ResolvedLoraOptions } from './config.js';
import { adaptableModules, patternValue, selectTargets } from './patterns.js';

/** The LoRA pair of one module (the shape the model consumes: A, B, r, scaling). */
export interface LoraLayer {
  /** [r, in] row-major */
  readonly A: Float32Array;
  /** [out, r] row-major */
  readonly B: Float32Array;
  readonly r: number;
  readonly alpha: number;
  /** alpha / r, or alpha / sqrt(r) with rsLoRA */
  readonly scaling: number;
  readonly in: number;
  readonly out: number;
}

export class Adapter {
  /** options the adapter was made with (from adapter_config.json when loaded) */
  readonly options: ResolvedLoraOptions;
  /** official module name -> its LoRA pair */
  readonly layers: ReadonlyMap<string, LoraLayer>;
  /** base_model_name_or_path */
  readonly baseModel: string;
  /** configFingerprint of the base it was made for; null for an adapter from another tool */
  readonly fingerprint: string | null;

  constructor(options: ResolvedLoraOptions, layers: Map<string, LoraLayer>, baseModel: string, fingerprint: string | null) {
    this.options = options;
    this.layers = layers;
    this.baseModel = baseModel;
    this.fingerprint = fingerprint;
  }

  /** adapted module names, sorted */
  modules(): string[] {
    return [...this.layers.keys()].sort();
  }

  /** the LoRA pair of a module, if it is adapted */
  factors(module: string): LoraLayer | undefined {
    return this.layers.get(module);
  }

  /**
   * ΔW = scaling · B A, [out, in] row-major (what a merge adds to the base weight): each element
   * Σ_k B[o][k]·A[k][i] in float32, one fused multiply-add a term over k in order (terms with
   * B[o][k] = 0 skipped), times scaling rounded once (loraDelta); kernels/cpu/requant.cpp computes
   * the same bits
   */
  delta(module: string): Float32Array {
    const l = this.layers.get(module);
    if (!l) throw new InputError(`adapter has no module ${module}`);
    return loraDelta(l);
  }

  /**
   * Refuse to apply this adapter to a base it was not made for: another config fingerprint, a
   * module the base does not have, or a module of another shape (InputError naming `where`).
   */
  assertFits(config: V4Config, where: string): void {
    const fp = configFingerprint(config);
    if (this.fingerprint !== null && this.fingerprint !== fp) {
      throw new InputError(`${where}: the adapter was made for a base with config fingerprint ${this.fingerprint}, this base has ${fp}`);
    }
    const base = new Map(adaptableModules(config).map((m) => [m.name, m]));
    for (const [name, l] of this.layers) {
      const m = base.get(name);
      if (!m) throw new InputError(`${where}: the adapter adapts ${name}, which this base has no adaptable module for`);
      if (m.in !== l.in || m.out !== l.out) {
        throw new InputError(`${where}: ${name} is [${m.out}, ${m.in}] in the base but the adapter's B·A is [${l.out}, ${l.in}]`);
      }
    }
  }
}

/** anything with a V4 config: a Checkpoint, a loaded model */
export interface AdapterBase {
  readonly config: V4Config;
  /** the base folder, recorded as base_model_name_or_path */
  readonly dir?: string;
}

/**
 * A fresh adapter on the modules `targets` selects, initialised as PEFT does: A Kaiming-uniform
 * with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)) (or normal with std 1/r with init "gaussian"), B = 0,
 * so the adapted model starts equal to the base. Seeded per module: the same options give the
 * same adapter whatever the order of modules. `holds`: create only the modules it accepts (a rank
 * of an expert-parallel run holds only its routed experts'); each is the one the whole adapter has.
 */
export function createAdapter(base: AdapterBase, opts: LoraOptions, holds: (module: string) => boolean = () => true): Adapter {
  const o = resolveLoraOptions(opts);
  const layers = new Map<string, LoraLayer>();
  for (const m of selectTargets(o.targets, base.config)) {
    const ex = /^((?:layers|mtp)\.\d+)\.ffn\.experts\.(\d+)\./.exec(m.name);
    const allowed = ex ? o.expertSubset[ex[1]!] : undefined;
    if (allowed && !allowed.includes(Number(ex![2]))) continue;
    if (!holds(m.name)) continue;
    const r = patternValue(o.rankPattern, m.name, o.r);
    if (r > Math.min(m.in, m.out)) {
      throw new InputError(`lora.${r === o.r ? 'r' : 'rank_pattern'}: rank ${r} exceeds what ${m.name} (${m.out} × ${m.in}) can use: at most ${Math.min(m.in, m.out)} (lower it, or leave the module out of lora.targets)`);
    }
    const alpha = patternValue(o.alphaPattern, m.name, o.alpha);
    const rng = tensorRng(o.seed, `lora:${m.name}`);
    const A = new Float32Array(r * m.in);
    if (o.init === 'kaiming') {
      const bound = 1 / Math.sqrt(m.in);
      for (let i = 0; i < A.length; i++) A[i] = (2 * rng() - 1) * bound;
    } else {
      for (let i = 0; i < A.length; i += 2) {
        const rad = Math.sqrt(-2 * Math.log(1 - rng())) / r;
        const th = 2 * Math.PI * rng();
        A[i] = rad * Math.cos(th);
        if (i + 1 < A.length) A[i + 1] = rad * Math.sin(th);
      }
    }
    layers.set(m.name, { A, B: new Float32Array(m.out * r), r, alpha, scaling: loraScaling(alpha, r, o.rsLoRA), in: m.in, out: m.out });
  }
  return new Adapter(o, layers, base.dir ?? '', configFingerprint(base.config));
}

/** Refuse factors holding NaN or ±Infinity (a diverged run's adapter is never applied or merged). */
export function assertFiniteFactors(layers: ReadonlyMap<string, LoraLayer>, file: string): void {
  for (const [module, l] of layers) {
    for (const [which, x] of [['lora_A', l.A], ['lora_B', l.B]] as const) {
      const bad = firstNonFiniteNative(x) ?? firstNonFinite(x);
      if (bad >= 0) throw new InputError(`${file}: ${module}.${which} holds ${x[bad]} at element ${bad}; the adapter is unusable (a diverged run?)`);
    }
  }
}

// the largest float32, and the value halfway from it to 2^128, where rounding to float32 overflows
const F32_MAX = 3.4028234663852886e38;
const F32_HALFWAY_TO_INF = 3.4028235677973366e38;

/**
 * The float32 nearest a·b + c for float32 values a, b, c, ties to even — one fused multiply-add as
 * float32 hardware rounds it. a·b is exact in double (two 24-bit significands) and s = a·b + c is
 * rounded once in double; rounding s again to float32 gives the once-rounded result except where s
 * is exactly halfway between two float32 values and was itself rounded: then the sign of its
 * rounding error (TwoSum) picks the neighbour.
 */
export function fma32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const r = Math.fround(s);
  if (r === s || !Number.isFinite(s)) return r;
  const bb = s - p;
  const t = (p - (s - bb)) + (c - bb);
  if (t === 0) return r;
  if (!Number.isFinite(r)) return Math.abs(s) === F32_HALFWAY_TO_INF && Math.sign(t) !== Math.sign(s) ? Math.sign(s) * F32_MAX : r;
  const other = 2 * s - r; // the other float32 neighbour, when s is halfway between the two
  if (Math.fround(other) !== other) return r;
  return (t > 0) === (other > r) ? other : r;
}

/**
 * scaling · B A of one LoRA module, [out, in] row-major, as Adapter.delta defines it (and
 * kernels/cpu/requant.cpp computes it), all in float32: d = fma(B[o][k], A[k][i], d) over k in
 * order from 0 (terms with B[o][k] = 0 skipped), then d · f32(scaling) rounded once
 */
export function loraDelta(l: { A: Float32Array; B: Float32Array; r: number; in: number; out: number; scaling: number }): Float32Array {
  const out = new Float32Array(l.out * l.in);
  const acc = new Float32Array(l.in);
  const s = Math.fround(l.scaling);
  for (let o = 0; o < l.out; o++) {
    acc.fill(0);
    for (let k = 0; k < l.r; k++) {
      const b = l.B[o * l.r + k]!;
      if (b === 0) continue;
      const arow = k * l.in;
      for (let i = 0; i < l.in; i++) acc[i] = fma32(b, l.A[arow + i]!, acc[i]!);
    }
    for (let i = 0; i < l.in; i++) out[o * l.in + i] = acc[i]! * s;
  }
  return out;
}
