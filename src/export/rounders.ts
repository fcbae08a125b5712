// How the quantize stage rounds each linear: round to nearest (RTN) on the format's grid, or GPTQ
// against the linear's Hessian from a calibration forward (gptq.ts, calibrate.ts), with the
// per-kind error report both feed.
import { createBackend } from '../backend/index.js';
import { firstNonFiniteNative } from '../backend/native/formats.js';
import { gptqFactorNative, gptqGgufNative, gptqInt4Native, int4RtnNative, outputErrorSqNative, q40RtnNative, q4kRtnNative, q80RtnNative } from '../backend/native/gptq.js';
import { InputError, V4tuneError, firstNonFinite } from '../errors.js';
import { Checkpoint } from '../model/checkpoint.js';
import { V4BlockStream } from '../model/v4/model.js';
import { CalibrationSession, HESSIAN_BUDGET_BYTES, type CalibratedHessians, type CalibratedLinear, type Hessian } from './calibrate.js';
import { dequantizeQ4_0, quantizeQ4_0 } from './gguf.js';
import { dequantizeQ8_0, quantizeQ8_0 } from './ggml-quants.js';
import { gptqFactor, gptqRowsFactored, int4Quantizer, outputErrorSq, q4_0Quantizer, q4kQuantizer, type ColumnQuantizer, type GptqFactor } from './gptq.js';
import { dequantizeInt4, quantizeRtn, rowErrorSums, type ErrorStats, type Int4Weight } from './int4.js';
import { dequantizeQ4_K, quantizeQ4_K } from './q4k.js';
import { linearInput, type LinearKind } from './linears.js';
import type { CalibrationOptions, CalibrationSummary, KindStats } from './quantize-types.js';

/** the column loop of rows r0 … r1−1 on the native addon into the quantizer's result: Q, or null without the addon */
type NativeColumns = (r0: number, r1: number, f: GptqFactor) => Promise<Float64Array | null>;

