// `v4tune prepare <recipe>`: the recipe's corpus → tokenized, packed Arrow shards + manifest
// (src/data/recipe.ts holds the stage; this file parses the verb and holds the run lock).
import type { Command } from 'commander';
import type { PrepareSummary, ProgressSink } from '../../data/prepare.js';
import { prepareFromRecipe } from '../../data/recipe.js';
import { loadRecipe, type LoadedRecipe } from '../../recipe/load.js';
import { withRunLock } from '../../lock.js';
import { action } from '../action.js';
import type { CliContext } from '../context.js';

export { prepareResult, recipeModelDir, recipeTokenizer, recipeVocabSize } from '../../data/recipe.js';
import { prepareResult } from '../../data/recipe.js';

/** The prepare stage of a recipe (used by `prepare` and `run`), under the run folder's lock. */
export async function prepareRecipe(recipe: LoadedRecipe, sink: ProgressSink, overwrite = false): Promise<PrepareSummary> {
  return withRunLock(recipe.output, `v4tune prepare ${recipe.file}`, () => prepareFromRecipe(recipe, sink, overwrite));
}

export function register(program: Command): void {
  program.command('prepare')
    .description('tokenize and pack the recipe\'s corpus into Arrow shards + manifest.json + the HF datasets layout (reused when nothing changed); needs a tokenizer, not a model')
    .argument('<recipe>', 'recipe .yaml file')
    .option('--overwrite', 'replace a data.output folder that v4tune did not write as a dataset')
    .action(action(async (ctx: CliContext, file: string, o: { overwrite?: boolean }) => {
      const recipe = loadRecipe(file);
      ctx.log(`prepare: ${recipe.data.sources.length} source(s) → ${recipe.data.output} (seq_len ${recipe.data.seq_len}, packing ${recipe.data.packing ? 'on' : 'off'})`);
      return prepareResult(await prepareRecipe(recipe, ctx, o.overwrite === true));
    }));
}
