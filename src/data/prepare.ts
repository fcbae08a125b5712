// `prepare`: corpus sources → tokenized, packed Arrow shards + manifest.json + a copy of the
// tokenizer (+ the HF datasets layout and a dataset card), written into a temporary folder that
// is renamed into place at the end. Unchanged inputs (sources' bytes, tokenizer, data options,
// v4tune version) reuse the existing output.
//
// Streaming, in bounded memory: documents are read record by record (src/data/records.ts),
// tokenized in batches on the worker pool with at most 2 batches per thread in flight, packed
// best-fit over a bounded window of open rows (StreamPacker) and written batch by batch
// (SplitWriter). What grows with the corpus is the dedup table (16–32 bytes per unique document)
// and the manifest's per-file entries.
//
// Per document, in order: bad records counted (data.max_bad_records per source), empty ones
// skipped, exact duplicates dropped (the first copy kept), then the split (eval when a seeded
// draw from the document's hash is below eval_fraction, so copies of a document share a split),
// then mixing: a source's `weight` w takes each train document ⌊w⌋ times plus once more with
// probability w − ⌊w⌋ (a seeded draw from its hash); copies beyond the first come from re-reading
// the source in later passes, so they land in other rows. `max_documents` / `max_tokens` stop a
// source once reached (eval documents count too).
import { copyFileSync, existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative } from 'node:path';
import { createHash } from 'node:crypto';
import { cpus } from 'node:os';
import { InputError } from '../errors.js';
import { claimOutput, writeDirAtomic, writeFileAtomic, type OutputClaim } from '../fsutil.js';
import { VERSION } from '../version.js';
import { silentSink, type Sink } from '../sink.js';
import { chatTokenIds, encodeDocument, type ChatTokenIds, type Document } from './documents.js';
import { FingerprintMap, seededUniform } from './dedup.js';
import { datasetCard, writeHfMetadata } from './hf.js';
import { DATASET_FORMAT, DATASET_FORMAT_VERSION, type DatasetManifest, type SourceFileManifest, type SourceManifest, type SplitManifest } from './manifest.js';
import { StreamPacker, type PackStats, type SourcedEncoding } from './pack.js';
import { documentChars, resolveWorkers, TokenizerPool } from './pool.js';
import { readRecords } from './records.js';
import { detectFormat, recordToDocument, RecordError, resolveSources, type RecordFormat, type ResolvedSource, type SourceSpec } from './sources.js';
import { loadTokenizer, sha256Hex, tokenizerKindOf } from './tokenizer.js';
import { COLUMNS, SplitWriter } from './writer.js';

export type { SourceSpec } from './sources.js';

/** The recipe's `data` section (paths absolute) plus the tokenizer and what the model allows. */
export interface PrepareOptions {
  /** tokenizer.json (HF) or SentencePiece .model. */
  tokenizer: string;
  /** How the manifest names the tokenizer's origin (default: its path, relative to `root`). */
  tokenizerLabel?: string;
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
  /** Bad records allowed per source before the run fails (default 0). */
  max_bad_records?: number;
  /** Write the HF datasets layout beside the shards (default true). */
  hf_datasets?: boolean;
  /** replace an output folder v4tune did not write (the user's --overwrite) */
  overwrite?: boolean;
  /** The model's embedding rows; a tokenizer with larger ids is refused. */
  vocabSize?: number;
  /** The model's max_position_embeddings; a longer seq_len is refused. */
  maxPositions?: number;
  /** Paths in the manifest are relative to this folder (default: the working folder). */
  root?: string;
  /** The recipe, quoted in the dataset card. */
  recipe?: { file: string; text: string };
}

export interface PrepareSummary {
  output: string;
  /** True when an existing output with the same inputs was reused. */
  reused: boolean;
  manifest: DatasetManifest;
  /** Tokenizer threads actually used (0 when reused). */
  workers: number;
  /** Wall seconds: all of it, and from the first batch sent to the tokenizer to the last result (reading, packing and writing overlap it). */
  seconds: { total: number; tokenize: number };
}

/** The longest seq_len v4tune takes without a model to bound it (DeepSeek V4's 1M context). */
export const MAX_SEQ_LEN = 1 << 20;
/** Rows per shard at most; rows × seq_len must also fit Arrow's int32 list offsets. */
export const MAX_SHARD_ROWS = 1_000_000;
const MAX_SHARD_TOKENS = 2 ** 31 - 1;
/** Tokens the packer holds at most in open rows (and half that pending). */
const PACK_WINDOW_TOKENS = 1 << 21;
/** Characters per tokenizer batch. */
const BATCH_CHARS = 256 * 1024;

