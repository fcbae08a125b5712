// What a recipe's model decides before the model exists: the tokenizer file, vocab_size and
// max_position_embeddings. A recipe needs no model to prepare data: `tokenizer` names a file or
// `deepseek-v4` (the embedded tokenizer), and with `model.preset` and no tokenizer the preset's
// own (embedded) tokenizer is used without creating the checkpoint.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeEmbeddedTokenizer } from '../data/embedded-tokenizer.js';
import { InputError } from '../errors.js';
import { readJsonFile } from '../fsutil.js';
import { presetConfigJson } from '../model/init.js';
import type { LoadedRecipe } from './load.js';
import { recipeHasModel, recipeModelDir } from './layout.js';

/** The `tokenizer` value that names the embedded DeepSeek V4 tokenizer. */
export const EMBEDDED_TOKENIZER = 'deepseek-v4';

let embeddedDir: string | null = null;

/** The embedded tokenizer as files (tokenizer.json + tokenizer_config.json) in a temporary folder removed at exit. */
export function embeddedTokenizerPath(): string {
  if (embeddedDir === null) {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-tokenizer-'));
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
    writeEmbeddedTokenizer(dir);
    embeddedDir = dir;
  }
  return join(embeddedDir, 'tokenizer.json');
}

/** Whether `file` is the embedded tokenizer's temporary copy. */
export function isEmbeddedTokenizer(file: string): boolean {
  return embeddedDir !== null && file === join(embeddedDir, 'tokenizer.json');
}

/**
 * The tokenizer file: the recipe's `tokenizer` (`deepseek-v4`: the embedded one), else the model
 * folder's tokenizer.json, else for a preset the embedded tokenizer its folder will hold.
 */
export function recipeTokenizer(recipe: LoadedRecipe): string {
  if (recipe.tokenizer === EMBEDDED_TOKENIZER) return embeddedTokenizerPath();
  if (recipe.tokenizer !== undefined) return recipe.tokenizer;
  if (recipe.model.preset !== undefined) {
    const modelTok = join(recipeModelDir(recipe), 'tokenizer.json');
    return existsSync(modelTok) ? modelTok : embeddedTokenizerPath();
  }
  const hint = `set \`tokenizer:\` in the recipe to a tokenizer.json or SentencePiece .model file, or to \`${EMBEDDED_TOKENIZER}\` for the embedded DeepSeek V4 tokenizer`;
  if (!recipeHasModel(recipe)) throw new InputError(`${recipe.file}: no tokenizer: the recipe has neither \`tokenizer\` nor a model; ${hint}`);
  const modelTok = join(recipeModelDir(recipe), 'tokenizer.json');
  if (existsSync(modelTok)) return modelTok;
  throw new InputError(`${recipe.file}: no tokenizer: the recipe has no \`tokenizer\` and ${modelTok} does not exist; ${hint}`);
}

/** A numeric field of the model's config.json, or of the preset's config when it is not created yet. */
function modelConfigField(recipe: LoadedRecipe, field: string): number | undefined {
  if (!recipeHasModel(recipe)) return undefined;
  const cfg = join(recipeModelDir(recipe), 'config.json');
  if (existsSync(cfg)) {
    const v = (readJsonFile(cfg) as Record<string, unknown>)[field];
    if (v === undefined && field !== 'vocab_size') return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new InputError(`${cfg}: ${field} must be a positive integer (got ${JSON.stringify(v)})`);
    return v;
  }
  if (recipe.model.preset) return presetConfigJson(recipe.model.preset, recipe.model.format)[field] as number | undefined;
  return undefined;
}

/** The model's vocab_size: from its config.json, or from the preset's config when not created yet. */
export function recipeVocabSize(recipe: LoadedRecipe): number | undefined {
  return modelConfigField(recipe, 'vocab_size');
}

/** The model's max_position_embeddings (data.seq_len may not exceed it). */
export function recipeMaxPositions(recipe: LoadedRecipe): number | undefined {
  return modelConfigField(recipe, 'max_position_embeddings');
}
