// The inputs a stage needs from earlier stages, each checked here once: a missing or stale one is
// an InputError naming the recipe, the path and the command that makes it.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { readJsonFile } from '../fsutil.js';
import { ADAPTER_CONFIG } from '../lora/peft.js';
import { parseConfig, type V4Config } from '../model/config.js';
import { recipeModelDir } from '../recipe/layout.js';
import type { LoadedRecipe } from '../recipe/load.js';

/** The recipe's model folder, which must hold a config.json. */
export function requireModelDir(recipe: LoadedRecipe): string {
  const dir = recipeModelDir(recipe);
  if (!existsSync(join(dir, 'config.json'))) {
    throw new InputError(`${recipe.file}: model folder ${dir} has no config.json (run \`v4tune run ${recipe.file}\`${recipe.model.preset ? ` or \`v4tune init-model --preset ${recipe.model.preset} --out ${dir}\`` : ''} first)`);
  }
  return dir;
}

/** A model folder's parsed config.json (a folder without one is not a model folder). */
export function readModelConfig(dir: string): V4Config {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new InputError(`${dir}: no config.json (not a model folder)`);
  return parseConfig(readJsonFile(path), path);
}

/** The recipe's model folder and its config. */
export function requireModel(recipe: LoadedRecipe): { dir: string; config: V4Config } {
  const dir = requireModelDir(recipe);
  return { dir, config: readModelConfig(dir) };
}

/** An adapter folder the recipe's train stage made (or `hint` says how else to give one). */
export function requireAdapter(recipe: LoadedRecipe, dir: string, hint = ''): string {
  if (!existsSync(join(dir, ADAPTER_CONFIG))) {
    throw new InputError(`${recipe.file}: no trained adapter at ${dir} (run \`v4tune train ${recipe.file}\` first${hint})`);
  }
  return dir;
}