/** per-kind weight errors and (method gptq) output errors of the quantised linears */
export class ErrorAccumulator {
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
  /** the weight errors of one linear W [rows, cols] against its reconstruction */
  add(kind: LinearKind, w: Float32Array, recon: Float32Array, cols: number): void {
    this.addRows(kind, rowErrorSums(w, recon, cols), w.length);
  }
  /** the weight errors of one linear of `count` weights from its per-row sums (int4.ts rowErrorSums), added row by row */
  addRows(kind: LinearKind, rowSums: Float64Array, count: number): void {
    const e: ErrorStats = { maxAbs: 0, sumAbs: 0, sumSq: 0, count };
    let sumSqW = 0;
    for (let r = 0; r < rowSums.length; r += 4) {
      e.sumAbs += rowSums[r]!;
      e.sumSq += rowSums[r + 1]!;
      if (rowSums[r + 2]! > e.maxAbs) e.maxAbs = rowSums[r + 2]!;
      sumSqW += rowSums[r + 3]!;
    }
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


// ---------------------------------------------------------------- rounding: RTN or GPTQ

/** How each quantised linear is rounded; adds its errors to the accumulator it was made with. */
export interface Rounder {
  /** the INT4 group grid of W [out, inF] (gptq format) */
  int4(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, groupSize: number): Promise<Int4Weight>;
  /** the Q4_0 bytes of W [out, inF] (GGUF) */
  q4_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array>;
  /** the Q4_K bytes of W [out, inF] (GGUF) */
  q4_k(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array>;
  /** the Q8_0 bytes of W [out, inF], rounded to nearest under either method (GPTQ gains nothing over its 8-bit grid) */
  q8_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array>;
  /** a block type rounded to nearest under either method (Q5_0: the Q4_K fallback of rows not a multiple of 256) */
  rtnBlocks(name: string, kind: LinearKind, w: Float32Array, inF: number, quantize: (w: Float32Array) => Uint8Array, dequantize: (b: Uint8Array, n: number) => Float32Array): Uint8Array;
  /** quantise a list of linears in this order (GPTQ plans its Hessian windows on it) */
  plan(order: readonly { name: string; out: number; inF: number }[]): void;
  calibration(): CalibrationSummary | null;
  close(): void;
  readonly errs: ErrorAccumulator;
}

/**
 * How an error names a linear: `<shard file>: tensor <name>` for a checkpoint's tensor
 * (checkpointLabel), `tensor <name>` where no file is known.
 */
export type TensorLabel = (name: string) => string;
const bareLabel: TensorLabel = (name) => `tensor ${name}`;
/** the shard file holding the tensor, then its name */
export const checkpointLabel = (ckpt: Checkpoint): TensorLabel => (name) => (ckpt.has(name) ? `${ckpt.meta(name).file}: tensor ${name}` : bareLabel(name));

const refusal = (label: TensorLabel, name: string, what: string): InputError => new InputError(`${label(name)}: ${what}; nothing written`);

function rtnInt4(label: TensorLabel, name: string, w: Float32Array, out: number, inF: number, gs: number): Int4Weight {
  try {
    return quantizeRtn(w, out, inF, gs);
  } catch (e) {
    if (e instanceof RangeError) throw refusal(label, name, e.message);
    throw e;
  }
}

/** a non-finite weight (a RangeError from int4.ts or the addon) as the InputError naming the tensor and its file */
async function namingTensor<T>(label: TensorLabel, name: string, run: () => T | Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof RangeError) throw refusal(label, name, e.message);
    throw e;
  }
}

/** a GGUF block type's round to nearest: the addon's (the same bytes and per-row error sums) and the TypeScript reference */
interface BlockRtn {
  /** weights a block holds: a row not a multiple of it stays in TypeScript */
  block: number;
  native: (w: Float32Array, out: number, inF: number) => Promise<{ bytes: Uint8Array; rowSums: Float64Array } | null>;
  quantize: (w: Float32Array) => Uint8Array;
  dequantize: (b: Uint8Array, n: number) => Float32Array;
}
const Q4_0_RTN: BlockRtn = { block: 32, native: q40RtnNative, quantize: quantizeQ4_0, dequantize: dequantizeQ4_0 };
const Q4_K_RTN: BlockRtn = { block: 256, native: q4kRtnNative, quantize: quantizeQ4_K, dequantize: dequantizeQ4_K };
const Q8_0_RTN: BlockRtn = { block: 32, native: q80RtnNative, quantize: quantizeQ8_0, dequantize: dequantizeQ8_0 };

/**
 * W [out, inF] rounded to nearest on a block grid, on the addon when it is built, else in
 * TypeScript; the weight errors go to `errs` when given. A non-finite weight is an InputError.
 */
async function rtnBlocksOf(t: BlockRtn, label: TensorLabel, name: string, w: Float32Array, out: number, inF: number, errs: { acc: ErrorAccumulator; kind: LinearKind } | null): Promise<Uint8Array> {
  const native = inF % t.block === 0 ? await namingTensor(label, name, () => t.native(w, out, inF)) : null;
  if (native) {
    errs?.acc.addRows(errs.kind, native.rowSums, w.length);
    return native.bytes;
  }
  return rtnBlocks(errs, label, name, w, inF, t.quantize, t.dequantize);
}

export class RtnRounder implements Rounder {
  constructor(readonly errs: ErrorAccumulator, private readonly label: TensorLabel = bareLabel) {}
  /** on the native addon when it is built (int4_rtn: the same grid and error sums), else int4.ts */
  async int4(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, gs: number): Promise<Int4Weight> {
    const native = await namingTensor(this.label, name, () => int4RtnNative(w, out, inF, gs));
    if (native) {
      this.errs.addRows(kind, native.rowSums, w.length);
      return native;
    }
    const x = rtnInt4(this.label, name, w, out, inF, gs);
    this.errs.add(kind, w, dequantizeInt4(x), inF);
    return x;
  }
  q4_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    return rtnBlocksOf(Q4_0_RTN, this.label, name, w, out, inF, { acc: this.errs, kind });
  }
  q4_k(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    return rtnBlocksOf(Q4_K_RTN, this.label, name, w, out, inF, { acc: this.errs, kind });
  }
  q8_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    return rtnBlocksOf(Q8_0_RTN, this.label, name, w, out, inF, { acc: this.errs, kind });
  }
  rtnBlocks(name: string, kind: LinearKind, w: Float32Array, inF: number, quantize: (w: Float32Array) => Uint8Array, dequantize: (b: Uint8Array, n: number) => Float32Array): Uint8Array {
    return rtnBlocks({ acc: this.errs, kind }, this.label, name, w, inF, quantize, dequantize);
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
  // the model one block at a time: calibration holds the frame and one block, never the whole checkpoint
  return new CalibrationSession(await V4BlockStream.open(ckpt, backend), cal.rows, cal.hessianBudgetBytes ?? HESSIAN_BUDGET_BYTES);
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
        session.stream.dispose();
        await ckpt.close();
      },
    };
  } catch (e) {
    await ckpt.close();
    throw e;
  }
}

/** memory bound of the GPTQ factors kept for a linear that reads the same input later (w3 after w1): CalibrationOptions.factorBudgetBytes' default */
export const FACTOR_BUDGET_BYTES = 2 ** 30;