/** Worker threads allowed: 4 per core. */
export function maxWorkers(): number {
  return 4 * Math.max(1, cpus().length);
}

function checkOptions(o: PrepareOptions): void {
  if (!Number.isInteger(o.seq_len) || o.seq_len < 2) throw new InputError(`data.seq_len must be an integer of at least 2 (got ${o.seq_len})`);
  if (o.maxPositions !== undefined && o.seq_len > o.maxPositions) throw new InputError(`data.seq_len ${o.seq_len} is larger than the model's max_position_embeddings ${o.maxPositions}`);
  if (o.seq_len > MAX_SEQ_LEN) throw new InputError(`data.seq_len ${o.seq_len} is larger than v4tune's limit ${MAX_SEQ_LEN}`);
  if (!Number.isInteger(o.shard_rows) || o.shard_rows < 1) throw new InputError(`data.shard_rows must be a positive integer (got ${o.shard_rows})`);
  if (o.shard_rows > MAX_SHARD_ROWS) throw new InputError(`data.shard_rows ${o.shard_rows} is larger than the limit ${MAX_SHARD_ROWS}`);
  if (o.shard_rows * o.seq_len > MAX_SHARD_TOKENS) {
    throw new InputError(`data.shard_rows ${o.shard_rows} × data.seq_len ${o.seq_len} tokens do not fit one Arrow shard (at most ${MAX_SHARD_TOKENS} tokens): data.shard_rows must be at most ${Math.floor(MAX_SHARD_TOKENS / o.seq_len)}`);
  }
  if (!Number.isInteger(o.workers) || o.workers < 0) throw new InputError(`data.workers must be a non-negative integer (got ${o.workers})`);
  if (o.workers > maxWorkers()) throw new InputError(`data.workers ${o.workers} is more than the limit ${maxWorkers()} (4 per core)`);
  if (!(o.eval_fraction >= 0 && o.eval_fraction < 1)) throw new InputError(`data.eval_fraction must be in [0, 1) (got ${o.eval_fraction})`);
  const bad = o.max_bad_records ?? 0;
  if (!Number.isInteger(bad) || bad < 0) throw new InputError(`data.max_bad_records must be a non-negative integer (got ${bad})`);
  if (o.sources.length === 0) throw new InputError('data.sources is empty: name at least one corpus file or glob');
  if (o.sources.length > 65535) throw new InputError(`data.sources has ${o.sources.length} entries, more than the source_ids column holds (65535)`);
  o.sources.forEach((s, i) => {
    const w = s.weight ?? 1;
    if (!(Number.isFinite(w) && w > 0 && w <= 1000)) throw new InputError(`data.sources[${i}].weight must be a number in (0, 1000] (got ${w})`);
    for (const k of ['max_tokens', 'max_documents'] as const) {
      const v = s[k];
      if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new InputError(`data.sources[${i}].${k} must be a positive integer (got ${v})`);
    }
  });
  if (existsSync(o.output) && !statSync(o.output).isDirectory()) throw new InputError(`${o.output}: output path exists and is a file, not a folder`);
}

/** sha256 of a document's kind and full content: dedup fingerprint and the seeded draws. */
function documentHash(d: Document): Buffer {
  const h = createHash('sha256');
  if (d.kind === 'text') h.update('text\0').update(d.text);
  else h.update('chat\0').update(JSON.stringify(d.messages));
  return h.digest();
}

function tokenizerCopyName(kind: 'hf' | 'sentencepiece'): string {
  return kind === 'hf' ? 'tokenizer.json' : 'tokenizer.model';
}

