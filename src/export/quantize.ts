// The quantize stage: INT4 export of a DeepSeek V4 checkpoint folder (base or merged), streamed
// tensor by tensor (each weight is read dequantised, quantised and written before the next is
// read, so memory stays bounded by a few tensors; the GGUF writer holds one layer's stacked
// routed experts, already quantised).
//
// Quantised: every attention projection (attn.wq_a, wq_b, wkv, wo_a, wo_b), the shared expert
// and every routed expert (w1, w2, w3), in the layers and in the MTP block.
// Kept: embed, head, norms, the router (ffn.gate), the compressors, the indexer, hc_*,
// attn_sink, ape, MTP e_proj/h_proj — small or precision-critical tensors.
//
// Rounding (`method`): `rtn`, round to nearest on each group's grid (int4.ts, gguf.ts Q4_0, q4k.ts
// Q4_K); or
// `gptq`, GPTQ (gptq.ts) against each linear's Hessian from the model's forward over calibration
// rows (calibrate.ts; routed experts: the rows routed to them). The model is loaded on a backend
// for that; a routed expert that no calibration row reached is rounded to nearest (listed in the
// summary). The summary gives, per kind of linear, the layer output error ‖(W − Q)Xᵀ‖ / ‖W Xᵀ‖
// on the calibration inputs of GPTQ and of round to nearest.
//
// Outputs:
// - `gptq`: a safetensors folder in the AutoGPTQ layout (group-wise, see int4.ts): for `X.weight` [out, in]: `X.qweight` I32 [in/8, out] (8 codes per int32 along
//   the input, code k of a word in bits 4k..4k+3), `X.qzeros` I32 [groups, out/8] (zero − 1, 8 per
//   int32 along the output), `X.scales` F16 [groups, out], `X.g_idx` I32 [in] (= c div group_size);
//   kept tensors as BF16 (F32 where they are F32, integers as they are). config.json gets
//   `quantization_config` {quant_method: gptq, bits: 4, group_size, desc_act: false, sym: false,
//   checkpoint_format: gptq}.
// - `gguf-q4_0`: one GGUF file, llama.cpp's `deepseek4` tensor names, Q4_0 for the quantised
//   linears (F16 where the input size is not a multiple of 32), F32 for 1-D and F32 tensors, F16
//   for the other kept matrices. The MTP block is not written (its GGUF names are not known here).
// - `gguf-q4_k`: the same file with llama.cpp's Q4_K super-blocks of 256 (q4k.ts) for the
//   quantised linears, F16 where the input size is not a multiple of 256.
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createBackend } from '../backend/index.js';
import type { BackendName } from '../backend/ops.js';
import { openDataset } from '../data/dataset.js';
import { InputError, V4tuneError } from '../errors.js';
import { writeDirAtomic, writeFileAtomic } from '../fsutil.js';
import { Checkpoint } from '../model/checkpoint.js';
import type { V4Config } from '../model/config.js';
import { f32ToBf16Bytes, f32ToBytes, f32ToF16Bytes } from '../model/formats.js';
import { SafetensorsWriter, type TensorSpec } from '../model/safetensors.js';
import { V4Model } from '../model/v4/model.js';
import { CalibrationSession, HESSIAN_BUDGET_BYTES, type CalibratedHessians, type CalibratedLinear, type CalibrationRow, type Hessian } from './calibrate.js';
import { dequantizeQ4_0, GgmlType, GgufType, GgufWriter, quantizeQ4_0, type GgmlTypeId, type GgufKv, type GgufTensorInfo } from './gguf.js';
import { gptqRows, int4Quantizer, outputErrorSq, q4_0Quantizer, q4kQuantizer, type ColumnQuantizer } from './gptq.js';
import { dequantizeQ4_K, Q4_K_BLOCK, quantizeQ4_K } from './q4k.js';
import { checkGroupable, dequantizeInt4, errorStats, quantizeRtn, type ErrorStats, type Int4Weight } from './int4.js';
import { stampChatTemplate } from '../chat/config.js';

export type QuantFormat = 'gptq' | 'gguf-q4_0' | 'gguf-q4_k';
export type QuantMethod = 'rtn' | 'gptq';

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

export interface QuantizeOptions {
  /** checkpoint folder (config.json + safetensors) */
  model: string;
  /** gptq: the output folder; gguf-q4_0 / gguf-q4_k: the output .gguf file */
  out: string;
  /** replace an output folder v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  format: QuantFormat;
  method: QuantMethod;
  /** INT4 group size along the input (gptq format; Q4_0 blocks are always 32, Q4_K super-blocks 256) */
  groupSize: number;
  /** shard size of the gptq output (default 4 GiB) */
  maxShardBytes?: number;
  /** called after each tensor */
  onTensor?: (done: number, total: number, name: string) => void;
  /** method gptq: the calibration rows and settings (required there) */
  calibration?: CalibrationOptions;
  /**
   * method gptq: the calibration model and Hessians shared with the other formats of a quantize
   * stage (openCalibration; quantizeRecipe passes one); without it this call loads its own
   */
  session?: CalibrationSession;
}

