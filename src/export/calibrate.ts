// GPTQ calibration: the Hessian H = (2/n) Σ_t x_tᵀ x_t [in, in] (float64) of every quantised
// linear, from its inputs x_t in the model's forward over the calibration rows (the model's
// `onLinearInput` observer: routed experts see only their routed rows, w2 their activation).
// The grouped wo_a gets one Hessian per group of its input (rows of group g read only columns
// g·inG … (g+1)·inG), so its GPTQ runs per group of output rows.
//
// The forward runs one block at a time (model/v4/model.ts V4BlockStream): every calibration row's
// streams are kept at the input of the next block to run, so memory holds the embedding, one
// block's weights and rows × T × hc × d floats of streams, never the whole checkpoint.
// Each block sees the inputs the whole model's forward gives it (the unquantised model's: this
// is not AutoGPTQ's sequential mode, where later layers see the quantised earlier ones).
//
// Memory of the Hessians: Σ groups·in²·8 bytes. They are collected for a window of linears at a
// time (in the order they are asked for), each window at most `budgetBytes` (one linear when a
// single one is larger). Collecting a window runs the blocks its linears lie in, from the rows'
// streams at the first of them (a window that starts in an earlier block than the streams have
// reached starts again from the embedding). A window that leaves the streams where they are (the
// next window starts in the same block) only observes the block: it stops after the MoE's routing
// and computes an expert's activation (its w2's input) only for the window's experts (the
// observer's `wants`); a window of expert linears only takes the MoE input and routing that the
// block's previous window in the same place left (V4BlockStream.observe `moeOnly`), so attention
// runs once per block and place, not once per window. The tiny/small presets fit in one window;
// V4-Flash (d = 4096: 128 MiB per attention or expert w1 Hessian) needs ten or so windows per
// layer, each observing one block (a whole-model forward per window would run all 43, whole).
//
// Linears that read the same input tensor (an expert's w1 and w3, attention's wq_a and wkv:
// `CalibratedLinear.input`) share one Hessian: it is accumulated once per input, counted once in
// a window's memory, and the same object is handed to each of them.
//
// Several formats of one quantize stage share a CalibrationSession: when the previous format's
// Hessians were one window holding every linear the next format asks for, they are reused (no
// forward); otherwise the next format collects its own windows (the memory bound holds).
import type { F32 } from '../backend/ops.js';
import { hessianAccumulateNative } from '../backend/native/gptq.js';
import { V4tuneError } from '../errors.js';
import type { LinearInputObserver, StreamRow, V4BlockStream } from '../model/v4/model.js';

/** One calibration row: token ids and, for a packed row, its segment lengths. */
export interface CalibrationRow {
  input_ids: Int32Array;
  segments?: ArrayLike<number> | null;
}

/** A quantised linear as calibration sees it: module name (no `.weight`), input size per group, groups. */
export interface CalibratedLinear {
  module: string;
  cols: number;
  groups: number;
  /** the module whose input this linear reads when others read it too (linears.ts linearInput); default: its own */
  input?: string;
}

const inputOf = (l: CalibratedLinear): string => l.input ?? l.module;

export interface Hessian {
  cols: number;
  /** one [cols, cols] matrix per group of the input, (2/tokens) Σ xᵀx */
  H: Float64Array[];
  /** input rows seen */
  tokens: number;
}

/** a routed or shared expert's linear: a window of only these reuses the MoE input of the block's last observation */
const MOE_LINEAR = /\.ffn\.(?:experts\.\d+|shared_experts)\.w[123]$/;

/** default memory bound of one window of Hessians */
export const HESSIAN_BUDGET_BYTES = 4 * 2 ** 30;

const hessianBytes = (l: CalibratedLinear): number => l.groups * l.cols * l.cols * 8;

/**
 * Σ xᵀx of x [rows, groups·cols] into the upper triangles of H[g] (on the native addon when it is
 * built: kernels/cpu/gptq.cpp, the same sums in the same order)
 */
function accumulate(h: Hessian, groups: number, x: Float32Array, rows: number): void {
  const n = h.cols;
  const width = groups * n;
  for (let g = 0; g < groups; g++) {
    const H = h.H[g]!;
    if (hessianAccumulateNative(H, x, g * n, rows, n, width)) continue;
    for (let t = 0; t < rows; t++) {
      const o = t * width + g * n;
      for (let i = 0; i < n; i++) {
        const xi = x[o + i]!;
        if (xi === 0) continue;
        const hi = i * n;
        for (let j = i; j < n; j++) H[hi + j] += xi * x[o + j]!;
      }
    }
  }
  h.tokens += rows;
}

/** mirror the upper triangles and scale by 2/tokens */
function finish(h: Hessian): void {
  const n = h.cols;
  const s = h.tokens > 0 ? 2 / h.tokens : 0;
  for (const H of h.H) {
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = H[i * n + j]! * s;
        H[i * n + j] = v;
        H[j * n + i] = v;
      }
    }
  }
}

