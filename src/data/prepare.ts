// `prepare`: corpus sources → tokenized, packed Arrow shards + manifest.json + a copy of the
// tokenizer, written atomically. Unchanged inputs (sources' bytes, tokenizer, data options,
// v4tune version) reuse the existing output.
import { copyFileSync, existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import { InputError } from '../errors.js';
import { mulberry32 } from '../random.js';
import { claimOutput, writeDirAtomic, writeFileAtomic, type OutputClaim } from '../fsutil.js';
import { VERSION } from '../version.js';
import { shardToIPC } from './arrow.js';
import { chatTokenIds, encodeDocument, type ChatTokenIds, type Document } from './documents.js';
import { DATASET_FORMAT, DATASET_FORMAT_VERSION, type DatasetManifest, type SourceManifest, type SplitManifest } from './manifest.js';
import { packDocuments } from './pack.js';
import { resolveWorkers, tokenizeDocuments } from './pool.js';
import { readDocuments, readSourceFiles, type SourceSpec } from './sources.js';
import { loadTokenizer, sha256Hex, tokenizerKindOf } from './tokenizer.js';

export type { SourceSpec } from './sources.js';

/** The recipe's `data` section (paths absolute) plus the tokenizer and the model's vocab size. */
export interface PrepareOptions {
  /** tokenizer.json (HF) or SentencePiece .model. */
  tokenizer: string;
  sources: SourceSpec[];
  seq_len: number;
  packing: boolean;
  eval_fraction: number;
  seed: number;
  shard_rows: number;
  dedup: boolean;
  /** The dataset folder. */
  output: string;
  /** Tokenizer worker threads; 0 = one per core. */
  workers: number;
  /** replace an output folder v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  /** The model's embedding rows; a tokenizer with larger ids is refused. */
  vocabSize?: number;
}

/** What `prepare` reports to a caller: the CLI context satisfies it. */
export interface ProgressSink {
  log(line: string): void;
  progress(label: string, total: number, unit?: string): { update(done: number, note?: string): void; stop(): void };
}

export interface PrepareSummary {
  output: string;
  /** True when an existing output with the same inputs was reused. */
  reused: boolean;
  manifest: DatasetManifest;
  /** Tokenizer threads actually used (0 when reused). */
  workers: number;
  seconds: { total: number; tokenize: number };
}

const silent: ProgressSink = { log: () => {}, progress: () => ({ update: () => {}, stop: () => {} }) };

function checkOptions(o: PrepareOptions): void {
  if (!Number.isInteger(o.seq_len) || o.seq_len < 2) throw new InputError(`data.seq_len must be an integer of at least 2 (got ${o.seq_len})`);
  if (o.seq_len > 65536 * 64) throw new InputError(`data.seq_len ${o.seq_len} is larger than v4tune supports (${65536 * 64})`);
  if (!Number.isInteger(o.shard_rows) || o.shard_rows < 1) throw new InputError(`data.shard_rows must be a positive integer (got ${o.shard_rows})`);
  if (!(o.eval_fraction >= 0 && o.eval_fraction < 1)) throw new InputError(`data.eval_fraction must be in [0, 1) (got ${o.eval_fraction})`);
  if (o.sources.length === 0) throw new InputError('data.sources is empty: name at least one corpus file or glob');
  if (existsSync(o.output) && !statSync(o.output).isDirectory()) throw new InputError(`${o.output}: output path exists and is a file, not a folder`);
}


/**
 * Seeded split by document: a Fisher-Yates shuffle of 0..n-1 picks round(n·f) eval documents
 * (at least 1 when f > 0 and n ≥ 2, never all of them). Returns a flag per document.
 */
export function splitDocuments(n: number, evalFraction: number, seed: number): Uint8Array {
  const isEval = new Uint8Array(n);
  if (evalFraction <= 0 || n < 2) return isEval;
  const nEval = Math.min(n - 1, Math.max(1, Math.round(n * evalFraction)));
  const perm = Array.from({ length: n }, (_, i) => i);
  const rand = mulberry32(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  for (let k = 0; k < nEval; k++) isEval[perm[k]!] = 1;
  return isEval;
}

/** The key of exact-duplicate detection: kind and full content. */
function documentKey(d: Document): string {
  const h = createHash('sha256');
  if (d.kind === 'text') h.update('text\0').update(d.text);
  else h.update('chat\0').update(JSON.stringify(d.messages));
  return h.digest('base64');
}

function tokenizerCopyName(kind: 'hf' | 'sentencepiece'): string {
  return kind === 'hf' ? 'tokenizer.json' : 'tokenizer.model';
}

function refuseVocab(tokenizer: string, tokVocab: number, modelVocab: number | undefined): void {
  if (modelVocab !== undefined && tokVocab > modelVocab) {
    throw new InputError(`${tokenizer}: the tokenizer's ids go up to ${tokVocab - 1}, which does not fit the model's vocab_size ${modelVocab}`);
  }
}

/** The existing manifest when the output was built from exactly these inputs, else null. */
function reusable(output: string, key: string): DatasetManifest | null {
  const path = join(output, 'manifest.json');
  if (!existsSync(path)) return null;
  let m: DatasetManifest;
  try { m = JSON.parse(readFileSync(path, 'utf8')) as DatasetManifest; } catch { return null; }
  if (m.format !== DATASET_FORMAT || m.cache_key !== key) return null;
  const files = [...m.splits.train.shards, ...m.splits.eval.shards, m.tokenizer.file];
  return files.every((f) => existsSync(join(output, f))) ? m : null;
}

function splitManifest(docs: number, packed: ReturnType<typeof packDocuments>, shards: string[]): SplitManifest {
  const cells = packed.rows * packed.seqLen;
  return {
    documents: docs,
    rows: packed.rows,
    tokens: packed.tokens,
    loss_tokens: packed.lossTokens,
    pad_tokens: packed.padTokens,
    segments: packed.segments,
    chunked_documents: packed.chunkedDocuments,
    packing_efficiency: cells === 0 ? 0 : packed.tokens / cells,
    shards,
  };
}

/** Build (or reuse) the dataset folder `opts.output`. */
export async function prepareDataset(opts: PrepareOptions, sink: ProgressSink = silent): Promise<PrepareSummary> {
  const t0 = performance.now();
  checkOptions(opts);
  let tokBytes: Buffer;
  try {
    if (statSync(opts.tokenizer).isDirectory()) throw new InputError(`${opts.tokenizer}: is a folder, expected a tokenizer.json or .model file`);
    tokBytes = readFileSync(opts.tokenizer);
  } catch (e) {
    if (e instanceof InputError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputError(`${opts.tokenizer}: ${code === 'ENOENT' ? 'no such tokenizer file' : `cannot read the tokenizer (${code ?? String(e)})`}`);
  }
  const tokHash = sha256Hex(tokBytes);
  const files = readSourceFiles(opts.sources);
  // refuse a folder v4tune did not write, or one holding the corpus, before any work
  const claim: OutputClaim = { kind: 'dataset', overwrite: opts.overwrite, inputs: [opts.tokenizer, ...files.map((f) => f.path)] };
  claimOutput(opts.output, claim);
  const key = sha256Hex(JSON.stringify({
    format_version: DATASET_FORMAT_VERSION,
    v4tune: VERSION,
    tokenizer: tokHash,
    sources: files.map((f) => [f.path, f.format, f.text_field, f.sha256]),
    seq_len: opts.seq_len,
    packing: opts.packing,
    eval_fraction: opts.eval_fraction,
    seed: opts.seed,
    shard_rows: opts.shard_rows,
    dedup: opts.dedup,
  }));
  const existing = reusable(opts.output, key);
  if (existing) {
    refuseVocab(opts.tokenizer, existing.tokenizer.vocab_size, opts.vocabSize);
    sink.log(`dataset ${opts.output} is up to date (same sources, tokenizer and options): reusing it`);
    return { output: opts.output, reused: true, manifest: existing, workers: 0, seconds: { total: (performance.now() - t0) / 1000, tokenize: 0 } };
  }

  const tok = await loadTokenizer(opts.tokenizer);
  refuseVocab(opts.tokenizer, tok.vocabSize, opts.vocabSize);
  const chatIds = chatTokenIds(tok);
  const special: ChatTokenIds | null = 'missing' in chatIds ? null : chatIds;

  // Read and parse every file; dedup in corpus order (the first copy is kept).
  const docs: Document[] = [];
  const sourceManifests: SourceManifest[] = [];
  let read = 0;
  let empty = 0;
  let duplicates = 0;
  const seen = new Set<string>();
  files.forEach((f, i) => {
    const parsed = readDocuments(f, i);
    if (parsed.format === 'chat' && special === null && parsed.docs.length > 0) {
      const missing = (chatIds as { missing: string[] }).missing;
      throw new InputError(`${f.path}: chat sources need the tokenizer's ${missing.join(', ')} tokens, which ${opts.tokenizer} does not have`);
    }
    read += parsed.docs.length;
    empty += parsed.empty;
    for (const d of parsed.docs) {
      if (opts.dedup) {
        const k = documentKey(d.doc);
        if (seen.has(k)) { duplicates++; continue; }
        seen.add(k);
      }
      docs.push(d.doc);
    }
    sourceManifests.push({ path: f.path, pattern: f.pattern, format: parsed.format, text_field: f.text_field, bytes: f.bytes, sha256: f.sha256, documents: parsed.docs.length });
  });
  if (docs.length === 0) {
    throw new InputError(`the corpus is empty: ${files.map((f) => f.path).join(', ')} hold no documents${empty > 0 ? ` (${empty} blank)` : ''}`);
  }
  const corpusBytes = files.reduce((s, f) => s + f.bytes, 0);
  sink.log(`prepare: ${docs.length} documents from ${files.length} file(s) (${(corpusBytes / 1e6).toFixed(2)} MB), ${duplicates} duplicate(s) dropped, ${empty} empty skipped`);

  const workers = resolveWorkers(opts.workers);
  const bar = sink.progress('tokenize', docs.length, 'docs');
  const tt = performance.now();
  const { encoded, workers: used } = await tokenizeDocuments(docs, {
    tokenizerPath: opts.tokenizer,
    workers,
    encode: (d) => encodeDocument(tok, special, d),
    onProgress: (n) => bar.update(n),
  });
  bar.stop();
  const tokenizeSeconds = (performance.now() - tt) / 1000;

  const isEval = splitDocuments(docs.length, opts.eval_fraction, opts.seed);
  const trainDocs = encoded.filter((_, i) => isEval[i] === 0);
  const evalDocs = encoded.filter((_, i) => isEval[i] === 1);
  const train = packDocuments(trainDocs, opts.seq_len, opts.packing, tok.eosId);
  const evalRows = packDocuments(evalDocs, opts.seq_len, opts.packing, tok.eosId);

  const shardNames = (split: string, rows: number): string[] =>
    Array.from({ length: Math.ceil(rows / opts.shard_rows) }, (_, i) => `${split}-${String(i).padStart(5, '0')}.arrow`);
  const trainShards = shardNames('train', train.rows);
  const evalShards = shardNames('eval', evalRows.rows);
  const tokCopy = tokenizerCopyName(tokenizerKindOf(opts.tokenizer, tokBytes));

  const manifest: DatasetManifest = {
    format: DATASET_FORMAT,
    format_version: DATASET_FORMAT_VERSION,
    v4tune_version: VERSION,
    cache_key: key,
    created_at: new Date().toISOString(),
    tokenizer: { kind: tok.identity.kind, file: tokCopy, source: opts.tokenizer, sha256: tokHash, vocab_size: tok.vocabSize, bos_id: tok.bosId, eos_id: tok.eosId, ...(tok.encoder ? { encoder: tok.encoder } : {}) },
    seq_len: opts.seq_len,
    packing: opts.packing,
    eval_fraction: opts.eval_fraction,
    seed: opts.seed,
    shard_rows: opts.shard_rows,
    dedup: opts.dedup,
    sources: sourceManifests,
    documents: { read, empty, duplicates, kept: docs.length },
    splits: { train: splitManifest(trainDocs.length, train, trainShards), eval: splitManifest(evalDocs.length, evalRows, evalShards) },
    rows: train.rows + evalRows.rows,
    tokens: train.tokens + evalRows.tokens,
    loss_tokens: train.lossTokens + evalRows.lossTokens,
    packing_efficiency: (train.tokens + evalRows.tokens) / Math.max(1, (train.rows + evalRows.rows) * opts.seq_len),
  };

  const wbar = sink.progress('write', trainShards.length + evalShards.length, 'shards');
  await writeDirAtomic(opts.output, (tmp) => {
    let written = 0;
    for (const [packed, names] of [[train, trainShards], [evalRows, evalShards]] as const) {
      names.forEach((name, i) => {
        const from = i * opts.shard_rows;
        const to = Math.min(packed.rows, from + opts.shard_rows);
        writeFileAtomic(join(tmp, name), shardToIPC(packed.ids, packed.mask, packed.segmentIds, packed.seqLen, from, to));
        wbar.update(++written);
      });
    }
    copyFileSync(opts.tokenizer, join(tmp, tokCopy));
    const config = join(dirname(opts.tokenizer), 'tokenizer_config.json');
    if (tokCopy === 'tokenizer.json' && basename(opts.tokenizer) === 'tokenizer.json' && existsSync(config)) copyFileSync(config, join(tmp, 'tokenizer_config.json'));
    writeFileAtomic(join(tmp, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  }, claim);
  wbar.stop();
  sink.log(`prepare: wrote ${manifest.rows} rows (${train.rows} train, ${evalRows.rows} eval) of ${opts.seq_len} tokens, ${manifest.tokens} tokens, ${manifest.loss_tokens} with loss, packing efficiency ${(manifest.packing_efficiency * 100).toFixed(1)}% → ${opts.output}`);
  return { output: opts.output, reused: false, manifest, workers: used, seconds: { total: (performance.now() - t0) / 1000, tokenize: tokenizeSeconds } };
}
