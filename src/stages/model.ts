// The model stage of `run`: the recipe's checkpoint folder, created from its preset when it has
// one (and reused while the preset's settings are unchanged: `<output>/model.preset.json`).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../fsutil.js';
import { initModel } from '../model/init.js';
import { recipeModelDir, runPath } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { silentSink, type Progress, type Sink } from '../sink.js';

export interface ModelStageResult {
  dir: string;
  /** true when this call created the preset */
  created: boolean;
}

/** The preset settings a created model folder was made with (beside it, in the run folder). */
function presetStamp(recipe: LoadedRecipe): string {
  const { preset, seed, format, layers, experts } = recipe.model;
  return `${JSON.stringify({ preset, seed, format, layers, experts })}\n`;
}

export async function ensureModel(recipe: LoadedRecipe, sink: Sink = silentSink): Promise<ModelStageResult> {
  const dir = recipeModelDir(recipe);
  if (recipe.model.preset === undefined) return { dir, created: false };
  const stampFile = runPath(recipe.output, 'presetStamp');
  const stamp = presetStamp(recipe);
  if (existsSync(join(dir, 'config.json')) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) {
    sink.log(`model: reusing the ${recipe.model.preset} preset in ${dir} (settings unchanged)`);
    return { dir, created: false };
  }
  let bar: Progress | undefined;
  await initModel({
    preset: recipe.model.preset,
    out: dir,
    seed: recipe.model.seed,
    format: recipe.model.format,
    layers: recipe.model.layers,
    experts: recipe.model.experts,
    onTensor: (done, total) => (bar ??= sink.progress(`model: creating the ${recipe.model.preset} preset`, total, 'tensors')).update(done),
  });
  bar?.stop();
  writeFileAtomic(stampFile, stamp);
  return { dir, created: true };
}
