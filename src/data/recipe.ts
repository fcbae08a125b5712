// The prepare stage of a recipe: which tokenizer, what the model allows (vocab_size,
// max_position_embeddings), and the recipe's `data` section as PrepareOptions. A recipe needs no
// model to prepare data: `tokenizer` names a file or `deepseek-v4` (the embedded tokenizer), and
// with `model.preset` and no tokenizer the preset's own (embedded) tokenizer is used without
// creating the checkpoint.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { InputError } from '../errors.js';
import { presetConfigJson } from '../model/init.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { writeEmbeddedTokenizer } from './embedded-tokenizer.js';
import { prepareDataset, type PrepareSummary, type ProgressSink } from './prepare.js';

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

/** Whether the recipe names a base model (a data-only recipe has no `model` section). */
export function recipeHasModel(recipe: LoadedRecipe): boolean {
  return recipe.model.path !== undefined || recipe.model.preset !== undefined;
}

/** The recipe's model folder: `model.path`, or `<output>/model` where a preset is created. */
export function recipeModelDir(recipe: LoadedRecipe): string {
  if (!recipeHasModel(recipe)) {
    throw new InputError(`${recipe.file}: the recipe has no model section (a data-only recipe can run \`v4tune prepare ${recipe.file}\`); add model.path or model.preset for this stage`);
  }
  return recipe.model.path ?? join(recipe.output, 'model');
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
    let v: unknown;
    try { v = (JSON.parse(readFileSync(cfg, 'utf8')) as Record<string, unknown>)[field]; } catch (e) {
      throw new InputError(`${cfg}: not valid JSON (${(e as Error).message})`);
    }
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

/** Run the prepare stage of a recipe (used by `prepare` and `run`). */
export async function prepareFromRecipe(recipe: LoadedRecipe, sink: ProgressSink, overwrite = false): Promise<PrepareSummary> {
  const d = recipe.data;
  const tokenizer = recipeTokenizer(recipe);
  const embedded = embeddedDir !== null && tokenizer === join(embeddedDir, 'tokenizer.json');
  return prepareDataset({
    tokenizer,
    ...(embedded ? { tokenizerLabel: `${EMBEDDED_TOKENIZER} (the embedded DeepSeek V4 tokenizer)` } : {}),
    vocabSize: recipeVocabSize(recipe),
    maxPositions: recipeMaxPositions(recipe),
    sources: d.sources,
    seq_len: d.seq_len,
    packing: d.packing,
    eval_fraction: d.eval_fraction,
    seed: d.seed,
    shard_rows: d.shard_rows,
    dedup: d.dedup,
    max_bad_records: d.max_bad_records,
    hf_datasets: d.hf_datasets,
    output: d.output,
    workers: d.workers,
    overwrite,
    root: recipe.dir,
    ...(existsSync(recipe.file) ? { recipe: { file: relative(recipe.dir, recipe.file), text: readFileSync(recipe.file, 'utf8') } } : {}),
  }, sink);
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
    sources: m.sources.map((x) => ({ name: x.name, documents: x.documents, tokens: x.tokens, loss_tokens: x.loss_tokens, token_share: x.token_share, bad: x.bad, dropped: x.dropped, duplicates: x.duplicates, repeats: x.repeats, cap_reached: x.cap_reached })),
    splits: { train: m.splits.train, eval: m.splits.eval },
    tokenizer: m.tokenizer,
  };
}
