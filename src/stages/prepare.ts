// The prepare stage: the recipe's corpus → tokenized, packed Arrow shards + manifest in
// data.output (src/data/prepare.ts), with the recipe's tokenizer and what its model allows
// (recipe/model.ts), under the run folder's lock. Reused when nothing changed.
import { existsSync, readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { prepareDataset, type PrepareSummary } from '../data/prepare.js';
import { withRunLock } from '../lock.js';
import type { LoadedRecipe } from '../recipe/load.js';
import { EMBEDDED_TOKENIZER, isEmbeddedTokenizer, recipeMaxPositions, recipeTokenizer, recipeVocabSize } from '../recipe/model.js';
import { silentSink, type Sink } from '../sink.js';

export type { PrepareSummary } from '../data/prepare.js';

export interface PrepareRecipeOptions {
  /** replace a data.output folder that v4tune did not write as a dataset (the user's --overwrite) */
  overwrite?: boolean;
}

export async function prepareRecipe(recipe: LoadedRecipe, sink: Sink = silentSink, opts: PrepareRecipeOptions = {}): Promise<PrepareSummary> {
  return withRunLock(recipe.output, `v4tune prepare ${recipe.file}`, () => {
    const d = recipe.data;
    const tokenizer = recipeTokenizer(recipe);
    return prepareDataset({
      tokenizer,
      ...(isEmbeddedTokenizer(tokenizer) ? { tokenizerLabel: `${EMBEDDED_TOKENIZER} (the embedded DeepSeek V4 tokenizer)` } : {}),
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
      overwrite: opts.overwrite === true,
      root: recipe.dir,
      ...(existsSync(recipe.file) ? { recipe: { file: relative(recipe.dir, recipe.file), text: readFileSync(recipe.file, 'utf8') } } : {}),
    }, sink);
  }, (l) => sink.warn(l));
}

/** The prepare summary as `prepare --json` prints it and run.json records it. */
export function preparedJson(s: PrepareSummary): Record<string, unknown> {
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