/**
 * The Hessians of `linears` (one object per input: linears of one `input` share it), and the
 * observer that accumulates them from a forward's linear inputs. Each input tensor is accumulated
 * once, however many of its linears are told it; a linear told another tensor than its partner's
 * is an error.
 */
function hessianSet(linears: readonly CalibratedLinear[]): { out: Map<string, Hessian>; observe: LinearInputObserver; finish: () => void } {
  const want = new Map(linears.map((l) => [l.module, l]));
  const byInput = new Map<string, Hessian>();
  const out = new Map<string, Hessian>();
  for (const l of linears) {
    let h = byInput.get(inputOf(l));
    if (!h) {
      h = { cols: l.cols, H: Array.from({ length: l.groups }, () => new Float64Array(l.cols * l.cols)), tokens: 0 };
      byInput.set(inputOf(l), h);
    } else if (h.cols !== l.cols || h.H.length !== l.groups) {
      throw new V4tuneError(`GPTQ calibration: ${l.module} is planned to read ${inputOf(l)}'s input (${h.H.length} × ${h.cols}) but its weight reads ${l.groups} × ${l.cols}`);
    }
    out.set(l.module, h);
  }
  // per input: the tensor last accumulated and the linears told it since
  const last = new Map<string, { x: Float32Array; told: Set<string> }>();
  const observe: LinearInputObserver = Object.assign((module: string, x: Float32Array, n: number, cols: number): void => {
    const l = want.get(module);
    if (!l) return;
    if (cols !== l.groups * l.cols) throw new V4tuneError(`GPTQ calibration: ${module} was given inputs of width ${cols}, its weight reads ${l.groups} × ${l.cols}`);
    const key = inputOf(l);
    const seen = last.get(key);
    if (seen && !seen.told.has(module)) {
      if (seen.x !== x) throw new V4tuneError(`GPTQ calibration: ${module} is planned to share ${key}'s Hessian but was given another input tensor`);
      seen.told.add(module);
      return;
    }
    last.set(key, { x, told: new Set([module]) });
    accumulate(byInput.get(key)!, l.groups, x, n);
  }, { wants: (module: string) => want.has(module) });
  return { out, observe, finish: () => { for (const h of byInput.values()) finish(h); } };
}

/** the block of each linear (V4BlockStream.blockOf), or an error naming the one outside every block */
function blocksOf(stream: V4BlockStream, linears: readonly CalibratedLinear[]): number[] {
  return linears.map((l) => {
    const b = stream.blockOf(l.module);
    if (b === null) throw new V4tuneError(`GPTQ calibration: ${l.module} lies in no block of the model`);
    return b;
  });
}

/**
 * The calibration rows' place in the model: their streams at the input of block `at` (-1: not
 * started). `advance(b)` brings them to block b's input, starting again from the embedding when
 * they are past it; `pass(b0, b1, observe, keep)` runs blocks b0..b1 over every row with the
 * observer, ending at b1's input (`keep`) or past it.
 */
class StreamPosition {
  at = -1;
  private rows: StreamRow[] = [];
  /** blocks run over every row so far (the MTP block counted as one) */
  blockRuns = 0;
  /** times the rows started from the embedding */
  starts = 0;

  constructor(private readonly stream: V4BlockStream, private readonly calibration: readonly CalibrationRow[]) {}

  private async runAll(b: number, observe: LinearInputObserver | null, advance: boolean, moeOnly = false): Promise<void> {
    for (const row of this.rows) {
      if (advance || !observe) {
        const y: F32 = await this.stream.run(b, row, observe);
        if (advance) row.X = y;
      } else {
        await this.stream.observe(b, row, observe, moeOnly); // the inputs only: no expert outputs
      }
    }
    this.blockRuns++;
    if (advance) this.at = b + 1;
  }

  async advance(b: number): Promise<void> {
    if (this.at < 0 || this.at > b) {
      this.rows = [];
      for (const r of this.calibration) this.rows.push(await this.stream.start(r.input_ids, r.segments ?? null));
      this.at = 0;
      this.starts++;
    }
    while (this.at < b) await this.runAll(this.at, null, true);
  }

  async pass(b0: number, b1: number, observe: LinearInputObserver, keep: boolean, moeOnly = false): Promise<void> {
    await this.advance(b0);
    const L = this.stream.config.num_hidden_layers;
    for (let b = b0; b <= b1; b++) await this.runAll(b, observe, b < b1 || (!keep && b < L), moeOnly);
  }
}

/**
 * Hessians of the given linears from one pass of `stream` over `rows`: the blocks from the first
 * to the last that holds one of them, every row's forward reporting their inputs (the same
 * Hessians a whole-model forward's inputs give).
 */
export async function collectHessians(stream: V4BlockStream, rows: readonly CalibrationRow[], linears: readonly CalibratedLinear[]): Promise<Map<string, Hessian>> {
  const blocks = blocksOf(stream, linears);
  const set = hessianSet(linears);
  if (linears.length > 0) await new StreamPosition(stream, rows).pass(Math.min(...blocks), Math.max(...blocks), set.observe, true);
  set.finish();
  return set.out;
}

