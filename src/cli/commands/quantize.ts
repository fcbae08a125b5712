// `v4tune quantize <recipe>`: INT4 export of the merged (or base) model — GPTQ-layout
// safetensors and/or GGUF Q4_0 / Q4_K, rounded to nearest or by GPTQ — with reconstruction-error
// statistics per kind of linear (and, for GPTQ, the output error against round to nearest).
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { QUANT_FORMATS, quantizeRecipe, type QuantFormat, type QuantMethod, type QuantizeSummary, type RecipeQuantizeOptions } from '../../export/quantize.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { withRunLock } from '../../lock.js';
import { action } from '../action.js';
import type { CliContext, Progress } from '../context.js';

const FORMATS: readonly QuantFormat[] = QUANT_FORMATS;
const METHODS: QuantMethod[] = ['rtn', 'gptq'];

interface QuantizeFlags {
  model?: string;
  out?: string;
  format?: string;
  method?: string;
  groupSize?: string;
  overwrite?: boolean;
}

/** Quantize a recipe's model with a progress bar per format and the error statistics logged. */
export async function runQuantize(recipe: LoadedRecipe, ctx: CliContext, o: Omit<RecipeQuantizeOptions, 'log' | 'onTensor'> = {}): Promise<QuantizeSummary[]> {
  let bar: Progress | null = null;
  const summaries = await withRunLock(recipe.output, `v4tune quantize ${recipe.file}`, () => quantizeRecipe(recipe, {
    ...o,
    log: (l) => {
      bar?.stop();
      bar = null;
      ctx.log(l);
    },
    warn: (l) => ctx.warn(l),
    onTensor: (format, done, total) => {
      bar ??= ctx.progress(format, total, 'tensors');
      bar.update(done);
      if (done === total) {
        bar.stop();
        bar = null;
      }
    },
  }), (l) => ctx.warn(l));
  for (const s of summaries) {
    ctx.log(`${s.format}: ${s.tensorsQuantized} tensors quantized, ${s.tensorsKept} kept${s.tensorsFallback.length ? `, ${s.tensorsFallback.length} in a fallback type (${s.format === 'gguf-q4_k' ? 'Q5_0: input not a multiple of 256' : 'F16: input not a multiple of 32'})` : ''}${s.tensorsSkipped ? `, ${s.tensorsSkipped} tensors llama.cpp does not read not written` : ''}; ${(s.bytesIn / 2 ** 20).toFixed(1)} MiB → ${(s.bytesOut / 2 ** 20).toFixed(1)} MiB (${s.compression.toFixed(2)}x) → ${s.out}`);
    for (const [kind, k] of Object.entries(s.errors)) {
      const outErr = k.relOutputError === undefined ? '' : `; output error ${(100 * k.relOutputError).toFixed(2)}% (round to nearest ${(100 * k.rtnRelOutputError!).toFixed(2)}%)`;
      ctx.log(`  ${kind}: ${k.tensors} tensors, max |err| ${k.maxAbsError.toExponential(3)}, mean |err| ${k.meanAbsError.toExponential(3)}, relative RMS ${(100 * k.relRmsError).toFixed(2)}%${outErr}`);
    }
    if (s.calibration) {
      const c = s.calibration;
      ctx.log(`  GPTQ: ${c.rows} calibration rows, damp ${c.damp}, ${c.reused ? 'Hessians of the previous format reused' : `${c.passes} calibration pass${c.passes === 1 ? '' : 'es'}`}${c.rtnFallback.length ? `; ${c.rtnFallback.length} linears no calibration token reached, rounded to nearest` : ''}`);
    }
  }
  return summaries;
}

export function register(program: Command): void {
  program.command('quantize')
    .description('export the merged model for deployment: GPTQ safetensors (GPTQModel layout) and/or llama.cpp GGUF (F32, F16, BF16, Q8_0, Q4_0, Q4_K; tokenizer embedded, MTP in mtp-<file>), round to nearest or GPTQ')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--model <dir>', 'checkpoint to quantize (default: <output>/merged if present, else the recipe\'s model)')
    .option('--out <dir>', 'output folder (default: <output>/quantized; gptq/ and model-<TYPE>.gguf inside)')
    .option('--format <format>', `one format instead of the recipe's export.quantize: ${QUANT_FORMATS.join(' | ')}`)
    .option('--method <method>', 'INT4 rounding instead of the recipe\'s export.method: rtn | gptq (calibrates on export.calibration_rows rows of the prepared train split)')
    .option('--group-size <n>', 'INT4 group size of the gptq format instead of the recipe\'s export.group_size')
    .option('--overwrite', 'replace an output folder that v4tune did not write')
    .action(action(async (ctx: CliContext, file: string, flags: QuantizeFlags) => {
      const recipe = loadRecipe(file);
      if (flags.format !== undefined && !FORMATS.includes(flags.format as QuantFormat)) throw new InputError(`--format must be one of ${FORMATS.join(', ')} (got "${flags.format}")`);
      if (flags.method !== undefined && !METHODS.includes(flags.method as QuantMethod)) throw new InputError(`--method must be rtn or gptq (got "${flags.method}")`);
      let groupSize: number | undefined;
      if (flags.groupSize !== undefined) {
        groupSize = Number(flags.groupSize);
        if (!Number.isInteger(groupSize) || groupSize < 8) throw new InputError(`--group-size must be an integer ≥ 8 (got ${flags.groupSize})`);
      }
      const summaries = await runQuantize(recipe, ctx, {
        model: flags.model,
        out: flags.out,
        formats: flags.format ? [flags.format as QuantFormat] : undefined,
        method: flags.method as QuantMethod | undefined,
        groupSize,
        overwrite: flags.overwrite === true,
      });
      return { ok: true, outputs: summaries };
    }));
}
