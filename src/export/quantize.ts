// The quantize stage: export of a DeepSeek V4 checkpoint folder (base or merged) to the formats
// deployers load, streamed tensor by tensor (each weight is read dequantised, quantised and
// written before the next is read, so memory stays bounded by a few tensors; the GGUF writer
// holds one layer's stacked routed experts, already quantised).
//
// Which tensors are quantised: linears.ts. How (`method`): rounders.ts — `rtn`, round to nearest
// on each format's grid (int4.ts, gguf.ts Q4_0, q4k.ts Q4_K, ggml-quants.ts Q8_0 / Q5_0); or
// `gptq`, GPTQ (gptq.ts) against each linear's Hessian from the model's forward over calibration
// rows (calibrate.ts; routed experts: the rows routed to them) for the INT4, Q4_0 and Q4_K grids.
// A routed expert that no calibration row reached is rounded to nearest (listed in the summary).
// The summary gives, per kind of linear, the weight error and (gptq) the layer output error
// ‖(W − Q)Xᵀ‖ / ‖W Xᵀ‖ on the calibration inputs of GPTQ and of round to nearest.
//
// Outputs, and the tool that reads each:
// - `gptq` (gptq-export.ts): a safetensors folder in GPTQModel's deepseek_v4 layout (AutoGPTQ
//   packing, checkpoint_format gptq, quantize_config.json).
// - `gguf-f32`, `gguf-f16`, `gguf-bf16`, `gguf-q8_0`, `gguf-q4_0`, `gguf-q4_k` (gguf-export.ts):
//   llama.cpp `deepseek4` files with the tokenizer embedded, the MTP block in `mtp-<file>`.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { BackendName } from '../backend/ops.js';
import { openDataset } from '../data/dataset.js';
import { InputError } from '../errors.js';
import { writeFileAtomic } from '../fsutil.js';
import { Checkpoint } from '../model/checkpoint.js';
import { GGUF_FORMATS, isGgufFormat, writeGguf, type GgufFormat } from './gguf-export.js';
import { writeGptq } from './gptq-export.js';
import type { CalibrationRow } from './calibrate.js';
import type { CalibrationOptions, QuantFormat, QuantizeOptions, QuantizeSummary, QuantMethod, WriteResult } from './quantize-types.js';
import { ErrorAccumulator, GptqRounder, openCalibration, RtnRounder, type Rounder } from './rounders.js';

export { linearKind, type LinearKind } from './linears.js';
export { ggufName } from './llama-deepseek4.js';
export { openCalibration } from './rounders.js';
export { packGptq } from './gptq-export.js';
export type { CalibrationOptions, CalibrationSummary, GgufFormat, KindStats, QuantFormat, QuantizeOptions, QuantizeSummary, QuantMethod, WriteResult } from './quantize-types.js';

/** every format the quantize stage writes */
export const QUANT_FORMATS: readonly QuantFormat[] = ['gptq', ...(Object.keys(GGUF_FORMATS) as GgufFormat[])];






/** the checkpoint's safetensors bytes (what the shards hold) */
function checkpointBytes(dir: string): number {
  const idx = join(dir, 'model.safetensors.index.json');
  const files = existsSync(idx)
    ? [...new Set(Object.values((JSON.parse(readFileSync(idx, 'utf8')) as { weight_map: Record<string, string> }).weight_map))]
    : ['model.safetensors'];
  return files.reduce((a, f) => a + statSync(join(dir, f)).size, 0);
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
    const r = opts.format === 'gptq' ? await writeGptq(ckpt, opts, rounder) : await writeGgufFormat(ckpt, opts, opts.format, rounder);
    const s: QuantizeSummary = { format: opts.format, method: opts.method, model: opts.model, out: opts.out, groupSize: opts.groupSize, bytesIn, compression: bytesIn / r.bytesOut, ...r };
    const cal = rounder.calibration();
    if (cal) s.calibration = cal;
    return s;
  } finally {
    rounder?.close();
    await ckpt.close();
  }
}


/** a GGUF format's file(s), then its summary beside it (`<file>.json`) */
async function writeGgufFormat(ckpt: Checkpoint, opts: QuantizeOptions, format: QuantFormat, rounder: Rounder): Promise<WriteResult> {
  if (!isGgufFormat(format)) throw new InputError(`quantize: unknown format ${format} (one of ${QUANT_FORMATS.join(', ')})`);
  const r = await writeGguf(ckpt, opts, format, rounder);
  writeFileAtomic(`${opts.out}.json`, `${JSON.stringify({ format, method: opts.method, source: opts.model, mtp: r.mtpOut, fallback: r.tensorsFallback, errors: r.errors, calibration: rounder.calibration() }, null, 2)}\n`);
  return r;
}
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

const FORMAT_NOTE: Readonly<Record<GgufFormat, string>> = {
  'gguf-f32': 'F32',
  'gguf-f16': 'F16 matrices',
  'gguf-bf16': 'BF16 matrices',
  'gguf-q8_0': 'Q8_0 blocks of 32',
  'gguf-q4_0': 'Q4_0 blocks of 32',
  'gguf-q4_k': 'Q4_K super-blocks of 256',
};

/** where one format's output goes inside the quantize folder (`gptq/`, `model-<TYPE>.gguf`) */
export function formatOutput(outDir: string, format: QuantFormat): string {
  return format === 'gptq' ? join(outDir, 'gptq') : join(outDir, `model-${GGUF_FORMATS[format].label}.gguf`);
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
      o.log?.(`quantize ${model} → ${target} (${format}, method ${method}${format === 'gptq' ? `, group size ${groupSize}` : `, ${FORMAT_NOTE[format]}`}${how})`);
      out.set(format, await quantizeCheckpoint({ model, out: target, overwrite: o.overwrite, format, method, groupSize, calibration, session: cal?.session, onTensor: (d, t, n) => o.onTensor?.(format, d, t, n) }));
    }
    return formats.map((f) => out.get(f)!);
  } finally {
    await cal?.close();
  }
}
