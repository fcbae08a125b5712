// manifest.json of a prepared dataset: what it was built from and what it holds. Paths are
// relative to `paths_relative_to` (the recipe's folder when prepare ran from a recipe).
import type { Container } from './records.js';
import type { RecordFormat, SourceFormat } from './sources.js';
import type { TokenizerKind } from './tokenizer.js';

export const DATASET_FORMAT = 'v4tune-dataset';
/** 2: streaming prepare, source_ids/doc_ids columns, per-source counts, HF datasets layout. */
export const DATASET_FORMAT_VERSION = 2;

export interface SplitManifest {
  /** Documents in the split (repeats of a weighted source counted each time). */
  documents: number;
  rows: number;
  /** Document tokens (padding excluded). */
  tokens: number;
  /** Tokens with loss_mask 1. */
  loss_tokens: number;
  pad_tokens: number;
  /** Document segments (chunks), padding excluded. */
  segments: number;
  /** Documents longer than seq_len, cut into chunks. */
  chunked_documents: number;
  /** tokens / (rows × seq_len). */
  packing_efficiency: number;
  /** Arrow IPC files of this split, in row order. */
  shards: string[];
  /** The same rows as HF datasets stream files, in `<split>/` (absent when `hf_datasets` is off). */
  hf_files?: string[];
}

export interface SourceFileManifest {
  path: string;
  container: Container;
  /** The record format the file was read as. */
  format: RecordFormat;
  bytes: number;
  sha256: string;
  /** doc_ids of this file's records start here (a record's id is this + its index in the file). */
  first_doc_id: number;
  /** Records in the file (JSONL: lines, blank ones included). */
  records: number;
}

export interface SourceManifest {
  /** The name in the source_ids column (its index in this list) and `inspect --source`. */
  name: string;
  /** The source's path or glob as the recipe gives it. */
  pattern: string;
  format: SourceFormat;
  text_field: string;
  weight: number;
  max_tokens: number | null;
  max_documents: number | null;
  files: SourceFileManifest[];
  /** Documents read (readable and not empty), before dedup and mixing. */
  read: number;
  /** Records that did not fit their format (up to data.max_bad_records allowed). */
  bad: number;
  /** The first bad records, as `file:line: reason`. */
  bad_examples: string[];
  /** Whitespace-only documents skipped. */
  empty: number;
  /** Exact duplicates dropped (of a document seen earlier in this or another source). */
  duplicates: number;
  /** Documents read and kept by dedup that are in no split: sampled out (weight < 1) or past a cap. */
  dropped: number;
  /** Documents in the dataset: train (with repeats) + eval. */
  documents: number;
  train_documents: number;
  eval_documents: number;
  /** Extra copies from weight > 1 (train only). */
  repeats: number;
  tokens: number;
  loss_tokens: number;
  /** This source's share of the dataset's tokens. */
  token_share: number;
  /** The cap that stopped this source, if one did. */
  cap_reached: 'max_tokens' | 'max_documents' | null;
}

export interface DatasetManifest {
  format: typeof DATASET_FORMAT;
  format_version: number;
  v4tune_version: string;
  /** sha256 over everything the output depends on; an equal key means the output can be reused. */
  cache_key: string;
  created_at: string;
  /** What the relative paths below are relative to. */
  paths_relative_to?: string;
  tokenizer: {
    kind: TokenizerKind;
    /** The copy in the dataset folder. */
    file: string;
    /** Where it was copied from. */
    source: string;
    sha256: string;
    vocab_size: number;
    bos_id: number;
    eos_id: number;
    /** Which encoder produced the ids: v4tune's byte-level BPE, or the library (same ids). */
    encoder?: string;
  };
  seq_len: number;
  packing: boolean;
  eval_fraction: number;
  seed: number;
  shard_rows: number;
  dedup: boolean;
  max_bad_records?: number;
  /** Columns of every shard. */
  columns?: string[];
  /** HF datasets layout (dataset_dict.json + a folder per split) written beside the shards. */
  hf_datasets?: boolean;
  sources: SourceManifest[];
  documents: {
    /** Documents read from the sources (empty and bad ones excluded). */
    read: number;
    /** Whitespace-only documents skipped. */
    empty: number;
    /** Exact duplicates dropped (0 when dedup is off). */
    duplicates: number;
    /** Documents in the dataset (repeats included). */
    kept: number;
    bad?: number;
    dropped?: number;
  };
  splits: { train: SplitManifest; eval: SplitManifest };
  rows: number;
  tokens: number;
  loss_tokens: number;
  packing_efficiency: number;
}
