// The types of the quantize stage shared by its parts: the options and summary of
// quantizeCheckpoint (quantize.ts), what each writer returns (gptq-export.ts, gguf-export.ts) and
// the error and calibration statistics the rounders keep (rounders.ts). Types only (and the list
// of formats, which the CLI shows without loading the writers), so that the writers and rounders
// never import the module that drives them.
import type { BackendName } from '../backend/ops.js';
import type { CalibrationRow, CalibrationSession } from './calibrate.js';
import type { LinearKind } from './linears.js';

/** the llama.cpp GGUF outputs (gguf-export.ts GGUF_FORMATS holds their file types) */
export type GgufFormat = 'gguf-f32' | 'gguf-f16' | 'gguf-bf16' | 'gguf-q8_0' | 'gguf-q4_0' | 'gguf-q4_k';

export type QuantMethod = 'rtn' | 'gptq';

export type QuantFormat = 'gptq' | GgufFormat;

/** every format the quantize stage writes (here, not in quantize.ts, so the CLI lists them without loading the writers) */
export const QUANT_FORMATS: readonly QuantFormat[] = ['gptq', 'gguf-f32', 'gguf-f16', 'gguf-bf16', 'gguf-q8_0', 'gguf-q4_0', 'gguf-q4_k'];

export interface QuantizeOptions {
  /** checkpoint folder (config.json + safetensors) */
  model: string;
  /** gptq: the output folder; gguf-*: the output .gguf file (the MTP block goes to `mtp-<name>` beside it) */
  out: string;
  /** replace an output folder v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  format: QuantFormat;
  method: QuantMethod;
  /** INT4 group size along the input (gptq format; Q4_0 / Q8_0 blocks are always 32, Q4_K super-blocks 256) */
  groupSize: number;
  /** shard size of the gptq output (default 4 GiB) */
  maxShardBytes?: number;
  /** write the outputs with direct I/O, past the page cache, where the file system takes it (default true; model/out-file.ts) */
  directIo?: boolean;
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
  /**
   * memory bound of the GPTQ factors kept for a later linear of the same input (w3 reuses w1's,
   * wkv wq_a's; default 1 GiB): over it a factor is computed again, the same bits
   */
  factorBudgetBytes?: number;
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
  /** quantisable linears not in the format's own type (GGUF: Q5_0 for Q4_K rows not a multiple of 256, F16 where 32 does not divide the rows either) */
  tensorsFallback: string[];
  /** tensors of the checkpoint not written (GGUF: a hash layer's gate bias, which llama.cpp does not read) */
  tensorsSkipped: number;
  bytesIn: number;
  bytesOut: number;
  compression: number;
  errors: Partial<Record<LinearKind, KindStats>>;
  /** every output file was written with direct I/O (false: through the page cache, as asked or where the file system or a missing addon left no choice) */
  directIo: boolean;
  /** method gptq: the calibration that fed it */
  calibration?: CalibrationSummary;
}

export interface CalibrationSummary {
  rows: number;
  damp: number;
  /** passes over the calibration rows for this format (one per window of Hessians; 0 when reused) */
  passes: number;
  /**
   * blocks those passes ran over the calibration rows (calibrate.ts: a window runs the blocks its
   * linears lie in, one block's weights in memory at a time; a whole-model forward runs every
   * block once)
   */
  blockRuns: number;
  /** times those passes started again from the embedding (1 when the linears are asked for in block order, as the exports do) */
  starts: number;
  /** the Hessians of the previous format of the stage were reused (no forward of its own) */
  reused: boolean;
  /** linears no calibration input reached (routed experts never chosen): rounded to nearest */
  rtnFallback: string[];
  /** linears GPTQ ran on, and the factorisations of their Hessians it ran (w3 reuses w1's factor, wkv wq_a's; wo_a one per group) */
  linears: number;
  factorizations: number;
}

/** what a format's writer reports (quantizeCheckpoint adds the rest of the summary) */
export type WriteResult = Pick<QuantizeSummary, 'tensorsQuantized' | 'tensorsKept' | 'tensorsFallback' | 'tensorsSkipped' | 'bytesOut' | 'errors' | 'directIo'> & { mtpOut?: string | null };