export interface CalibrationOptions {
  /** token rows the model runs on (non-empty) */
  rows: CalibrationRow[];
  /** dampening, a fraction of the mean diagonal of each Hessian (AutoGPTQ damp_percent) */
  damp: number;
  /** backend of the calibration forwards (default auto) */
  backend?: BackendName;
  /** memory bound of one window of Hessians (calibrate.ts; default 4 GiB) */
  hessianBudgetBytes?: number;
  /** where the backend note goes */
  note?: (line: string) => void;
}

export interface KindStats {
  tensors: number;
  weights: number;
  maxAbsError: number;
  meanAbsError: number;
  /** ‖W − Ŵ‖ / ‖W‖ over all weights of the kind */
  relRmsError: number;
  /** method gptq: ‖(W − Ŵ)Xᵀ‖ / ‖W Xᵀ‖ on the calibration inputs X, over the linears of the kind */
  relOutputError?: number;
  /** method gptq: the same for round to nearest (what GPTQ improves on) */
  rtnRelOutputError?: number;
}

export interface QuantizeSummary {
  format: QuantFormat;
  method: QuantMethod;
  model: string;
  out: string;
  groupSize: number;
  tensorsQuantized: number;
  tensorsKept: number;
  /** quantisable linears written unquantised (GGUF F16: input size not a multiple of 32 for Q4_0, 256 for Q4_K) */
  tensorsFallback: string[];
  /** tensors of the checkpoint not written (GGUF: the MTP block) */
  tensorsSkipped: number;
  bytesIn: number;
  bytesOut: number;
  compression: number;
  errors: Partial<Record<LinearKind, KindStats>>;
  /** method gptq: the calibration that fed it */
  calibration?: CalibrationSummary;
}

export interface CalibrationSummary {
  rows: number;
  damp: number;
  /** forwards over the calibration rows for this format (one per window of Hessians; 0 when reused) */
  passes: number;
  /** the Hessians of the previous format of the stage were reused (no forward of its own) */
  reused: boolean;
  /** linears no calibration input reached (routed experts never chosen): rounded to nearest */
  rtnFallback: string[];
}

/** the checkpoint's safetensors bytes (what the shards hold) */
function checkpointBytes(dir: string): number {
  const idx = join(dir, 'model.safetensors.index.json');
  const files = existsSync(idx)
    ? [...new Set(Object.values((JSON.parse(readFileSync(idx, 'utf8')) as { weight_map: Record<string, string> }).weight_map))]
    : ['model.safetensors'];
  return files.reduce((a, f) => a + statSync(join(dir, f)).size, 0);
}

class ErrorAccumulator {
  private readonly acc = new Map<LinearKind, { tensors: number; s: ErrorStats; sumSqW: number }>();
  private readonly outAcc = new Map<LinearKind, { err: number; rtn: number; ref: number }>();
  /** output errors tr(E H Eᵀ) of one linear: GPTQ's, RTN's and the reference tr(W H Wᵀ) */
  addOutput(kind: LinearKind, err: number, rtn: number, ref: number): void {
    const a = this.outAcc.get(kind) ?? { err: 0, rtn: 0, ref: 0 };
    a.err += err;
    a.rtn += rtn;
    a.ref += ref;
    this.outAcc.set(kind, a);
  }
  add(kind: LinearKind, w: Float32Array, recon: Float32Array): void {
    const e = errorStats(w, recon);
    let sumSqW = 0;
    for (let i = 0; i < w.length; i++) sumSqW += w[i]! * w[i]!;
    const a = this.acc.get(kind);
    if (!a) {
      this.acc.set(kind, { tensors: 1, s: e, sumSqW });
      return;
    }
    a.tensors += 1;
    a.s = { maxAbs: Math.max(a.s.maxAbs, e.maxAbs), sumAbs: a.s.sumAbs + e.sumAbs, sumSq: a.s.sumSq + e.sumSq, count: a.s.count + e.count };
    a.sumSqW += sumSqW;
  }
  summary(): Partial<Record<LinearKind, KindStats>> {
    const out: Partial<Record<LinearKind, KindStats>> = {};
    for (const [k, a] of this.acc) {
      out[k] = {
        tensors: a.tensors,
        weights: a.s.count,
        maxAbsError: a.s.maxAbs,
        meanAbsError: a.s.sumAbs / a.s.count,
        relRmsError: a.sumSqW > 0 ? Math.sqrt(a.s.sumSq / a.sumSqW) : 0,
      };
      const o = this.outAcc.get(k);
      if (o && o.ref > 0) {
        out[k]!.relOutputError = Math.sqrt(o.err / o.ref);
        out[k]!.rtnRelOutputError = Math.sqrt(o.rtn / o.ref);
      }
    }
    return out;
  }
}

/** Quantise a checkpoint folder to one INT4 format (see the file comment). */
export async function quantizeCheckpoint(opts: QuantizeOptions): Promise<QuantizeSummary> {
  if (opts.method === 'gptq' && !(opts.calibration && opts.calibration.rows.length > 0)) {
    throw new InputError(`quantize ${opts.model}: method gptq needs calibration rows (the recipe's prepared train split)`);
  }
  const ckpt = await Checkpoint.open(opts.model);
  let rounder: Rounder | null = null;
  try {
    const bytesIn = checkpointBytes(opts.model);
    const errs = new ErrorAccumulator();
    rounder = opts.method === 'gptq' ? await GptqRounder.load(ckpt, opts.calibration!, errs, opts.session) : new RtnRounder(errs);
    const r = opts.format === 'gptq' ? await writeGptq(ckpt, opts, rounder) : await writeGguf(ckpt, opts, rounder);
    const s: QuantizeSummary = { format: opts.format, method: opts.method, model: opts.model, out: opts.out, groupSize: opts.groupSize, bytesIn, compression: bytesIn / r.bytesOut, ...r };
    const cal = rounder.calibration();
    if (cal) s.calibration = cal;
    return s;
  } finally {
    rounder?.close();
    await ckpt.close();
  }
}

