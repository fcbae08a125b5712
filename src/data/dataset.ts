// Reading a prepared dataset folder: the manifest, its tokenizer, and its rows per split.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { readShard, type DatasetRow } from './arrow.js';
import { DATASET_FORMAT, type DatasetManifest } from './manifest.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';

export type { DatasetRow } from './arrow.js';
export type Split = 'train' | 'eval';

export interface Dataset {
  dir: string;
  manifest: DatasetManifest;
  /** Path of the dataset's own copy of its tokenizer. */
  tokenizerPath: string;
  /** Rows of a split, shard by shard, in order. */
  rows(split: Split): Iterable<DatasetRow>;
  rowCount(split: Split): number;
  /** The dataset's tokenizer (loaded on first use). */
  tokenizer(): Promise<TextTokenizer>;
}

/** Open a dataset folder written by `prepare`; a folder that is not one is an InputError. */
export function openDataset(dir: string): Dataset {
  const mpath = join(dir, 'manifest.json');
  if (!existsSync(mpath)) throw new InputError(`${dir}: not a v4tune dataset (no manifest.json)`);
  let manifest: DatasetManifest;
  try {
    manifest = JSON.parse(readFileSync(mpath, 'utf8')) as DatasetManifest;
  } catch (e) {
    throw new InputError(`${mpath}: not valid JSON (${(e as Error).message})`);
  }
  if (manifest.format !== DATASET_FORMAT) throw new InputError(`${mpath}: format is ${JSON.stringify(manifest.format)}, expected "${DATASET_FORMAT}"`);
  for (const f of [...manifest.splits.train.shards, ...manifest.splits.eval.shards]) {
    if (!existsSync(join(dir, f))) throw new InputError(`${join(dir, f)}: shard listed in the manifest is missing`);
  }
  const tokenizerPath = join(dir, manifest.tokenizer.file);
  let tok: Promise<TextTokenizer> | null = null;
  return {
    dir,
    manifest,
    tokenizerPath,
    rowCount: (split) => manifest.splits[split].rows,
    *rows(split) {
      for (const shard of manifest.splits[split].shards) {
        const path = join(dir, shard);
        yield* readShard(path, readFileSync(path));
      }
    },
    tokenizer: () => (tok ??= loadTokenizer(tokenizerPath)),
  };
}
