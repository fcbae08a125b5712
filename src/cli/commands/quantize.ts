// `v4tune quantize <recipe>`: the recipe's export.quantize formats (or one --format) from the
// merged model, else the base (src/stages/quantize.ts).
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { QUANT_FORMATS, type QuantFormat, type QuantMethod } from '../../export/quantize-types.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

const METHODS: QuantMethod[] = ['rtn', 'gptq'];

interface QuantizeFlags {
  model?: string;
  out?: string;
  format?: string;
  method?: string;
  groupSize?: string;
  overwrite?: boolean;
  directIo?: boolean;
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
    .option('--no-direct-io', 'write the outputs through the page cache (default: direct I/O, past the page cache, where the file system takes it)')
    .action(action(async (ctx: CliContext, file: string, flags: QuantizeFlags) => {
      const [{ loadRecipe }, { quantizeRecipe }] = await Promise.all([import('../../recipe/load.js'), import('../../stages/quantize.js')]);
      const recipe = loadRecipe(file);
      if (flags.format !== undefined && !QUANT_FORMATS.includes(flags.format as QuantFormat)) throw new InputError(`--format must be one of ${QUANT_FORMATS.join(', ')} (got "${flags.format}")`);
      if (flags.method !== undefined && !METHODS.includes(flags.method as QuantMethod)) throw new InputError(`--method must be rtn or gptq (got "${flags.method}")`);
      let groupSize: number | undefined;
      if (flags.groupSize !== undefined) {
        groupSize = Number(flags.groupSize);
        if (!Number.isInteger(groupSize) || groupSize < 8) throw new InputError(`--group-size must be an integer ≥ 8 (got ${flags.groupSize})`);
      }
      const outputs = await quantizeRecipe(recipe, ctx, {
        model: flags.model,
        out: flags.out,
        formats: flags.format ? [flags.format as QuantFormat] : undefined,
        method: flags.method as QuantMethod | undefined,
        groupSize,
        overwrite: flags.overwrite === true,
        directIo: flags.directIo !== false,
      });
      return { ok: true, outputs };
    }));
}
