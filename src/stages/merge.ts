// The merge stage: a trained LoRA adapter merged into the base weights by streaming
// (design.md "Export"), so a full-size checkpoint merges on a small machine. For a recipe the
// paths default to its model, `<output>/adapter` and `<output>/merged`, the dtype to
// export.merge_dtype.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { mergeAdapter, type MergeDtype, type MergePlan, type MergeSummary } from '../export/merge.js';
import { withRunLock } from '../lock.js';
import { recipeModelDir, runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { assertExportFits } from '../recipe/preflight.js';
import { silentSink, type Progress, type Sink } from '../sink.js';
import { readModelConfig, requireAdapter } from './inputs.js';

export type { MergeSummary } from '../export/merge.js';

export interface MergePaths {
  model: string;
  adapter: string;
  out: string;
  dtype: MergeDtype;
}

export interface MergeModelOptions {
  /** output shard size limit (default: the base's largest shard) */
  maxShardBytes?: number;
  /** replace an output folder v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  /** direct I/O for the output and for uncached base shards where the file system takes it (default true; false: the user's --no-direct-io) */
  directIo?: boolean;
}

const GiB = 1024 ** 3;
const fmtBytes = (b: number): string => (b >= GiB ? `${(b / GiB).toFixed(2)} GiB` : `${(b / 1024 ** 2).toFixed(2)} MiB`);

/** The merge stage's paths for a recipe: its model, `<output>/adapter`, `<output>/merged`, export.merge_dtype. */
export function recipeMergePaths(recipe: LoadedRecipe): MergePaths {
  return { model: recipeModelDir(recipe), adapter: runPath(recipe.output, 'adapter'), out: runPath(recipe.output, 'merged'), dtype: recipe.export.merge_dtype };
}

/** A merge of any adapter into any base, with its plan, progress and result on the sink. */
export async function mergeModel(p: MergePaths, sink: Sink = silentSink, o: MergeModelOptions = {}): Promise<MergeSummary> {
  readModelConfig(p.model);
  let bar: Progress | undefined;
  const summary = await mergeAdapter({
    base: p.model,
    adapter: p.adapter,
    out: p.out,
    dtype: p.dtype,
    maxShardBytes: o.maxShardBytes,
    overwrite: o.overwrite === true,
    directIo: o.directIo,
    warn: (l) => sink.warn(l),
    onPlan: (plan: MergePlan) => {
      sink.log(`merge ${plan.adapter} into ${plan.base} (${plan.layout} layout) → ${plan.out}, dtype ${plan.dtype}`);
      sink.log(`plan: ${plan.tensors} tensors: ${plan.merged.length} merged with the adapter, ${plan.converted} converted to bf16, ${plan.copied} copied as stored`);
      sink.log(`plan: read ${fmtBytes(plan.bytesIn)}, write ${fmtBytes(plan.bytesOut)} in shards of at most ${fmtBytes(plan.maxShardBytes)}; largest tensor ${fmtBytes(plan.largestTensorBytes)}`);
      bar = sink.progress('merge', plan.tensors, 'tensors');
    },
    onTensor: (e) => bar?.update(e.index, e.action === 'merged' ? e.name : ''),
  });
  bar?.stop();
  sink.log(`merged ${summary.merged} tensors, converted ${summary.converted}, copied ${summary.copied}; wrote ${fmtBytes(summary.bytesWritten)} in ${summary.shards.length} shards to ${summary.out} (${summary.directIo ? 'direct I/O' : 'through the page cache'}) in ${summary.seconds.toFixed(1)} s (peak RSS ${fmtBytes(summary.peakRssBytes)})`);
  return summary;
}

export interface MergeRecipeOptions extends MergeModelOptions {
  /** instead of the recipe's paths and dtype */
  paths?: Partial<MergePaths>;
  /** check the recipe's export.quantize settings against the model before merging (default true, as `run` does) */
  preflight?: boolean;
}

/**
 * The merge stage of a recipe (export.merge): its adapter into its model, under the run
 * folder's lock.
 */
export async function mergeRecipe(recipe: LoadedRecipe, sink: Sink = silentSink, o: MergeRecipeOptions = {}): Promise<MergeSummary> {
  const given = Object.fromEntries(Object.entries(o.paths ?? {}).filter(([, v]) => v !== undefined)) as Partial<MergePaths>;
  const p: MergePaths = { ...recipeMergePaths(recipe), ...given };
  if (given.adapter === undefined) requireAdapter(recipe, p.adapter, o.paths ? ', or pass --adapter' : '');
  if (o.preflight !== false && existsSync(join(p.model, 'config.json'))) assertExportFits(recipe, readModelConfig(p.model));
  return withRunLock(recipe.output, `v4tune merge ${recipe.file}`, () => mergeModel(p, sink, o), (l) => sink.warn(l));
}
