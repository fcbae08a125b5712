// `v4tune merge [recipe]`: merge a trained LoRA adapter into the base weights by streaming
// (design.md "Export"), so a full-size checkpoint merges on a small machine. With a recipe the
// paths default to the recipe's model, `<output>/adapter` and `<output>/merged`, the dtype to
// export.merge_dtype; without one, --model, --adapter and --out name them.
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../../errors.js';
import { mergeAdapter, type MergeDtype, type MergePlan, type MergeSummary } from '../../export/merge.js';
import { readJsonFile } from '../../fsutil.js';
import { parseConfig } from '../../model/config.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { assertExportFits } from '../../recipe/preflight.js';
import { withRunLock } from '../../lock.js';
import { action } from '../action.js';
import type { CliContext, Progress } from '../context.js';
import { recipeModelDir } from './prepare.js';

export interface MergePaths {
  model: string;
  adapter: string;
  out: string;
  dtype: MergeDtype;
}

interface MergeFlags {
  model?: string;
  adapter?: string;
  out?: string;
  dtype?: string;
  maxShardMb?: string;
  overwrite?: boolean;
}

const GiB = 1024 ** 3;
const fmtBytes = (b: number): string => (b >= GiB ? `${(b / GiB).toFixed(2)} GiB` : `${(b / 1024 ** 2).toFixed(2)} MiB`);

/** The merge stage's paths for a recipe: its model, `<output>/adapter`, `<output>/merged`, export.merge_dtype. */
export function recipeMergePaths(recipe: LoadedRecipe): MergePaths {
  return { model: recipeModelDir(recipe), adapter: join(recipe.output, 'adapter'), out: join(recipe.output, 'merged'), dtype: recipe.export.merge_dtype };
}

function parseDtype(s: string): MergeDtype {
  if (s !== 'original' && s !== 'bf16') throw new InputError(`--dtype: must be original or bf16 (got "${s}")`);
  return s;
}

/** Run a merge with the plan, progress and result lines on ctx; returns the summary. */
export async function runMerge(ctx: CliContext, p: MergePaths, maxShardBytes?: number, overwrite = false): Promise<MergeSummary> {
  if (!existsSync(join(p.model, 'config.json'))) throw new InputError(`${p.model}: no config.json (not a model folder)`);
  let bar: Progress | undefined;
  const summary = await mergeAdapter({
    base: p.model,
    adapter: p.adapter,
    out: p.out,
    dtype: p.dtype,
    maxShardBytes,
    overwrite,
    warn: (l) => ctx.warn(l),
    onPlan: (plan: MergePlan) => {
      ctx.log(`merge ${plan.adapter} into ${plan.base} (${plan.layout} layout) → ${plan.out}, dtype ${plan.dtype}`);
      ctx.log(`plan: ${plan.tensors} tensors: ${plan.merged.length} merged with the adapter, ${plan.converted} converted to bf16, ${plan.copied} copied as stored`);
      ctx.log(`plan: read ${fmtBytes(plan.bytesIn)}, write ${fmtBytes(plan.bytesOut)} in shards of at most ${fmtBytes(plan.maxShardBytes)}; largest tensor ${fmtBytes(plan.largestTensorBytes)}`);
      bar = ctx.progress('merge', plan.tensors, 'tensors');
    },
    onTensor: (e) => bar?.update(e.index, e.action === 'merged' ? e.name : ''),
  });
  bar?.stop();
  ctx.log(`merged ${summary.merged} tensors, converted ${summary.converted}, copied ${summary.copied}; wrote ${fmtBytes(summary.bytesWritten)} in ${summary.shards.length} shards to ${summary.out} in ${summary.seconds.toFixed(1)} s (peak RSS ${fmtBytes(summary.peakRssBytes)})`);
  return summary;
}

/** The merge stage of `v4tune run` (export.merge: true): the recipe's adapter into its model. */
export async function mergeRecipe(recipe: LoadedRecipe, ctx: CliContext): Promise<MergeSummary> {
  const p = recipeMergePaths(recipe);
  if (!existsSync(join(p.adapter, 'adapter_config.json'))) {
    throw new InputError(`${recipe.file}: no trained adapter at ${p.adapter} (run \`v4tune train ${recipe.file}\` first)`);
  }
  // the recipe's quantize settings are checked before the merge, not after it
  const cfgPath = join(p.model, 'config.json');
  if (existsSync(cfgPath)) assertExportFits(recipe, parseConfig(readJsonFile(cfgPath), cfgPath));
  return withRunLock(recipe.output, `v4tune merge ${recipe.file}`, () => runMerge(ctx, p), (l) => ctx.warn(l));
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
    .action(action(async (ctx: CliContext, file: string | undefined, opts: MergeFlags) => {
      let paths: MergePaths;
      if (file !== undefined) {
        const recipe = loadRecipe(file);
        const d = recipeMergePaths(recipe);
        paths = { model: opts.model ?? d.model, adapter: opts.adapter ?? d.adapter, out: opts.out ?? d.out, dtype: opts.dtype !== undefined ? parseDtype(opts.dtype) : d.dtype };
        if (opts.adapter === undefined && !existsSync(join(paths.adapter, 'adapter_config.json'))) {
          throw new InputError(`${recipe.file}: no trained adapter at ${paths.adapter} (run \`v4tune train ${file}\` first, or pass --adapter)`);
        }
      } else {
        for (const k of ['model', 'adapter', 'out'] as const) {
          if (opts[k] === undefined) throw new InputError(`--${k}: required without a recipe (v4tune merge --model DIR --adapter DIR --out DIR)`);
        }
        paths = { model: opts.model!, adapter: opts.adapter!, out: opts.out!, dtype: parseDtype(opts.dtype ?? 'original') };
      }
      let maxShardBytes: number | undefined;
      if (opts.maxShardMb !== undefined) {
        const mb = Number(opts.maxShardMb);
        if (!Number.isFinite(mb) || mb <= 0) throw new InputError(`--max-shard-mb: must be a positive number (got ${opts.maxShardMb})`);
        maxShardBytes = Math.round(mb * 1024 * 1024);
      }
      const merge = () => runMerge(ctx, paths, maxShardBytes, opts.overwrite === true);
      const s = file !== undefined ? await withRunLock(loadRecipe(file).output, `v4tune merge ${file}`, merge, (l) => ctx.warn(l)) : await merge();
      return { ok: true, ...s };
    }));
}