// ---------------------------------------------------------------- rounding: RTN or GPTQ

/** How each quantised linear is rounded; adds its errors to the accumulator it was made with. */
interface Rounder {
  /** the INT4 group grid of W [out, inF] (gptq format) */
  int4(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, groupSize: number): Promise<Int4Weight>;
  /** the Q4_0 bytes of W [out, inF] (GGUF) */
  q4_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array>;
  /** the Q4_K bytes of W [out, inF] (GGUF) */
  q4_k(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array>;
  /** quantise a list of linears in this order (GPTQ plans its Hessian windows on it) */
  plan(order: readonly { name: string; out: number; inF: number }[]): void;
  calibration(): CalibrationSummary | null;
  close(): void;
  readonly errs: ErrorAccumulator;
}

function rtnInt4(name: string, w: Float32Array, out: number, inF: number, gs: number): Int4Weight {
  try {
    return quantizeRtn(w, out, inF, gs);
  } catch (e) {
    if (e instanceof RangeError) throw new InputError(`tensor ${name}: ${e.message}`);
    throw e;
  }
}

function rtnQ4_0(name: string, w: Float32Array): Uint8Array {
  if (!w.every(Number.isFinite)) throw new InputError(`tensor ${name}: non-finite weight`);
  return quantizeQ4_0(w);
}

function rtnQ4_K(name: string, w: Float32Array): Uint8Array {
  if (!w.every(Number.isFinite)) throw new InputError(`tensor ${name}: non-finite weight`);
  return quantizeQ4_K(w);
}

class RtnRounder implements Rounder {
  constructor(readonly errs: ErrorAccumulator) {}
  async int4(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, gs: number): Promise<Int4Weight> {
    const x = rtnInt4(name, w, out, inF, gs);
    this.errs.add(kind, w, dequantizeInt4(x));
    return x;
  }
  async q4_0(name: string, kind: LinearKind, w: Float32Array): Promise<Uint8Array> {
    const q = rtnQ4_0(name, w);
    this.errs.add(kind, w, dequantizeQ4_0(q, w.length));
    return q;
  }
  async q4_k(name: string, kind: LinearKind, w: Float32Array): Promise<Uint8Array> {
    const q = rtnQ4_K(name, w);
    this.errs.add(kind, w, dequantizeQ4_K(q, w.length));
    return q;
  }
  plan(): void {}
  calibration(): null {
    return null;
  }
  close(): void {}
}

function checkDamp(cal: CalibrationOptions): void {
  if (!(cal.damp > 0)) throw new InputError(`export.gptq_damp must be a positive number (got ${cal.damp})`);
}

/** the calibration model of `ckpt` on the calibration backend, as a session */
async function loadSession(ckpt: Checkpoint, cal: CalibrationOptions): Promise<CalibrationSession> {
  const backend = await createBackend(cal.backend ?? 'auto', cal.note);
  return new CalibrationSession(await V4Model.load(ckpt, backend), cal.rows, cal.hessianBudgetBytes ?? HESSIAN_BUDGET_BYTES);
}

/** A calibration session for the formats of one stage; close() frees its model and checkpoint. */
export async function openCalibration(model: string, cal: CalibrationOptions): Promise<{ session: CalibrationSession; close: () => Promise<void> }> {
  checkDamp(cal);
  const ckpt = await Checkpoint.open(model);
  try {
    const session = await loadSession(ckpt, cal);
    return {
      session,
      close: async () => {
        session.model.dispose();
        await ckpt.close();
      },
    };
  } catch (e) {
    await ckpt.close();
    throw e;
  }
}

class GptqRounder implements Rounder {
  private hessians: CalibratedHessians | null = null;
  private passesBefore = 0;
  private reused = false;
  private readonly fallback: string[] = [];

  private constructor(readonly errs: ErrorAccumulator, private readonly session: CalibrationSession, private readonly owned: boolean, private readonly cal: CalibrationOptions) {}

  /** the shared session, or the checkpoint's model loaded on the calibration backend */
  static async load(ckpt: Checkpoint, cal: CalibrationOptions, errs: ErrorAccumulator, session?: CalibrationSession): Promise<GptqRounder> {
    checkDamp(cal);
    if (session) return new GptqRounder(errs, session, false, cal);
    return new GptqRounder(errs, await loadSession(ckpt, cal), true, cal);
  }

  plan(order: readonly { name: string; out: number; inF: number }[]): void {
    const G = this.session.model.config.o_groups;
    const linears: CalibratedLinear[] = order.map((l) => ({ module: l.name.slice(0, -'.weight'.length), cols: l.inF, groups: l.name.endsWith('.attn.wo_a.weight') ? G : 1 }));
    const { hessians, reused } = this.session.hessians(linears);
    this.hessians = hessians;
    this.reused = reused;
    this.passesBefore = hessians.passes;
  }

