// The quantize stage: every format of the recipe's export.quantize written from the merged
// model (or the base when there is none) into `<output>/quantized` (export/quantize.ts writes
// one format), GPTQ calibrated on the prepared train split, under the run folder's lock; the
// plan, per-format progress and the error statistics go to the sink.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { CalibrationRow } from '../export/calibrate.js';
import { formatOutput, openCalibration, quantizeCheckpoint } from '../export/quantize.js';
import type { CalibrationOptions, GgufFormat, QuantFormat, QuantizeSummary, QuantMethod } from '../export/quantize-types.js';
import { InputError } from '../errors.js';
import { withRunLock } from '../lock.js';
import { recipeModelDir, runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { silentSink, type Progress, type Sink } from '../sink.js';
import { requireDataset } from './dataset-inputs.js';

export type { QuantizeSummary } from '../export/quantize-types.js';

export interface QuantizeRecipeOptions {
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
  /** write the outputs with direct I/O where the file system takes it (default true; false: the user's --no-direct-io) */
  directIo?: boolean;
}

const FORMAT_NOTE: Readonly<Record<GgufFormat, string>> = {
  'gguf-f32': 'F32',
  'gguf-f16': 'F16 matrices',
  'gguf-bf16': 'BF16 matrices',
  'gguf-q8_0': 'Q8_0 blocks of 32',
  'gguf-q4_0': 'Q4_0 blocks of 32',
  'gguf-q4_k': 'Q4_K super-blocks of 256',
};

/**
 * The first `export.calibration_rows` rows of the recipe's prepared train split (clamped to the
 * split with a warning); a missing dataset or an empty split is an InputError naming the recipe.
 */
export function calibrationRows(recipe: LoadedRecipe, sink: Sink = silentSink): CalibrationRow[] {
  const dir = recipe.data.output;
  if (!existsSync(join(dir, 'manifest.json'))) {
    throw new InputError(`${recipe.file}: export.method gptq calibrates on the prepared dataset ${dir}, which is not there (run \`v4tune prepare ${recipe.file}\` first, or use method rtn)`);
  }
  const ds = requireDataset(recipe, false);
  const have = ds.rowCount('train');
  if (have === 0) throw new InputError(`${recipe.file}: export.method gptq needs calibration rows, but the train split of ${dir} is empty`);
  let want = recipe.export.calibration_rows;
  if (want > have) {
    sink.warn(`${recipe.file}: export.calibration_rows is ${want} but the train split of ${dir} has ${have} rows; calibrating on ${have}`);
    want = have;
  }
  const rows: CalibrationRow[] = [];
  for (const r of ds.rows('train')) {
    if (rows.length >= want) break;
    rows.push({ input_ids: r.input_ids, segments: r.segments });
  }
  return rows;
}

/** The quantize stage: every requested format from the merged (or base) model. */
export async function quantizeRecipe(recipe: LoadedRecipe, sink: Sink = silentSink, o: QuantizeRecipeOptions = {}): Promise<QuantizeSummary[]> {
  const summaries = await withRunLock(recipe.output, `v4tune quantize ${recipe.file}`, () => quantizeLocked(recipe, sink, o), (l) => sink.warn(l));
  for (const s of summaries) {
    sink.log(`${s.format}: ${s.tensorsQuantized} tensors quantized, ${s.tensorsKept} kept${s.tensorsFallback.length ? `, ${s.tensorsFallback.length} in a fallback type (${s.format === 'gguf-q4_k' ? 'Q5_0: input not a multiple of 256' : 'F16: input not a multiple of 32'})` : ''}${s.tensorsSkipped ? `, ${s.tensorsSkipped} tensors llama.cpp does not read not written` : ''}; ${(s.bytesIn / 2 ** 20).toFixed(1)} MiB → ${(s.bytesOut / 2 ** 20).toFixed(1)} MiB (${s.compression.toFixed(2)}x) → ${s.out}`);
    for (const [kind, k] of Object.entries(s.errors)) {
      const outErr = k.relOutputError === undefined ? '' : `; output error ${(100 * k.relOutputError).toFixed(2)}% (round to nearest ${(100 * k.rtnRelOutputError!).toFixed(2)}%)`;
      sink.log(`  ${kind}: ${k.tensors} tensors, max |err| ${k.maxAbsError.toExponential(3)}, mean |err| ${k.meanAbsError.toExponential(3)}, relative RMS ${(100 * k.relRmsError).toFixed(2)}%${outErr}`);
    }
    if (s.calibration) {
      const c = s.calibration;
      sink.log(`  GPTQ: ${c.rows} calibration rows, damp ${c.damp}, ${c.reused ? 'Hessians of the previous format reused' : `${c.passes} calibration pass${c.passes === 1 ? '' : 'es'} (${c.blockRuns} block run${c.blockRuns === 1 ? '' : 's'})`}, ${c.linears} linears on ${c.factorizations} factorisations${c.rtnFallback.length ? `; ${c.rtnFallback.length} linears no calibration token reached, rounded to nearest` : ''}`);
    }
  }
  return summaries;
}

async function quantizeLocked(recipe: LoadedRecipe, sink: Sink, o: QuantizeRecipeOptions): Promise<QuantizeSummary[]> {
  const merged = runPath(recipe.output, 'merged');
  const model = o.model ?? (existsSync(join(merged, 'config.json')) ? merged : recipeModelDir(recipe));
  if (!existsSync(join(model, 'config.json'))) throw new InputError(`${recipe.file}: model folder ${model} has no config.json (run \`v4tune merge\` or \`v4tune init-model\` first, or give --model)`);
  const formats = o.formats ?? recipe.export.quantize;
  if (formats.length === 0) throw new InputError(`${recipe.file}: export.quantize is empty (list gptq / gguf-q4_0 / gguf-q4_k there, or give --format)`);
  const method = o.method ?? recipe.export.method;
  const groupSize = o.groupSize ?? recipe.export.group_size;
  const outDir = o.out ?? runPath(recipe.output, 'quantized');
  // the plan's lines end a format's progress bar
  let bar: Progress | null = null;
  const log = (l: string) => {
    bar?.stop();
    bar = null;
    sink.log(l);
  };
  let calibration: CalibrationOptions | undefined;
  if (method === 'gptq') {
    calibration = { rows: calibrationRows(recipe, sink), damp: recipe.export.gptq_damp, backend: recipe.train.backend, note: log };
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
      log(`quantize ${model} → ${target} (${format}, method ${method}${format === 'gptq' ? `, group size ${groupSize}` : `, ${FORMAT_NOTE[format]}`}${how})`);
      out.set(format, await quantizeCheckpoint({
        model, out: target, overwrite: o.overwrite, directIo: o.directIo, format, method, groupSize, calibration, session: cal?.session,
        onTensor: (done, total) => {
          bar ??= sink.progress(format, total, 'tensors');
          bar.update(done);
          if (done === total) {
            bar.stop();
            bar = null;
          }
        },
      }));
    }
    return formats.map((f) => out.get(f)!);
  } finally {
    await cal?.close();
  }
}