export class GptqRounder implements Rounder {
  private hessians: CalibratedHessians | null = null;
  private passesBefore = 0;
  private blockRunsBefore = 0;
  private startsBefore = 0;
  /** the planned linears not yet quantised, per input (calibrate.ts: linears of one input share its Hessian) */
  private readonly pending = new Map<string, number>();
  /** per input with pending linears: its Hessian's factors (one per group), within FACTOR_BUDGET_BYTES */
  private readonly factors = new Map<string, { h: Hessian; f: GptqFactor[] }>();
  private factorBytes = 0;
  private gptqLinears = 0;
  private factorizations = 0;
  private reused = false;
  private readonly fallback: string[] = [];

  private constructor(readonly errs: ErrorAccumulator, private readonly session: CalibrationSession, private readonly owned: boolean, private readonly cal: CalibrationOptions, private readonly label: TensorLabel) {}

  /** the shared session, or the checkpoint's model loaded on the calibration backend; errors name `ckpt`'s shard files */
  static async load(ckpt: Checkpoint, cal: CalibrationOptions, errs: ErrorAccumulator, session?: CalibrationSession): Promise<GptqRounder> {
    checkDamp(cal);
    if (session) return new GptqRounder(errs, session, false, cal, checkpointLabel(ckpt));
    return new GptqRounder(errs, await loadSession(ckpt, cal), true, cal, checkpointLabel(ckpt));
  }

