// The run report of a recipe: every section from the run folder, and the perplexity of each
// stage (src/report/perplexity.ts). A recipe whose output folder does not exist is an InputError.
import { existsSync, statSync } from 'node:fs';
import { InputError } from '../errors.js';
import type { LoadedRecipe } from '../recipe/load.js';
import type { Sink } from '../sink.js';
import { VERSION } from '../version.js';
import { adapterSection, dataSection, expertsSection, exportSection, modelSection, readTrainJson, recipeSection, trainingSection } from './collect.js';
import { measurePerplexity, type PerplexityOptions } from './perplexity.js';
import type { RunReport } from './types.js';

/** A report needs the recipe's run folder (InputError naming it); check before taking its lock, which would create it. */
export function assertRunFolder(recipe: LoadedRecipe): void {
  if (!existsSync(recipe.output) || !statSync(recipe.output).isDirectory()) {
    throw new InputError(`${recipe.file}: output folder ${recipe.output} does not exist (run \`v4tune run ${recipe.file}\` or \`v4tune prepare ${recipe.file}\` first)`);
  }
}

export async function buildReport(recipe: LoadedRecipe, sink: Sink, opts: PerplexityOptions = {}): Promise<RunReport> {
  assertRunFolder(recipe);
  const train = readTrainJson(recipe);
  return {
    v4tune_version: VERSION,
    generated_at: new Date().toISOString(),
    recipe: recipeSection(recipe),
    model: await modelSection(recipe),
    data: dataSection(recipe),
    training: trainingSection(recipe, train),
    adapter: await adapterSection(recipe),
    experts: await expertsSection(recipe),
    export: await exportSection(recipe),
    perplexity: await measurePerplexity(recipe, train, sink, opts),
  };
}
