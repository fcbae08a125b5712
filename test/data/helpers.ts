// Shared fixtures of the data tests: the embedded tokenizer written to a temp folder once per
// test file, temp folders, and a silent progress sink.
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { writeEmbeddedTokenizer } from '../../src/data/embedded-tokenizer.js';
import type { PrepareOptions } from '../../src/data/prepare.js';

export function tempDir(prefix = 'v4tune-data-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Write the embedded tokenizer into `dir`; returns the tokenizer.json path. */
export function embeddedTokenizerFile(dir: string): string {
  writeEmbeddedTokenizer(dir);
  return join(dir, 'tokenizer.json');
}

export function write(path: string, content: string | Uint8Array): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, content);
  return path;
}

export function prepareOptions(tokenizer: string, output: string, over: Partial<PrepareOptions> & Pick<PrepareOptions, 'sources'>): PrepareOptions {
  return { tokenizer, output, seq_len: 64, packing: true, eval_fraction: 0, seed: 0, shard_rows: 4096, dedup: true, workers: 1, ...over };
}

export const BUNDLED = join(dirname(new URL(import.meta.url).pathname), '../../datasets/pumpstation');