/**
 * The Hessians of a list of linears, collected window by window as they are asked for (see the
 * file comment for the memory bound). `get` of a linear outside the current window drops the
 * window and collects the one that holds it.
 */
export class CalibratedHessians {
  private readonly windows: CalibratedLinear[][] = [];
  /** each window's first and last block */
  private readonly spans: Array<[number, number]> = [];
  private readonly planned = new Map<string, CalibratedLinear>();
  private readonly windowOf = new Map<string, number>();
  private readonly position: StreamPosition;
  private current = -1;
  private held = new Map<string, Hessian>();
  /** windows collected so far (each one pass of the rows over its blocks) */
  passes = 0;

  constructor(private readonly stream: V4BlockStream, rows: readonly CalibrationRow[], linears: readonly CalibratedLinear[], budgetBytes = HESSIAN_BUDGET_BYTES) {
    const blocks = blocksOf(stream, linears);
    let win: CalibratedLinear[] = [];
    let span: [number, number] = [Infinity, -Infinity];
    let inputs = new Set<string>();
    let bytes = 0;
    linears.forEach((l, i) => {
      // a linear whose input's Hessian the window holds already costs nothing more
      const b = inputs.has(inputOf(l)) ? 0 : hessianBytes(l);
      // past the first window, a linear of an earlier block than the one before it starts a new
      // window: a window reaching back would take the rows back to the embedding when collected
      // (the gptq export plans the wo_a it keeps after every other linear, for a GGUF format to
      // reuse; the MTP block's last window must not hold the first layers' wo_a)
      const back = this.windows.length > 0 && i > 0 && blocks[i]! < blocks[i - 1]!;
      if (win.length > 0 && ((b > 0 && bytes + b > budgetBytes) || back)) {
        this.windows.push(win);
        this.spans.push(span);
        win = [];
        span = [Infinity, -Infinity];
        inputs = new Set();
        bytes = 0;
      }
      win.push(l);
      span = [Math.min(span[0], blocks[i]!), Math.max(span[1], blocks[i]!)];
      inputs.add(inputOf(l));
      bytes += b;
      this.windowOf.set(l.module, this.windows.length);
      this.planned.set(l.module, l);
    });
    if (win.length > 0) {
      this.windows.push(win);
      this.spans.push(span);
    }
    this.position = new StreamPosition(stream, rows);
  }

  /** number of windows (calibration passes when the linears are asked for in order) */
  get windowCount(): number {
    return this.windows.length;
  }

  /** blocks run over every calibration row so far (a whole-model forward runs every block once) */
  get blockRuns(): number {
    return this.position.blockRuns;
  }

  /** times the calibration rows started from the embedding (once when the windows come in block order) */
  get starts(): number {
    return this.position.starts;
  }

  /** whether these Hessians are one window holding every one of `linears` (with the same shapes) */
  covers(linears: readonly CalibratedLinear[]): boolean {
    if (this.windows.length !== 1) return false;
    return linears.every((l) => {
      const p = this.planned.get(l.module);
      return p !== undefined && p.cols === l.cols && p.groups === l.groups && inputOf(p) === inputOf(l);
    });
  }

  async get(module: string): Promise<Hessian> {
    const w = this.windowOf.get(module);
    if (w === undefined) throw new V4tuneError(`GPTQ calibration: no Hessian planned for ${module}`);
    if (w !== this.current) {
      this.held = new Map();
      const set = hessianSet(this.windows[w]!);
      const [b0, b1] = this.spans[w]!;
      // stay at the last block's input when the next window starts in it
      const next = this.spans[w + 1];
      const moeOnly = this.windows[w]!.every((l) => MOE_LINEAR.test(l.module));
      await this.position.pass(b0, b1, set.observe, next !== undefined && next[0] === b1, moeOnly);
      set.finish();
      this.held = set.out;
      this.current = w;
      this.passes++;
    }
    return this.held.get(module)!;
  }
}

/**
 * The calibration model and rows of one quantize stage, shared by its formats: `hessians` gives
 * the previous format's Hessians again when they cover the new list (see the file comment).
 */
export class CalibrationSession {
  private last: CalibratedHessians | null = null;
  private earlier = 0;

  constructor(readonly stream: V4BlockStream, readonly rows: readonly CalibrationRow[], private readonly budgetBytes = HESSIAN_BUDGET_BYTES) {}

  /** the Hessians of `linears`, and whether they are the previous list's (collected already) */
  hessians(linears: readonly CalibratedLinear[]): { hessians: CalibratedHessians; reused: boolean } {
    if (this.last && this.last.covers(linears)) return { hessians: this.last, reused: true };
    this.earlier += this.last?.passes ?? 0;
    this.last = new CalibratedHessians(this.stream, this.rows, linears, this.budgetBytes);
    return { hessians: this.last, reused: false };
  }

  /** forwards over the calibration rows so far, all lists together */
  get passes(): number {
    return this.earlier + (this.last?.passes ?? 0);
  }
}
