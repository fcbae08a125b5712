// manifest.json of a prepared dataset: what it was built from and what it holds.
import type { TokenizerKind } from './tokenizer.js';

export const DATASET_FORMAT = 'v4tune-dataset';
export const DATASET_FORMAT_VERSION = 1;

export interface SplitManifest {
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
}

export interface SourceManifest {
  path: string;
  /** The source pattern (glob) that matched the file. */
  pattern: string;
  format: 'text' | 'jsonl' | 'chat';
  text_field: string;
  bytes: number;
  sha256: string;
  documents: number;
}

export interface DatasetManifest {
  format: typeof DATASET_FORMAT;
  format_version: number;
  v4tune_version: string;
  /** sha256 over everything the output depends on; an equal key means the output can be reused. */
  cache_key: string;
  created_at: string;
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
  sources: SourceManifest[];
  documents: {
    /** Documents read from the sources (empty ones excluded). */
    read: number;
    /** Whitespace-only documents skipped. */
    empty: number;
    /** Exact duplicates dropped (0 when dedup is off). */
    duplicates: number;
    kept: number;
  };
  splits: { train: SplitManifest; eval: SplitManifest };
  rows: number;
  tokens: number;
  loss_tokens: number;
  packing_efficiency: number;
}