  /** the Hessian of a linear, or null when no calibration input reached it (then: RTN) */
  private async hessian(name: string): Promise<Hessian | null> {
    if (!this.hessians) throw new V4tuneError('GPTQ: plan() was not called before quantising');
    const h = await this.hessians.get(name.slice(0, -'.weight'.length));
    if (h.tokens > 0) return h;
    this.fallback.push(name);
    return null;
  }

  /**
   * GPTQ of W against h (one run per group of output rows: wo_a's row groups read their own
   * input group), then the errors: weights, and tr(E H Eᵀ) of GPTQ and of `rtn` against tr(W H Wᵀ).
   */
  private run(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, h: Hessian, qz: ColumnQuantizer, rtn: Float32Array): void {
    const groups = h.H.length;
    if (out % groups !== 0) throw new V4tuneError(`GPTQ: ${name} has ${out} output rows, not a multiple of its ${groups} input groups`);
    const rows = out / groups;
    const recon = new Float32Array(out * inF);
    let err = 0;
    let errRtn = 0;
    let ref = 0;
    for (let g = 0; g < groups; g++) {
      let Q: Float64Array;
      try {
        Q = gptqRows(w, inF, g * rows, (g + 1) * rows, h.H[g]!, qz, { damp: this.cal.damp, name: `tensor ${name}` });
      } catch (e) {
        if (e instanceof RangeError) throw new InputError(e.message);
        throw e;
      }
      recon.set(Q, g * rows * inF);
      const W = w.subarray(g * rows * inF, (g + 1) * rows * inF);
      const E = new Float64Array(rows * inF);
      const Er = new Float64Array(rows * inF);
      for (let i = 0; i < E.length; i++) {
        E[i] = W[i]! - Q[i]!;
        Er[i] = W[i]! - rtn[g * rows * inF + i]!;
      }
      err += outputErrorSq(E, rows, inF, h.H[g]!);
      errRtn += outputErrorSq(Er, rows, inF, h.H[g]!);
      ref += outputErrorSq(W, rows, inF, h.H[g]!);
    }
    this.errs.add(kind, w, recon);
    this.errs.addOutput(kind, err, errRtn, ref);
  }

  int4(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, gs: number): Promise<Int4Weight> {
    return this.quantize(name, kind, w, out, inF, rtnInt4(name, w, out, inF, gs), dequantizeInt4, () => int4Quantizer(out, inF, gs));
  }

  q4_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    return this.quantize(name, kind, w, out, inF, rtnQ4_0(name, w), (b) => dequantizeQ4_0(b, w.length), () => q4_0Quantizer(out, inF));
  }

  q4_k(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    return this.quantize(name, kind, w, out, inF, rtnQ4_K(name, w), (b) => dequantizeQ4_K(b, w.length), () => q4kQuantizer(out, inF));
  }

  /** GPTQ on the grid of `quantizer` when the linear has a Hessian, else its round-to-nearest `rtn`. */
  private async quantize<T>(
    name: string, kind: LinearKind, w: Float32Array, out: number, inF: number,
    rtn: T, dequant: (q: T) => Float32Array, quantizer: () => ColumnQuantizer & { result: T },
  ): Promise<T> {
    const h = await this.hessian(name);
    if (!h) {
      this.errs.add(kind, w, dequant(rtn));
      return rtn;
    }
    const qz = quantizer();
    this.run(name, kind, w, out, inF, h, qz, dequant(rtn));
    return qz.result;
  }

  calibration(): CalibrationSummary {
    return { rows: this.cal.rows.length, damp: this.cal.damp, passes: (this.hessians?.passes ?? 0) - this.passesBefore, reused: this.reused, rtnFallback: this.fallback };
  }

  close(): void {
    if (this.owned) this.session.model.dispose();
  }
}

type WriteResult = Pick<QuantizeSummary, 'tensorsQuantized' | 'tensorsKept' | 'tensorsFallback' | 'tensorsSkipped' | 'bytesOut' | 'errors'>;

const yieldLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

// ---------------------------------------------------------------- GPTQ safetensors

/** AutoGPTQ packing of an INT4 weight: qweight [in/8, out], qzeros [groups, out/8] (zero − 1), scales [groups, out], g_idx [in] */
export function packGptq(x: Int4Weight): { qweight: Int32Array; qzeros: Int32Array; scales: Uint16Array; gIdx: Int32Array } {
  const { out, inF, groupSize } = x;
  const G = inF / groupSize;
  // qweight[i/8, j] holds codes q[j, i..i+7], code k in bits 4k..4k+3
  const qweight = new Int32Array((inF / 8) * out);
  for (let j = 0; j < out; j++) {
    for (let i = 0; i < inF; i++) qweight[(i >> 3) * out + j]! |= x.q[j * inF + i]! << (4 * (i & 7));
  }
  const qzeros = new Int32Array(G * (out / 8));
  const scales = new Uint16Array(G * out);
  for (let g = 0; g < G; g++) {
    for (let j = 0; j < out; j++) {
      qzeros[g * (out / 8) + (j >> 3)]! |= (x.zeros[j * G + g]! - 1) << (4 * (j & 7));
      scales[g * out + j] = x.scaleBits[j * G + g]!;
    }
  }
  const gIdx = new Int32Array(inF);
  for (let i = 0; i < inF; i++) gIdx[i] = Math.floor(i / groupSize);
  return { qweight, qzeros, scales, gIdx };
}