  q8_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    return rtnBlocksOf(Q8_0_RTN, this.label, name, w, out, inF, { acc: this.errs, kind });
  }
  rtnBlocks(name: string, kind: LinearKind, w: Float32Array, inF: number, quantize: (w: Float32Array) => Uint8Array, dequantize: (b: Uint8Array, n: number) => Float32Array): Uint8Array {
    return rtnBlocks({ acc: this.errs, kind }, this.label, name, w, inF, quantize, dequantize);
  }

  plan(order: readonly { name: string; out: number; inF: number }[]): void {
    const G = this.session.stream.config.o_groups;
    const linears: CalibratedLinear[] = order.map((l) => {
      const module = l.name.slice(0, -'.weight'.length);
      return { module, cols: l.inF, groups: l.name.endsWith('.attn.wo_a.weight') ? G : 1, input: linearInput(module) };
    });
    this.pending.clear();
    this.gptqLinears = 0;
    this.factorizations = 0;
    for (const l of linears) this.pending.set(l.input!, (this.pending.get(l.input!) ?? 0) + 1);
    this.dropFactors();
    const { hessians, reused } = this.session.hessians(linears);
    this.hessians = hessians;
    this.reused = reused;
    this.passesBefore = hessians.passes;
    this.blockRunsBefore = hessians.blockRuns;
    this.startsBefore = hessians.starts;
  }

  private dropFactors(input?: string): void {
    for (const [k, e] of this.factors) {
      if (input !== undefined && k !== input) continue;
      for (const f of e.f) if (f) this.factorBytes -= f.U.byteLength + f.dead.byteLength;
      this.factors.delete(k);
    }
  }

  /**
   * GPTQ's factor of group g of h: kept from an earlier linear of the same input (and the same
   * Hessian: another calibration window collects new ones), or computed (on the native addon when
   * it is built: the same bits) and kept while another linear of that input is still to come and
   * FACTOR_BUDGET_BYTES allows
   */
  private async factor(name: string, h: Hessian, g: number): Promise<GptqFactor> {
    const input = linearInput(name.slice(0, -'.weight'.length));
    const kept = this.factors.get(input);
    if (kept?.h === h && kept.f[g]) return kept.f[g];
    if (kept && kept.h !== h) this.dropFactors(input);
    const n = h.cols;
    this.factorizations++;
    const f = (await gptqFactorNative(h.H[g]!, n, this.cal.damp, this.label(name))) ?? gptqFactor(h.H[g]!, n, { damp: this.cal.damp, name: this.label(name) });
    const bytes = f.U.byteLength + f.dead.byteLength;
    if ((this.pending.get(input) ?? 0) > 1 && this.factorBytes + bytes <= (this.cal.factorBudgetBytes ?? FACTOR_BUDGET_BYTES)) {
      const e = this.factors.get(input) ?? { h, f: [] };
      e.f[g] = f;
      this.factors.set(input, e);
      this.factorBytes += bytes;
    }
    return f;
  }

  /** one planned linear of `name`'s input is done: drop the input's factors when it was the last */
  private done(name: string): void {
    const input = linearInput(name.slice(0, -'.weight'.length));
    const left = (this.pending.get(input) ?? 1) - 1;
    this.pending.set(input, left);
    if (left === 0) this.dropFactors(input);
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
   * The column loop runs on the native addon when it is built (`native`, kernels/cpu/gptq.cpp: the
   * same codes and bytes), else gptq.ts's on `qz`.
   */
  private async run(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, h: Hessian, qz: ColumnQuantizer, rtn: Float32Array, native: NativeColumns): Promise<void> {
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
        const f = await this.factor(name, h, g);
        Q = (await native(g * rows, (g + 1) * rows, f)) ?? gptqRowsFactored(w, inF, g * rows, (g + 1) * rows, f, qz);
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
      const outErr = async (x: Float64Array | Float32Array): Promise<number> =>
        (await outputErrorSqNative(x instanceof Float64Array ? x : Float64Array.from(x), rows, inF, h.H[g]!)) ?? outputErrorSq(x, rows, inF, h.H[g]!);
      err += await outErr(E);
      errRtn += await outErr(Er);
      ref += await outErr(W);
    }
    this.errs.add(kind, w, recon, inF);
    this.errs.addOutput(kind, err, errRtn, ref);
  }

  int4(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number, gs: number): Promise<Int4Weight> {
    return this.quantize(name, kind, w, out, inF, rtnInt4(this.label, name, w, out, inF, gs), dequantizeInt4, () => int4Quantizer(out, inF, gs),
      (qz) => (r0, r1, f) => gptqInt4Native(w, inF, r0, r1, f, qz.result));
  }

  async q4_0(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    const rtn = await rtnBlocksOf(Q4_0_RTN, this.label, name, w, out, inF, null);
    return this.quantize(name, kind, w, out, inF, rtn, (b) => dequantizeQ4_0(b, w.length), () => q4_0Quantizer(out, inF),
      (qz) => (r0, r1, f) => gptqGgufNative('q4_0', w, inF, r0, r1, f, qz.result));
  }

  async q4_k(name: string, kind: LinearKind, w: Float32Array, out: number, inF: number): Promise<Uint8Array> {
    const rtn = await rtnBlocksOf(Q4_K_RTN, this.label, name, w, out, inF, null);
    return this.quantize(name, kind, w, out, inF, rtn, (b) => dequantizeQ4_K(b, w.length), () => q4kQuantizer(out, inF),
      (qz) => (r0, r1, f) => gptqGgufNative('q4_k', w, inF, r0, r1, f, qz.result));
  }

  /** GPTQ on the grid of `quantizer` when the linear has a Hessian, else its round-to-nearest `rtn`. */
  private async quantize<T>(
    name: string, kind: LinearKind, w: Float32Array, out: number, inF: number,
    rtn: T, dequant: (q: T) => Float32Array, quantizer: () => ColumnQuantizer & { result: T },
    native: (qz: ColumnQuantizer & { result: T }) => NativeColumns,
  ): Promise<T> {
    const h = await this.hessian(name);
    if (!h) {
      this.done(name);
      this.errs.add(kind, w, dequant(rtn), inF);
      return rtn;
    }
    const qz = quantizer();
    await this.run(name, kind, w, out, inF, h, qz, dequant(rtn), native(qz));
    this.gptqLinears++;
    this.done(name);
    return qz.result;
  }

  calibration(): CalibrationSummary {
    return { rows: this.cal.rows.length, damp: this.cal.damp, passes: (this.hessians?.passes ?? 0) - this.passesBefore, blockRuns: (this.hessians?.blockRuns ?? 0) - this.blockRunsBefore, starts: (this.hessians?.starts ?? 0) - this.startsBefore, reused: this.reused, rtnFallback: this.fallback, linears: this.gptqLinears, factorizations: this.factorizations };
  }

  close(): void {
    if (this.owned) this.session.stream.dispose();
  }
}

// the first non-finite weight as a refusal naming it as the addon's rounding does (row, column)
function checkFinite(label: TensorLabel, name: string, w: Float32Array, inF: number): void {
  const bad = firstNonFiniteNative(w) ?? firstNonFinite(w);
  if (bad >= 0) throw refusal(label, name, `non-finite weight ${w[bad]} at row ${Math.floor(bad / inF)}, column ${bad % inF}`);
}

// a block type rounded to nearest in TypeScript; the weight errors go to `errs` when given
function rtnBlocks(errs: { acc: ErrorAccumulator; kind: LinearKind } | null, label: TensorLabel, name: string, w: Float32Array, inF: number, quantize: (w: Float32Array) => Uint8Array, dequantize: (b: Uint8Array, n: number) => Float32Array): Uint8Array {
  checkFinite(label, name, w, inF);
  const q = quantize(w);
  errs?.acc.add(errs.kind, w, dequantize(q, w.length), inF);
  return q;
}
