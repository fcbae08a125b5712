// The prepared dataset a stage reads, checked here once (a missing or stale one is an InputError
// naming the recipe and the command that makes it). Apart from inputs.ts so that a merge, which
// reads no dataset, does not load Apache Arrow and the tokenizers on start.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { openDataset, type Dataset } from '../data/dataset.js';
import { InputError } from '../errors.js';
import type { LoadedRecipe } from '../recipe/load.js';

/**
 * The recipe's prepared dataset (data.output); with `sameSeqLen`, prepared with the recipe's
 * data.seq_len.
 */
export function requireDataset(recipe: LoadedRecipe, sameSeqLen = true): Dataset {
  const dir = recipe.data.output;
  if (!existsSync(join(dir, 'manifest.json'))) {
    throw new InputError(`${recipe.file}: dataset ${dir} is not prepared (run \`v4tune prepare ${recipe.file}\` or \`v4tune run ${recipe.file}\` first)`);
  }
  const ds = openDataset(dir);
  if (sameSeqLen && ds.manifest.seq_len !== recipe.data.seq_len) {
    throw new InputError(`${recipe.file}: data.seq_len is ${recipe.data.seq_len} but the dataset in ${dir} was prepared with ${ds.manifest.seq_len} (run \`v4tune prepare ${recipe.file}\` again)`);
  }
  return ds;
}

/** The number of train rows of a dataset, which must not be 0. */
export function requireTrainRows(ds: Dataset): number {
  const n = ds.rowCount('train');
  if (n === 0) throw new InputError(`${join(ds.dir, 'manifest.json')}: the train split is empty`);
  return n;
}