const bytesOf = (a: Int32Array | Uint16Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function gptqConfigJson(src: string, groupSize: number, damp: number): string {
  const cfg = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  delete cfg.expert_dtype;
  cfg.torch_dtype = 'bfloat16';
  cfg.quantization_config = {
    quant_method: 'gptq',
    bits: 4,
    group_size: groupSize,
    desc_act: false,
    sym: false,
    true_sequential: true,
    static_groups: false,
    lm_head: false,
    checkpoint_format: 'gptq',
    damp_percent: damp,
  };
  return `${JSON.stringify(cfg, null, 2)}\n`;
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json'];

async function writeGptq(ckpt: Checkpoint, opts: QuantizeOptions, rounder: Rounder): Promise<WriteResult> {
  const names = ckpt.names();
  // plan every output tensor first (refusing shapes the layout cannot hold before writing anything)
  const specs: TensorSpec[] = [];
  const order: { name: string; out: number; inF: number }[] = [];
  for (const n of names) {
    const m = ckpt.meta(n);
    if (linearKind(n) && m.logicalShape.length === 2) {
      const [out, inF] = m.logicalShape as [number, number];
      const why = checkGroupable(n, out, inF, opts.groupSize) ?? (inF % 8 !== 0 || out % 8 !== 0 ? `${n}: shape [${out}, ${inF}] is not a multiple of 8 in both dimensions (GPTQ packs 8 codes per int32)` : null);
      if (why) throw new InputError(`${opts.model}: ${why}; choose export.group_size dividing every linear's input size`);
      order.push({ name: n, out, inF });
      const base = n.slice(0, -'.weight'.length);
      const G = inF / opts.groupSize;
      specs.push({ name: `${base}.qweight`, dtype: 'I32', shape: [inF / 8, out] });
      specs.push({ name: `${base}.qzeros`, dtype: 'I32', shape: [G, out / 8] });
      specs.push({ name: `${base}.scales`, dtype: 'F16', shape: [G, out] });
      specs.push({ name: `${base}.g_idx`, dtype: 'I32', shape: [inF] });
    } else if (m.format === 'int') {
      specs.push({ name: n, dtype: m.dtype as TensorSpec['dtype'], shape: m.shape });
    } else {
      specs.push({ name: n, dtype: m.format === 'f32' ? 'F32' : 'BF16', shape: m.logicalShape });
    }
  }
  rounder.plan(order);
  const errs = rounder.errs;
  let quantized = 0;
  let kept = 0;
  let bytesOut = 0;
  await writeDirAtomic(opts.out, async (tmp) => {
    writeFileSync(join(tmp, 'config.json'), gptqConfigJson(opts.model, opts.groupSize, opts.calibration?.damp ?? 0.01));
    for (const f of TOKENIZER_FILES) if (existsSync(join(opts.model, f))) copyFileSync(join(opts.model, f), join(tmp, f));
    stampChatTemplate(tmp);
    const writer = new SafetensorsWriter(tmp, specs, { maxShardBytes: opts.maxShardBytes });
    try {
      let done = 0;
      for (const n of names) {
        const m = ckpt.meta(n);
        const kind = linearKind(n);
        if (kind && m.logicalShape.length === 2) {
          const [out, inF] = m.logicalShape as [number, number];
          const w = await ckpt.f32(n);
          const x = await rounder.int4(n, kind, w, out, inF, opts.groupSize);
          const p = packGptq(x);
          const base = n.slice(0, -'.weight'.length);
          writer.add(`${base}.qweight`, bytesOf(p.qweight));
          writer.add(`${base}.qzeros`, bytesOf(p.qzeros));
          writer.add(`${base}.scales`, bytesOf(p.scales));
          writer.add(`${base}.g_idx`, bytesOf(p.gIdx));
          quantized++;
        } else {
          writer.add(n, await keptBytes(ckpt, n));
          kept++;
        }
        opts.onTensor?.(++done, names.length, n);
        await yieldLoop();
      }
      writer.finish();
    } catch (e) {
      writer.abort();
      throw e;
    }
    writeFileSync(join(tmp, 'v4tune-quantize.json'), `${JSON.stringify({ format: 'gptq', method: opts.method, group_size: opts.groupSize, source: opts.model, quantized: names.filter((n) => linearKind(n)), errors: errs.summary(), calibration: rounder.calibration() }, null, 2)}\n`);
    bytesOut = writer.shardFiles.reduce((a, f) => a + statSync(join(tmp, f)).size, 0);
  }, { kind: 'quantized', overwrite: opts.overwrite, inputs: [opts.model] });
  return { tensorsQuantized: quantized, tensorsKept: kept, tensorsFallback: [], tensorsSkipped: 0, bytesOut, errors: errs.summary() };
}

/** a kept tensor's bytes in the gptq output: BF16 / F32 / F16 / integers as stored, FP8/FP4 dequantised to BF16 */
async function keptBytes(ckpt: Checkpoint, n: string): Promise<Uint8Array> {
  const m = ckpt.meta(n);
  if (m.format === 'int' || m.format === 'bf16' || m.format === 'f32') return (await ckpt.raw(n)).data;
  return f32ToBf16Bytes(await ckpt.f32(n));
}

// ---------------------------------------------------------------- GGUF

/** llama.cpp `deepseek4` names of per-layer tensors (official suffix → GGUF suffix) */
const GGUF_LAYER_NAMES: Readonly<Record<string, string>> = {
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
const GGUF_TOP_NAMES: Readonly<Record<string, string>> = {
  'embed.weight': 'token_embd.weight',
  'head.weight': 'output.weight',
  'norm.weight': 'output_norm.weight',
  hc_head_fn: 'output_hc_fn.weight',
  hc_head_base: 'output_hc_base.weight',
  hc_head_scale: 'output_hc_scale.weight',
};
const GGUF_EXPERT_NAMES: Readonly<Record<string, string>> = { w1: 'ffn_gate_exps.weight', w2: 'ffn_down_exps.weight', w3: 'ffn_up_exps.weight' };

/** the GGUF name of an official tensor; null for one that is not written (MTP) */
export function ggufName(name: string): string | null {
  if (GGUF_TOP_NAMES[name]) return GGUF_TOP_NAMES[name]!;
  const m = /^layers\.(\d+)\.(.+)$/.exec(name);
  if (!m) return null;
  const e = /^ffn\.experts\.\d+\.(w[123])\.weight$/.exec(m[2]!);
  if (e) return `blk.${m[1]}.${GGUF_EXPERT_NAMES[e[1]!]}`;
  const s = GGUF_LAYER_NAMES[m[2]!];
  if (!s) throw new V4tuneError(`GGUF export: no llama.cpp deepseek4 name for tensor ${name}`);
  return `blk.${m[1]}.${s}`;
}

/** llama.cpp's general.file_type of each GGUF format (LLAMA_FTYPE_MOSTLY_Q4_0, _Q4_K_S) */
const GGUF_FILE_TYPE = { 'gguf-q4_0': 2, 'gguf-q4_k': 14 } as const;

/** the `deepseek4.*` hyperparameters and general.* metadata */
export function ggufMetadata(c: V4Config, name: string, format: 'gguf-q4_0' | 'gguf-q4_k' = 'gguf-q4_0'): GgufKv[] {
  const A = 'deepseek4';
  const u32 = (key: string, v: number): GgufKv => ({ key: `${A}.${key}`, type: GgufType.UINT32, value: v });
  const f32 = (key: string, v: number): GgufKv => ({ key: `${A}.${key}`, type: GgufType.FLOAT32, value: v });
  const kv: GgufKv[] = [
    { key: 'general.architecture', type: GgufType.STRING, value: A },
    { key: 'general.name', type: GgufType.STRING, value: name },
    { key: 'general.file_type', type: GgufType.UINT32, value: GGUF_FILE_TYPE[format] },
    { key: 'general.quantization_version', type: GgufType.UINT32, value: 2 },
    { key: 'general.alignment', type: GgufType.UINT32, value: 32 },
    u32('block_count', c.num_hidden_layers),
    u32('context_length', c.rope_scaling ? c.rope_scaling.original_max_position_embeddings * c.rope_scaling.factor : 0),
    u32('embedding_length', c.hidden_size),
    u32('vocab_size', c.vocab_size),
    u32('attention.head_count', c.num_attention_heads),
    u32('attention.head_count_kv', 1),
    u32('attention.key_length', c.head_dim),
    u32('attention.value_length', c.head_dim),
    u32('attention.q_lora_rank', c.q_lora_rank),
    f32('attention.layer_norm_rms_epsilon', c.rms_norm_eps),
    u32('attention.sliding_window', c.sliding_window),
    u32('rope.dimension_count', c.qk_rope_head_dim),
    f32('rope.freq_base', c.rope_theta),
    u32('expert_count', c.n_routed_experts),
    u32('expert_used_count', c.num_experts_per_tok),
    u32('expert_shared_count', c.n_shared_experts),
    u32('expert_feed_forward_length', c.moe_intermediate_size),
    f32('expert_weights_scale', c.routed_scaling_factor),
    { key: `${A}.expert_weights_norm`, type: GgufType.BOOL, value: c.norm_topk_prob },
    u32('attention.output_groups', c.o_groups),
    u32('attention.output_lora_rank', c.o_lora_rank),
    { key: `${A}.attention.compress_ratios`, type: GgufType.ARRAY, itemType: GgufType.UINT32, value: c.compress_ratios },
    f32('attention.compress_rope_freq_base', c.compress_rope_theta),
    u32('attention.indexer.head_count', c.index_n_heads),
    u32('attention.indexer.key_length', c.index_head_dim),
    u32('attention.indexer.top_k', c.index_topk),
    u32('hash_layer_count', c.num_hash_layers),
    f32('swiglu_limit', c.swiglu_limit),
    u32('hyper_connection.count', c.hc_mult),
    u32('hyper_connection.sinkhorn_iterations', c.hc_sinkhorn_iters),
    f32('hyper_connection.epsilon', c.hc_eps),
    { key: 'tokenizer.ggml.bos_token_id', type: GgufType.UINT32, value: c.bos_token_id },
    { key: 'tokenizer.ggml.eos_token_id', type: GgufType.UINT32, value: c.eos_token_id },
  ];
  if (c.rope_scaling) {
    kv.push(
      { key: `${A}.rope.scaling.type`, type: GgufType.STRING, value: c.rope_scaling.type },
      f32('rope.scaling.factor', c.rope_scaling.factor),
      u32('rope.scaling.original_context_length', c.rope_scaling.original_max_position_embeddings),
      f32('rope.scaling.yarn_beta_fast', c.rope_scaling.beta_fast),
      f32('rope.scaling.yarn_beta_slow', c.rope_scaling.beta_slow),
    );
  }
  return kv;
}

interface GgufItem {
  info: GgufTensorInfo;
  /** official tensors it is made of (several for stacked experts, in expert order) */
  parts: string[];
  /** quantise (to the format's block type) */
  quant: LinearKind | null;
}

async function writeGguf(ckpt: Checkpoint, opts: QuantizeOptions, rounder: Rounder): Promise<WriteResult> {
  const names = ckpt.names();
  const items = new Map<string, GgufItem>();
  let skipped = 0;
  const fallback: string[] = [];
  const k = opts.format === 'gguf-q4_k';
  const block = k ? Q4_K_BLOCK : 32;
  const qtype: GgmlTypeId = k ? GgmlType.Q4_K : GgmlType.Q4_0;
  for (const n of names) {
    const g = ggufName(n);
    if (g === null) {
      skipped++;
      continue;
    }
    const m = ckpt.meta(n);
    const shape = m.logicalShape;
    const kind = linearKind(n);
    const q4 = kind !== null && shape[shape.length - 1]! % block === 0;
    if (kind !== null && !q4) fallback.push(n);
    const type: GgmlTypeId = q4 ? qtype : m.format === 'int' ? GgmlType.I32 : m.format === 'f32' || shape.length === 1 ? GgmlType.F32 : GgmlType.F16;
    const dims = [...shape].reverse();
    const have = items.get(g);
    if (have) {
      // a routed expert: stacked [E, out, in] → ne = [in, out, E]
      have.parts.push(n);
      have.info.dims[2] = have.parts.length;
    } else {
      const stacked = /\.ffn\.experts\.\d+\./.test(n);
      items.set(g, { info: { name: g, dims: stacked ? [...dims, 1] : dims, type }, parts: [n], quant: q4 ? kind : null });
    }
  }
  // experts in index order inside each stacked tensor
  const expertIdx = (n: string): number => Number(/\.experts\.(\d+)\./.exec(n)?.[1] ?? 0);
  for (const it of items.values()) it.parts.sort((a, b) => expertIdx(a) - expertIdx(b));
  const list = [...items.values()];
  const cfgName = (JSON.parse(readFileSync(join(opts.model, 'config.json'), 'utf8')) as { _name_or_path?: string })._name_or_path;
  mkdirSync(dirname(opts.out), { recursive: true });
  const writer = new GgufWriter(opts.out, ggufMetadata(ckpt.config, cfgName ?? 'DeepSeek V4 (v4tune)', k ? 'gguf-q4_k' : 'gguf-q4_0'), list.map((i) => i.info));
  rounder.plan(list.flatMap((it) => (it.quant ? it.parts.map((n) => {
    const [out, inF] = ckpt.meta(n).logicalShape as [number, number];
    return { name: n, out, inF };
  }) : [])));
  const errs = rounder.errs;
  let quantized = 0;
  let kept = 0;
  let done = 0;
  try {
    for (const it of list) {
      const chunks: Uint8Array[] = [];
      for (const n of it.parts) {
        if (it.quant) {
          const [out, inF] = ckpt.meta(n).logicalShape as [number, number];
          const w = await ckpt.f32(n);
          chunks.push(await (k ? rounder.q4_k(n, it.quant, w, out, inF) : rounder.q4_0(n, it.quant, w, out, inF)));
          quantized++;
        } else {
          if (it.info.type === GgmlType.I32) chunks.push(f32ToBytesInt(await ckpt.ints(n)));
          else {
            const w = await ckpt.f32(n);
            chunks.push(it.info.type === GgmlType.F32 ? f32ToBytes(w) : f32ToF16Bytes(w));
          }
          kept++;
        }
        opts.onTensor?.(++done, names.length - skipped, n);
        await yieldLoop();
      }
      writer.add(it.info.name, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
    }
    const bytesOut = writer.finish();
    writeFileAtomic(`${opts.out}.json`, `${JSON.stringify({ format: opts.format, method: opts.method, source: opts.model, fallback_f16: fallback, skipped_mtp: skipped, errors: errs.summary(), calibration: rounder.calibration() }, null, 2)}\n`);
    return { tensorsQuantized: quantized, tensorsKept: kept, tensorsFallback: fallback, tensorsSkipped: skipped, bytesOut, errors: errs.summary() };
  } catch (e) {
    writer.abort();
    throw e;
  }
}

const f32ToBytesInt = (x: Int32Array): Uint8Array => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);

// ---------------------------------------------------------------- the recipe stage

export interface RecipeQuantizeOptions {
  /** input checkpoint folder (default: `<output>/merged` when it holds a config.json, else the recipe's model) */
  model?: string;
  /** output folder (default `<output>/quantized`): `gptq/`, `model-Q4_0.gguf` and `model-Q4_K.gguf` inside */
  out?: string;
  /** formats to write (default: the recipe's export.quantize) */
  formats?: QuantFormat[];
  method?: QuantMethod;
  groupSize?: number;
  /** replace output folders v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  /** a line of the plan */
  log?: (line: string) => void;
  /** a warning (calibration_rows clamped to the train split) */
  warn?: (line: string) => void;
  /** per-format progress */
  onTensor?: (format: QuantFormat, done: number, total: number, name: string) => void;
}

/** where one format's output goes inside the quantize folder */
export function formatOutput(outDir: string, format: QuantFormat): string {
  return format === 'gptq' ? join(outDir, 'gptq') : join(outDir, `model-${format === 'gguf-q4_0' ? 'Q4_0' : 'Q4_K'}.gguf`);
}

/** What the quantize stage reads of a recipe (the calibration fields only for method gptq). */
export interface QuantizeRecipe {
  file: string;
  output: string;
  model: { path?: string };
  data?: { output: string };
  train?: { backend?: BackendName };
  export: { quantize: QuantFormat[]; method: QuantMethod; group_size: number; calibration_rows?: number; gptq_damp?: number };
}

/**
 * The first `export.calibration_rows` rows of the recipe's prepared train split (clamped to the
 * split with a warning); a missing dataset or an empty split is an InputError naming the recipe.
 */
export function calibrationRows(recipe: QuantizeRecipe, warn?: (line: string) => void): CalibrationRow[] {
  const dir = recipe.data?.output;
  if (!dir || !existsSync(join(dir, 'manifest.json'))) {
    throw new InputError(`${recipe.file}: export.method gptq calibrates on the prepared dataset${dir ? ` ${dir}` : ''}, which is not there (run \`v4tune prepare ${recipe.file}\` first, or use method rtn)`);
  }
  const ds = openDataset(dir);
  const have = ds.rowCount('train');
  if (have === 0) throw new InputError(`${recipe.file}: export.method gptq needs calibration rows, but the train split of ${dir} is empty`);
  let want = recipe.export.calibration_rows ?? 64;
  if (want > have) {
    warn?.(`${recipe.file}: export.calibration_rows is ${want} but the train split of ${dir} has ${have} rows; calibrating on ${have}`);
    want = have;
  }
  const rows: CalibrationRow[] = [];
  for (const r of ds.rows('train')) {
    if (rows.length >= want) break;
    rows.push({ input_ids: r.input_ids, segments: r.segments });
  }
  return rows;
}

/** The recipe's export.quantize stage: every requested format from the merged (or base) model. */
export async function quantizeRecipe(recipe: QuantizeRecipe, o: RecipeQuantizeOptions = {}): Promise<QuantizeSummary[]> {
  const merged = join(recipe.output, 'merged');
  const model = o.model ?? (existsSync(join(merged, 'config.json')) ? merged : recipe.model.path ?? join(recipe.output, 'model'));
  if (!existsSync(join(model, 'config.json'))) throw new InputError(`${recipe.file}: model folder ${model} has no config.json (run \`v4tune merge\` or \`v4tune init-model\` first, or give --model)`);
  const formats = o.formats ?? recipe.export.quantize;
  if (formats.length === 0) throw new InputError(`${recipe.file}: export.quantize is empty (list gptq / gguf-q4_0 / gguf-q4_k there, or give --format)`);
  const method = o.method ?? recipe.export.method;
  const groupSize = o.groupSize ?? recipe.export.group_size;
  const outDir = o.out ?? join(recipe.output, 'quantized');
  let calibration: CalibrationOptions | undefined;
  if (method === 'gptq') {
    calibration = { rows: calibrationRows(recipe, o.warn), damp: recipe.export.gptq_damp ?? 0.01, backend: recipe.train?.backend, note: o.log };
  }
  // one calibration model for every format: the Hessians are collected once when they fit one
  // window. The gptq format goes first: its linears (MTP included) cover every GGUF format's.
  const cal = calibration ? await openCalibration(model, calibration) : null;
  const order = calibration ? [...formats].sort((x, y) => Number(y === 'gptq') - Number(x === 'gptq')) : formats;
  try {
    const out = new Map<QuantFormat, QuantizeSummary>();
    for (const format of order) {
      const target = formatOutput(outDir, format);
      const how = calibration ? `, ${calibration.rows.length} calibration rows, damp ${calibration.damp}` : '';
      o.log?.(`quantize ${model} → ${target} (${format}, method ${method}${format === 'gptq' ? `, group size ${groupSize}` : format === 'gguf-q4_0' ? ', Q4_0 blocks of 32' : ', Q4_K super-blocks of 256'}${how})`);
      out.set(format, await quantizeCheckpoint({ model, out: target, overwrite: o.overwrite, format, method, groupSize, calibration, session: cal?.session, onTensor: (d, t, n) => o.onTensor?.(format, d, t, n) }));
    }
    return formats.map((f) => out.get(f)!);
  } finally {
    await cal?.close();
  }
}
