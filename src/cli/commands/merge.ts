// `v4tune merge [recipe]`: merge a trained LoRA adapter into the base weights by streaming
// (src/stages/merge.ts). With a recipe the paths default to the recipe's model,
// `<output>/adapter` and `<output>/merged`, the dtype to export.merge_dtype; without one,
// --model, --adapter and --out name them.
import type { Command } from 'commander';
import { InputError } from '../../errors.js';
import type { MergeDtype } from '../../export/merge.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

interface MergeFlags {
  model?: string;
  adapter?: string;
  out?: string;
  dtype?: string;
  maxShardMb?: string;
  overwrite?: boolean;
  directIo?: boolean;
}

function parseDtype(s: string): MergeDtype {
  if (s !== 'original' && s !== 'bf16') throw new InputError(`--dtype: must be original or bf16 (got "${s}")`);
  return s;
}

export function register(program: Command): void {
  program.command('merge')
    .description('merge a LoRA adapter into the base weights, streaming tensor by tensor (FP8/FP4 requantised, or BF16)')
    .argument('[recipe]', 'recipe .yaml file (defaults: its model, <output>/adapter, <output>/merged, export.merge_dtype)')
    .option('--model <dir>', 'base checkpoint folder (default: the recipe\'s model)')
    .option('--adapter <dir>', 'PEFT adapter folder (default: <output>/adapter)')
    .option('--out <dir>', 'output folder, written atomically (default: <output>/merged)')
    .option('--dtype <dtype>', 'original (requantise to the stored FP8/FP4) or bf16 (default: the recipe\'s export.merge_dtype, else original)')
    .option('--max-shard-mb <n>', 'output shard size limit in MiB (default: the base\'s largest shard)')
    .option('--overwrite', 'replace an output folder that v4tune did not write as a merged model')
    .option('--no-direct-io', 'read and write through the page cache (default: direct I/O past it, where the file system takes it, for the output and for base shards mostly not cached)')
    .action(action(async (ctx: CliContext, file: string | undefined, opts: MergeFlags) => {
      // the recipe's parser (yaml, zod) only with a recipe: merging by paths starts without it
      const [recipe, { mergeModel, mergeRecipe }] = await Promise.all([
        file !== undefined ? import('../../recipe/load.js').then((m) => m.loadRecipe(file)) : null,
        import('../../stages/merge.js'),
      ]);
      if (!recipe) {
        for (const k of ['model', 'adapter', 'out'] as const) {
          if (opts[k] === undefined) throw new InputError(`--${k}: required without a recipe (v4tune merge --model DIR --adapter DIR --out DIR)`);
        }
      }
      const dtype = opts.dtype !== undefined ? parseDtype(opts.dtype) : undefined;
      let maxShardBytes: number | undefined;
      if (opts.maxShardMb !== undefined) {
        const mb = Number(opts.maxShardMb);
        if (!Number.isFinite(mb) || mb <= 0) throw new InputError(`--max-shard-mb: must be a positive number (got ${opts.maxShardMb})`);
        maxShardBytes = Math.round(mb * 1024 * 1024);
      }
      const o = { maxShardBytes, overwrite: opts.overwrite === true, directIo: opts.directIo !== false };
      const s = recipe
        ? await mergeRecipe(recipe, ctx, { ...o, preflight: false, paths: { model: opts.model, adapter: opts.adapter, out: opts.out, dtype } })
        : await mergeModel({ model: opts.model!, adapter: opts.adapter!, out: opts.out!, dtype: dtype ?? 'original' }, ctx, o);
      return { ok: true, ...s };
    }));
}
