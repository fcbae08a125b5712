// `v4tune prepare <recipe>`: the recipe's corpus → tokenized, packed Arrow shards + manifest.
import type { Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../../errors.js';
import { prepareDataset, type PrepareSummary, type ProgressSink } from '../../data/prepare.js';
import { presetConfigJson } from '../../model/init.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { withRunLock } from '../../lock.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

/** The recipe's model folder: `model.path`, or `<output>/model` where a preset is created. */
export function recipeModelDir(recipe: LoadedRecipe): string {
  return recipe.model.path ?? join(recipe.output, 'model');
}

/** The tokenizer file: the recipe's `tokenizer`, else the model folder's tokenizer.json. */
export function recipeTokenizer(recipe: LoadedRecipe): string {
  if (recipe.tokenizer !== undefined) return recipe.tokenizer;
  const modelTok = join(recipeModelDir(recipe), 'tokenizer.json');
  if (existsSync(modelTok)) return modelTok;
  const hint = recipe.model.preset ? ` (the ${recipe.model.preset} preset's folder is created by \`v4tune run\` or \`v4tune init-model --out ${recipeModelDir(recipe)}\`)` : '';
  throw new InputError(`${recipe.file}: no tokenizer: the recipe has no \`tokenizer\` and ${modelTok} does not exist${hint}`);
}

/** The model's vocab_size: from its config.json, or from the preset's config when not created yet. */
export function recipeVocabSize(recipe: LoadedRecipe): number | undefined {
  const cfg = join(recipeModelDir(recipe), 'config.json');
  if (existsSync(cfg)) {
    let v: unknown;
    try { v = (JSON.parse(readFileSync(cfg, 'utf8')) as { vocab_size?: unknown }).vocab_size; } catch (e) {
      throw new InputError(`${cfg}: not valid JSON (${(e as Error).message})`);
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new InputError(`${cfg}: vocab_size must be a positive integer (got ${JSON.stringify(v)})`);
    return v;
  }
  if (recipe.model.preset) return presetConfigJson(recipe.model.preset, recipe.model.format).vocab_size as number;
  return undefined;
}

/** The prepare stage of a recipe (used by `prepare` and `run`). */
export async function prepareRecipe(recipe: LoadedRecipe, sink: ProgressSink, overwrite = false): Promise<PrepareSummary> {
  const d = recipe.data;
  return withRunLock(recipe.output, `v4tune prepare ${recipe.file}`, () => prepareDataset({
    tokenizer: recipeTokenizer(recipe),
    vocabSize: recipeVocabSize(recipe),
    sources: d.sources,
    seq_len: d.seq_len,
    packing: d.packing,
    eval_fraction: d.eval_fraction,
    seed: d.seed,
    shard_rows: d.shard_rows,
    dedup: d.dedup,
    output: d.output,
    workers: d.workers,
    overwrite,
  }, sink));
}

/** The machine-readable summary `prepare --json` prints. */
export function prepareResult(s: PrepareSummary): Record<string, unknown> {
  const m = s.manifest;
  return {
    ok: true,
    output: s.output,
    reused: s.reused,
    workers: s.workers,
    seconds: s.seconds,
    rows: m.rows,
    tokens: m.tokens,
    loss_tokens: m.loss_tokens,
    packing_efficiency: m.packing_efficiency,
    documents: m.documents,
    splits: { train: m.splits.train, eval: m.splits.eval },
    tokenizer: m.tokenizer,
  };
}

export function register(program: Command): void {
  program.command('prepare')
    .description('tokenize and pack the recipe\'s corpus into Arrow shards + manifest.json (reused when nothing changed)')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--overwrite', 'replace a data.output folder that v4tune did not write as a dataset')
    .action(action(async (ctx: CliContext, file: string, o: { overwrite?: boolean }) => {
      const recipe = loadRecipe(file);
      ctx.log(`prepare: ${recipe.data.sources.length} source(s) → ${recipe.data.output} (seq_len ${recipe.data.seq_len}, packing ${recipe.data.packing ? 'on' : 'off'})`);
      return prepareResult(await prepareRecipe(recipe, ctx, o.overwrite === true));
    }));
}
