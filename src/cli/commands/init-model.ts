// `v4tune init-model --preset tiny|small --out DIR [--seed N] [--format fp8|bf16]`: a random but
// well-conditioned DeepSeek V4 checkpoint in the official layout as shipped.
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import { parseConfig } from '../../model/config.js';
import { initModel, presetConfigJson, PRESETS, type Preset } from '../../model/init.js';
import { expectedTensors } from '../../model/layout.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

interface InitModelFlags {
  preset: string;
  out: string;
  seed: string;
  format: string;
  overwrite?: boolean;
}

export function register(program: Command): void {
  program.command('init-model')
    .description('write a random DeepSeek V4 checkpoint (config.json, FP8/FP4 safetensors shards + index, tokenizer)')
    .requiredOption('--preset <name>', 'tiny (every V4 feature, for tests) or small (for benchmarks)')
    .requiredOption('--out <dir>', 'output model folder (written atomically)')
    .option('--seed <n>', 'random seed; the same seed gives byte-identical files', '0')
    .option('--format <fmt>', 'fp8 (FP8 attention + FP4 experts, as shipped) or bf16', 'fp8')
    .option('--overwrite', 'replace an output folder that v4tune did not write as a model')
    .action(action(async (ctx: CliContext, flags: InitModelFlags) => {
      if (!Object.prototype.hasOwnProperty.call(PRESETS, flags.preset)) {
        throw new InputError(`--preset: unknown preset "${flags.preset}" (tiny or small)`);
      }
      if (flags.format !== 'fp8' && flags.format !== 'bf16') throw new InputError(`--format: must be fp8 or bf16 (got "${flags.format}")`);
      if (!/^\d+$/.test(flags.seed)) throw new InputError(`--seed: must be a non-negative integer (got "${flags.seed}")`);
      ctx.log(`init-model: preset ${flags.preset}, format ${flags.format}, seed ${flags.seed} → ${flags.out}`);
      const total = expectedTensors(parseConfig(presetConfigJson(flags.preset as Preset, flags.format), `preset ${flags.preset}`)).length;
      const progress = ctx.progress('tensors', total);
      const summary = await initModel({
        preset: flags.preset as Preset,
        out: flags.out,
        seed: Number(flags.seed),
        format: flags.format,
        overwrite: flags.overwrite === true,
        onTensor: (done) => progress.update(done),
      });
      progress.stop();
      ctx.log(`wrote ${summary.tensors} tensors in ${summary.shards.length} shards to ${summary.out}`);
      return { ok: true, ...summary };
    }));
}
