// `v4tune init-model --preset tiny|small|flash --out DIR [--seed N] [--format fp8|bf16]
// [--layers N --experts M (flash)]`: a random but
// well-conditioned DeepSeek V4 checkpoint in the official layout as shipped.
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import type { Preset } from '../../model/init.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

interface InitModelFlags {
  preset: string;
  out: string;
  seed: string;
  format: string;
  layers?: string;
  experts?: string;
  overwrite?: boolean;
}

export function register(program: Command): void {
  program.command('init-model')
    .description('write a random DeepSeek V4 checkpoint (config.json, FP8/FP4 safetensors shards + index, tokenizer)')
    .requiredOption('--preset <name>', 'tiny (every V4 feature, for tests), small (for benchmarks) or flash (V4-Flash widths)')
    .requiredOption('--out <dir>', 'output model folder (written atomically)')
    .option('--seed <n>', 'random seed; the same seed gives byte-identical files', '0')
    .option('--format <fmt>', 'fp8 (FP8 attention + FP4 experts, as shipped) or bf16', 'fp8')
    .option('--layers <n>', 'flash: layers, ratio 4 (with the indexer) and 128 alternating (default 2; V4-Flash has 43)')
    .option('--experts <n>', 'flash: routed experts, top-6 (default 32; V4-Flash has 256)')
    .option('--overwrite', 'replace an output folder that v4tune did not write as a model')
    .action(action(async (ctx: CliContext, flags: InitModelFlags) => {
      const [{ parseConfig }, { initModel, presetConfigJson, PRESETS }, { expectedTensors }] = await Promise.all([
        import('../../model/config.js'), import('../../model/init.js'), import('../../model/layout.js'),
      ]);
      if (!Object.prototype.hasOwnProperty.call(PRESETS, flags.preset)) {
        throw new InputError(`--preset: unknown preset "${flags.preset}" (tiny, small or flash)`);
      }
      const count = (flag: string, v: string | undefined): number | undefined => {
        if (v === undefined) return undefined;
        if (!/^\d+$/.test(v)) throw new InputError(`${flag}: must be a positive integer (got "${v}")`);
        return Number(v);
      };
      const sizes = { layers: count('--layers', flags.layers), experts: count('--experts', flags.experts) };
      if (flags.format !== 'fp8' && flags.format !== 'bf16') throw new InputError(`--format: must be fp8 or bf16 (got "${flags.format}")`);
      if (!/^\d+$/.test(flags.seed)) throw new InputError(`--seed: must be a non-negative integer (got "${flags.seed}")`);
      ctx.log(`init-model: preset ${flags.preset}, format ${flags.format}, seed ${flags.seed} → ${flags.out}`);
      const total = expectedTensors(parseConfig(presetConfigJson(flags.preset as Preset, flags.format, sizes), `preset ${flags.preset}`)).length;
      const progress = ctx.progress('tensors', total);
      const summary = await initModel({
        preset: flags.preset as Preset,
        out: flags.out,
        seed: Number(flags.seed),
        format: flags.format,
        ...sizes,
        overwrite: flags.overwrite === true,
        onTensor: (done) => progress.update(done),
      });
      progress.stop();
      ctx.log(`wrote ${summary.tensors} tensors in ${summary.shards.length} shards to ${summary.out}`);
      return { ok: true, ...summary };
    }));
}