function refuseVocab(tokenizer: string, vocabSize: number, modelVocab: number | undefined, largest?: string): void {
  if (modelVocab !== undefined && vocabSize > modelVocab) {
    throw new InputError(`${tokenizer}: the tokenizer's ids go up to ${vocabSize - 1}${largest ? ` (token ${JSON.stringify(largest)})` : ''}, which does not fit the model's vocab_size ${modelVocab}`);
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

function splitManifest(docs: number, s: PackStats, seqLen: number, shards: string[], hfFiles: string[] | undefined): SplitManifest {
  const cells = s.rows * seqLen;
  return {
    documents: docs,
    rows: s.rows,
    tokens: s.tokens,
    loss_tokens: s.lossTokens,
    pad_tokens: s.padTokens,
    segments: s.segments,
    chunked_documents: s.chunkedDocuments,
    packing_efficiency: cells === 0 ? 0 : s.tokens / cells,
    shards,
    ...(hfFiles ? { hf_files: hfFiles } : {}),
  };
}

/** A source while prepare runs: its files and counts (the manifest entry), and whether it is closed. */
interface SourceState {
  src: ResolvedSource;
  m: SourceManifest;
  /** A cap was reached: nothing more is read from this source. */
  closed: boolean;
  /** max_tokens was reached: documents of this source still in flight are not used either. */
  tokensFull: boolean;
  passes: number;
  /** Documents sent to the tokenizer (max_documents counts these). */
  sent: number;
}

/** A document on its way to the tokenizer. */
interface Pending {
  doc: Document;
  source: number;
  docId: number;
  split: 'train' | 'eval';
  /** A copy from a later pass (weight > 1). */
  repeat: boolean;
}

/** Build (or reuse) the dataset folder `opts.output`. */
export async function prepareDataset(opts: PrepareOptions, sink: Sink = silentSink): Promise<PrepareSummary> {
  const t0 = performance.now();
  checkOptions(opts);
  const root = opts.root ?? process.cwd();
  const rel = (p: string): string => (isAbsolute(p) ? relative(root, p) || '.' : p);
  const maxBad = opts.max_bad_records ?? 0;
  const hf = opts.hf_datasets ?? true;
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
  const sources = resolveSources(opts.sources, (s) => rel(s.path));
  const allFiles = sources.flatMap((s) => s.files);
  // refuse a folder v4tune did not write, or one holding the corpus, before any work
  const claim: OutputClaim = { kind: 'dataset', overwrite: opts.overwrite, inputs: [opts.tokenizer, ...allFiles.map((f) => f.path)] };
  claimOutput(opts.output, claim);
  const key = sha256Hex(JSON.stringify({
    format_version: DATASET_FORMAT_VERSION,
    v4tune: VERSION,
    tokenizer: tokHash,
    sources: sources.map((s) => ({
      name: s.name, format: s.spec.format, text_field: s.spec.text_field, weight: s.spec.weight ?? 1,
      max_tokens: s.spec.max_tokens ?? null, max_documents: s.spec.max_documents ?? null,
      files: s.files.map((f) => [f.path, f.sha256]),
    })),
    seq_len: opts.seq_len,
    packing: opts.packing,
    eval_fraction: opts.eval_fraction,
    seed: opts.seed,
    shard_rows: opts.shard_rows,
    dedup: opts.dedup,
    max_bad_records: maxBad,
    hf_datasets: hf,
  }));
  const existing = reusable(opts.output, key);
  if (existing) {
    refuseVocab(opts.tokenizer, existing.tokenizer.vocab_size, opts.vocabSize);
    sink.log(`dataset ${opts.output} is up to date (same sources, tokenizer and options): reusing it`);
    return { output: opts.output, reused: true, manifest: existing, workers: 0, seconds: { total: (performance.now() - t0) / 1000, tokenize: 0 } };
  }

  const tok = await loadTokenizer(opts.tokenizer);
  refuseVocab(opts.tokenizer, tok.vocabSize, opts.vocabSize, tok.largestToken);
  const chatIds = chatTokenIds(tok);
  const special: ChatTokenIds | null = 'missing' in chatIds ? null : chatIds;
  const tokCopy = tokenizerCopyName(tokenizerKindOf(opts.tokenizer, tokBytes));

  const states: SourceState[] = sources.map((src) => ({
    src,
    closed: false,
    tokensFull: false,
    sent: 0,
    passes: Math.ceil(src.spec.weight ?? 1),
    m: {
      name: src.name, pattern: rel(src.spec.path), format: src.spec.format, text_field: src.spec.text_field,
      weight: src.spec.weight ?? 1, max_tokens: src.spec.max_tokens ?? null, max_documents: src.spec.max_documents ?? null,
      files: [], read: 0, bad: 0, bad_examples: [], empty: 0, duplicates: 0, dropped: 0,
      documents: 0, train_documents: 0, eval_documents: 0, repeats: 0, tokens: 0, loss_tokens: 0, token_share: 0, cap_reached: null,
    },
  }));
  const corpusBytes = allFiles.reduce((s, f) => s + f.bytes, 0);
  const passBytes = states.reduce((s, st) => s + st.passes * st.src.files.reduce((a, f) => a + f.bytes, 0), 0);
  sink.log(`prepare: ${sources.length} source(s), ${allFiles.length} file(s), ${(corpusBytes / 1e6).toFixed(2)} MB`);

  const summary = await writeDirAtomic(opts.output, async (tmp) => {
    const writers = {
      train: new SplitWriter(tmp, 'train', opts.seq_len, opts.shard_rows, hf),
      eval: new SplitWriter(tmp, 'eval', opts.seq_len, opts.shard_rows, hf),
    };
    const packers = {
      train: new StreamPacker(opts.seq_len, opts.packing, tok.eosId, PACK_WINDOW_TOKENS, (row) => writers.train.add(row)),
      eval: new StreamPacker(opts.seq_len, opts.packing, tok.eosId, PACK_WINDOW_TOKENS, (row) => writers.eval.add(row)),
    };
    const splitDocs = { train: 0, eval: 0 };
    const pool = new TokenizerPool(opts.tokenizer, resolveWorkers(opts.workers), (d) => encodeDocument(tok, special, d));
    const bar = sink.progress('prepare', passBytes, 'bytes');
    let bytesDone = 0;
    // tokenization's wall time: from the first batch sent to the last result taken
    let tokenizeStart = -1;
    let tokenizeEnd = -1;

    // What leaves the tokenizer, in order: caps on tokens, counts, the packer.
    const consume = (batch: Pending[], encoded: SourcedEncoding[]): void => {
      batch.forEach((p, i) => {
        const st = states[p.source]!;
        const e = encoded[i]!;
        if (st.tokensFull) return;
        if (st.m.max_tokens !== null && st.m.tokens + e.ids.length > st.m.max_tokens) {
          st.tokensFull = true;
          st.closed = true;
          st.m.cap_reached = 'max_tokens';
          return;
        }
        let loss = 0;
        for (let k = 0; k < e.mask.length; k++) loss += e.mask[k]!;
        st.m.tokens += e.ids.length;
        st.m.loss_tokens += loss;
        st.m.documents++;
        if (p.repeat) st.m.repeats++;
        if (p.split === 'eval') st.m.eval_documents++;
        else st.m.train_documents++;
        splitDocs[p.split]++;
        // own copies: a view would pin its whole batch's buffer while the packer holds the document
        packers[p.split].add({ ids: e.ids.slice(), mask: e.mask.slice(), source: e.source, doc: e.doc });
      });
    };

    const inflight: { batch: Pending[]; encoded: Promise<SourcedEncoding[]> }[] = [];
    const maxInflight = 2 * pool.threads;
    let batch: Pending[] = [];
    let batchChars = 0;
    const submit = (): void => {
      if (batch.length === 0) return;
      const b = batch;
      batch = [];
      batchChars = 0;
      if (tokenizeStart < 0) tokenizeStart = performance.now();
      const encoded = pool.encode(b.map((p) => p.doc)).then((enc) => {
        tokenizeEnd = performance.now();
        return enc.map((e, i) => ({ ...e, source: b[i]!.source, doc: b[i]!.docId }));
      });
      encoded.catch(() => {});
      inflight.push({ batch: b, encoded });
    };
    const drainOne = async (): Promise<void> => {
      const head = inflight.shift()!;
      consume(head.batch, await head.encoded);
    };

    const seen = opts.dedup ? new FingerprintMap() : null;
    const maxPasses = Math.max(...states.map((s) => s.passes));
    try {
      for (let pass = 0; pass < maxPasses; pass++) {
        for (let si = 0; si < states.length; si++) {
          const st = states[si]!;
          if (pass >= st.passes) continue;
          const w = st.m.weight;
          let firstDocId = 0;
          for (let fi = 0; fi < st.src.files.length && !st.closed; fi++) {
            const f = st.src.files[fi]!;
            let format: RecordFormat | null = f.container === 'text' ? 'text' : st.src.spec.format === 'auto' ? null : st.src.spec.format;
            let records = 0;
            for await (const rec of readRecords(f.path, f.container)) {
              records = rec.index + 1;
              if (st.closed) break;
              const docId = firstDocId + rec.index;
              if (docId > 0xffffffff) throw new InputError(`${rec.where}: more than 2³² records in source "${st.m.name}" (the doc_ids column is uint32)`);
              let doc: Document | null;
              try {
                if (rec.error !== undefined) throw new RecordError(rec.error);
                const value = rec.text ?? rec.value;
                format ??= detectFormat(value);
                doc = recordToDocument(format, value, st.src.spec.text_field);
              } catch (e) {
                if (!(e instanceof RecordError)) throw e;
                if (pass > 0) continue;
                st.m.bad++;
                if (st.m.bad_examples.length < 10) st.m.bad_examples.push(`${rel(f.path)}${rec.where.slice(f.path.length)}: ${e.message}`);
                if (st.m.bad > maxBad) {
                  throw new InputError(`${rec.where}: ${e.message} (source "${st.m.name}": ${st.m.bad} bad record${st.m.bad === 1 ? '' : 's'}, more than data.max_bad_records ${maxBad})`);
                }
                if (st.m.bad <= 3) sink.log(`warning: ${rec.where}: ${e.message} (bad record ${st.m.bad} of at most ${maxBad} in source "${st.m.name}"; skipped)`);
                continue;
              }
              if (doc === null) { if (pass === 0) st.m.empty++; continue; }
              if (doc.kind === 'chat' && special === null) {
                const missing = (chatIds as { missing: string[] }).missing;
                throw new InputError(`${f.path}: chat sources need the tokenizer's ${missing.join(', ')} tokens, which ${opts.tokenizer} does not have`);
              }
              if (pass === 0) st.m.read++;
              const h = documentHash(doc);
              if (seen) {
                const hi = h.readUInt32LE(0);
                const lo = h.readUInt32LE(4);
                const here = si * 2 ** 32 + docId;
                const first = seen.get(hi, lo);
                if (pass === 0) {
                  if (first !== undefined) { st.m.duplicates++; continue; }
                  seen.add(hi, lo, here);
                } else if (first !== here) continue;
              }
              const split = seededUniform(h.readUInt32LE(8), opts.seed, 1) < opts.eval_fraction ? 'eval' : 'train';
              if (split === 'eval') {
                if (pass > 0) continue;
              } else {
                const use = pass < Math.floor(w) || seededUniform(h.readUInt32LE(12), opts.seed, 2) < w - Math.floor(w);
                if (!use) { if (pass === 0) st.m.dropped++; continue; }
              }
              if (st.m.max_documents !== null && st.sent >= st.m.max_documents) {
                st.closed = true;
                st.m.cap_reached = 'max_documents';
                break;
              }
              st.sent++;
              const c = documentChars(doc);
              batch.push({ doc, source: si, docId, split, repeat: pass > 0 });
              batchChars += c;
              if (batchChars >= BATCH_CHARS) {
                submit();
                bar.update(bytesDone, `${st.m.name}${pass > 0 ? ` (pass ${pass + 1})` : ''}`);
                while (inflight.length > maxInflight) await drainOne();
              }
            }
            if (pass === 0) {
              st.m.files.push({ path: rel(f.path), container: f.container, format: format ?? 'jsonl', bytes: f.bytes, sha256: f.sha256, first_doc_id: firstDocId, records } satisfies SourceFileManifest);
            }
            firstDocId += pass === 0 ? records : st.m.files[fi]!.records;
            bytesDone += f.bytes;
          }
        }
      }
      submit();
      while (inflight.length > 0) await drainOne();
    } finally {
      await pool.close();
    }
    bar.stop();
    packers.train.finish();
    packers.eval.finish();
    const trainFiles = writers.train.finish();
    const evalFiles = writers.eval.finish();

    let read = 0, empty = 0, duplicates = 0, bad = 0, dropped = 0;
    for (const st of states) {
      // documents read and kept by dedup but never used: sampled out, or cut by a cap
      if (st.m.cap_reached !== null) st.m.dropped = st.m.read - st.m.duplicates - (st.m.documents - st.m.repeats);
      read += st.m.read; empty += st.m.empty; duplicates += st.m.duplicates; bad += st.m.bad; dropped += st.m.dropped;
    }
    const kept = splitDocs.train + splitDocs.eval;
    if (kept === 0) {
      const why = `${read} read, ${empty} blank, ${bad} bad, ${duplicates} duplicate, ${dropped} dropped by weight or caps`;
      throw new InputError(`the corpus is empty: ${allFiles.map((f) => f.path).join(', ')} hold no usable documents (${why})`);
    }
    const train = packers.train.stats;
    const ev = packers.eval.stats;
    const tokens = train.tokens + ev.tokens;
    for (const st of states) st.m.token_share = tokens === 0 ? 0 : st.m.tokens / tokens;
    for (const st of states) if (st.m.files.length < st.src.files.length) {
      // a source closed by max_documents in pass 0 before its last files: list them unread
      for (const f of st.src.files.slice(st.m.files.length)) st.m.files.push({ path: rel(f.path), container: f.container, format: 'jsonl', bytes: f.bytes, sha256: f.sha256, first_doc_id: -1, records: 0 });
    }

    const manifest: DatasetManifest = {
      format: DATASET_FORMAT,
      format_version: DATASET_FORMAT_VERSION,
      v4tune_version: VERSION,
      cache_key: key,
      created_at: new Date().toISOString(),
      paths_relative_to: opts.root !== undefined ? 'the recipe\'s folder' : 'the working folder of the prepare run',
      tokenizer: { kind: tok.identity.kind, file: tokCopy, source: opts.tokenizerLabel ?? rel(opts.tokenizer), sha256: tokHash, vocab_size: tok.vocabSize, bos_id: tok.bosId, eos_id: tok.eosId, ...(tok.encoder ? { encoder: tok.encoder } : {}) },
      seq_len: opts.seq_len,
      packing: opts.packing,
      eval_fraction: opts.eval_fraction,
      seed: opts.seed,
      shard_rows: opts.shard_rows,
      dedup: opts.dedup,
      max_bad_records: maxBad,
      columns: [...COLUMNS],
      hf_datasets: hf,
      sources: states.map((s) => s.m),
      documents: { read, empty, duplicates, kept, bad, dropped },
      splits: {
        train: splitManifest(splitDocs.train, train, opts.seq_len, trainFiles.shards, hf ? trainFiles.hfFiles : undefined),
        eval: splitManifest(splitDocs.eval, ev, opts.seq_len, evalFiles.shards, hf ? evalFiles.hfFiles : undefined),
      },
      rows: train.rows + ev.rows,
      tokens,
      loss_tokens: train.lossTokens + ev.lossTokens,
      packing_efficiency: tokens / Math.max(1, (train.rows + ev.rows) * opts.seq_len),
    };
    copyFileSync(opts.tokenizer, join(tmp, tokCopy));
    const config = join(dirname(opts.tokenizer), 'tokenizer_config.json');
    if (tokCopy === 'tokenizer.json' && basename(opts.tokenizer) === 'tokenizer.json' && existsSync(config)) copyFileSync(config, join(tmp, 'tokenizer_config.json'));
    if (hf) writeHfMetadata(tmp, manifest, `v4tune ${VERSION} tokenized dataset: ${manifest.rows} rows of ${opts.seq_len} tokens (see README.md and manifest.json)`);
    writeFileAtomic(join(tmp, 'README.md'), datasetCard(manifest, opts.recipe));
    writeFileAtomic(join(tmp, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    return { manifest, workers: pool.threads, tokenizeSeconds: tokenizeStart < 0 ? 0 : (tokenizeEnd - tokenizeStart) / 1000 };
  }, claim);
  const m = summary.manifest;
  for (const st of m.sources) {
    if (st.bad > 0) sink.log(`warning: source "${st.name}": ${st.bad} bad record(s) skipped (data.max_bad_records ${maxBad}); first: ${st.bad_examples[0]}`);
  }
  sink.log(`prepare: ${m.documents.kept} documents (${m.documents.duplicates} duplicate(s) dropped, ${m.documents.empty} empty, ${m.documents.bad ?? 0} bad, ${m.documents.dropped ?? 0} dropped by weight or caps)`);
  sink.log(`prepare: wrote ${m.rows} rows (${m.splits.train.rows} train, ${m.splits.eval.rows} eval) of ${opts.seq_len} tokens, ${m.tokens} tokens, ${m.loss_tokens} with loss, packing efficiency ${(m.packing_efficiency * 100).toFixed(1)}% → ${opts.output}`);
  return { output: opts.output, reused: false, manifest: m, workers: summary.workers, seconds: { total: (performance.now() - t0) / 1000, tokenize: summary.tokenizeSeconds } };
}
