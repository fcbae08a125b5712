// Quantize: export of a DeepSeek V4 checkpoint folder (base or merged) to the formats
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
// The recipe's quantize stage (every format of export.quantize, calibration rows from the
// prepared dataset) is src/stages/quantize.ts.
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { readJsonFile, writeFileAtomic } from '../fsutil.js';
import { Checkpoint } from '../model/checkpoint.js';
import { GGUF_FORMATS, isGgufFormat, writeGguf } from './gguf-export.js';
import { writeGptq } from './gptq-export.js';
import { QUANT_FORMATS, type QuantFormat, type QuantizeOptions, type QuantizeSummary, type WriteResult } from './quantize-types.js';
import { checkpointLabel, ErrorAccumulator, GptqRounder, RtnRounder, type Rounder } from './rounders.js';

export { linearKind, type LinearKind } from './linears.js';
export { ggufName } from './llama-deepseek4.js';
export { openCalibration } from './rounders.js';
export { packGptq } from './gptq-export.js';
export type { CalibrationOptions, CalibrationSummary, GgufFormat, KindStats, QuantFormat, QuantizeOptions, QuantizeSummary, QuantMethod, WriteResult } from './quantize-types.js';

export { QUANT_FORMATS };

/** the checkpoint's safetensors bytes (what the shards hold) */
function checkpointBytes(dir: string): number {
  const idx = join(dir, 'model.safetensors.index.json');
  const files = existsSync(idx)
    ? [...new Set(Object.values((readJsonFile(idx) as { weight_map: Record<string, string> }).weight_map))]
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
    rounder = opts.method === 'gptq' ? await GptqRounder.load(ckpt, opts.calibration!, errs, opts.session) : new RtnRounder(errs, checkpointLabel(ckpt));
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

/** where one format's output goes inside the quantize folder (`gptq/`, `model-<TYPE>.gguf`) */
export function formatOutput(outDir: string, format: QuantFormat): string {
  return format === 'gptq' ? join(outDir, 'gptq') : join(outDir, `model-${GGUF_FORMATS[format].label}.gguf`);
}
