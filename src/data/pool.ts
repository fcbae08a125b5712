// Tokenizing documents on every core: a pool of worker_threads, each with its own copy of the
// tokenizer, fed batches of documents. Results are put back in document order, so the output
// does not depend on the number of workers. Running from TypeScript sources (vitest), where a
// worker cannot load a .ts file, the pool is unavailable and tokenization runs in this thread.
import { Worker } from 'node:worker_threads';
import { cpus } from 'node:os';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { InputError, V4tuneError } from '../errors.js';
import type { Document, EncodedDocument } from './documents.js';

export interface BatchRequest { id: number; docs: Document[] }
export interface BatchReply { id: number; ids: Int32Array; mask: Uint8Array; lengths: Int32Array }
interface BatchError { id: number; error: string }
/** What a worker sends once its tokenizer is loaded. */
export interface WorkerReady { ready: true }

/** Encode a batch and concatenate the results (what a worker sends back). */
export function encodeBatch(req: BatchRequest, encode: (d: Document) => EncodedDocument): BatchReply {
  const encoded = req.docs.map(encode);
  let total = 0;
  for (const e of encoded) total += e.ids.length;
  const ids = new Int32Array(total);
  const mask = new Uint8Array(total);
  const lengths = new Int32Array(encoded.length);
  let at = 0;
  encoded.forEach((e, i) => { ids.set(e.ids, at); mask.set(e.mask, at); lengths[i] = e.ids.length; at += e.ids.length; });
  return { id: req.id, ids, mask, lengths };
}

function splitReply(r: BatchReply): EncodedDocument[] {
  const out: EncodedDocument[] = [];
  let at = 0;
  for (const n of r.lengths) { out.push({ ids: r.ids.subarray(at, at + n), mask: r.mask.subarray(at, at + n) }); at += n; }
  return out;
}

const WORKER_FILE = fileURLToPath(new URL('./tokenize-worker.js', import.meta.url));

/** Whether worker threads can run here (compiled JavaScript, worker file present). */
export function workerPoolAvailable(): boolean {
  return import.meta.url.endsWith('.js') && existsSync(WORKER_FILE);
}

/** Worker count for a `workers` option: 0 means one per core. */
export function resolveWorkers(workers: number): number {
  return workers > 0 ? workers : Math.max(1, cpus().length);
}

/** Cut documents into batches of about `batchChars` characters. */
function batches(docs: Document[], batchChars: number): Document[][] {
  const out: Document[][] = [];
  let cur: Document[] = [];
  let chars = 0;
  for (const d of docs) {
    cur.push(d);
    chars += documentChars(d);
    if (chars >= batchChars) { out.push(cur); cur = []; chars = 0; }
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

export interface TokenizeOptions {
  tokenizerPath: string;
  /** Worker threads; 1 (or no pool available) tokenizes in this thread with `encode`. */
  workers: number;
  encode: (d: Document) => EncodedDocument;
  /** Called with the number of documents done so far. */
  onProgress?: (done: number) => void;
  batchChars?: number;
  /** This thread encodes batches too (default true); false leaves every batch to the workers. */
  inThread?: boolean;
}

/**
 * Tokenize documents, in order; returns the encodings and the number of threads that encoded
 * (1 when the workers were not ready before this thread was done).
 */
export async function tokenizeDocuments(docs: Document[], opts: TokenizeOptions): Promise<{ encoded: EncodedDocument[]; workers: number }> {
  const parts = batches(docs, opts.batchChars ?? 256 * 1024);
  // This thread is one of the `workers`: it encodes from the same queue from the first moment,
  // and each worker thread takes batches only once its tokenizer is loaded. So the pool is never
  // slower than this thread alone, and a small corpus is done before a worker is even ready.
  const extra = workerPoolAvailable() ? Math.min(opts.workers, parts.length) - (opts.inThread === false ? 0 : 1) : 0;
  if (extra <= 0) {
    const encoded: EncodedDocument[] = [];
    for (const d of docs) {
      encoded.push(opts.encode(d));
      if (encoded.length % 256 === 0) opts.onProgress?.(encoded.length);
    }
    opts.onProgress?.(encoded.length);
    return { encoded, workers: 1 };
  }
  const results: EncodedDocument[][] = new Array(parts.length);
  const pool = Array.from({ length: extra }, () => new Worker(WORKER_FILE, { workerData: { tokenizerPath: opts.tokenizerPath } }));
  let next = 0;
  let finished = 0;
  let done = 0;
  let helped = 0;
  let failure: V4tuneError | null = null;
  let wake: (() => void) | null = null;
  const settle = (): void => { wake?.(); wake = null; };
  const fail = (e: V4tuneError): void => { failure ??= e; settle(); };
  const complete = (id: number, encoded: EncodedDocument[]): void => {
    results[id] = encoded;
    done += encoded.length;
    finished++;
    opts.onProgress?.(done);
    settle();
  };
  const feed = (w: Worker): void => {
    if (next >= parts.length) return;
    const id = next++;
    w.postMessage({ id, docs: parts[id] } satisfies BatchRequest);
  };
  for (const w of pool) {
    w.on('message', (m: BatchReply | BatchError | WorkerReady) => {
      if ('ready' in m) {
        // two batches in flight keep the worker busy while a reply travels back
        feed(w);
        feed(w);
        return;
      }
      if ('error' in m) { fail(new V4tuneError(`tokenizer worker failed: ${m.error}`)); return; }
      helped++;
      complete(m.id, splitReply(m));
      feed(w);
    });
    w.on('error', (e) => fail(new V4tuneError(`tokenizer worker failed: ${e.message}`)));
    w.on('exit', (code) => { if (code !== 0 && finished < parts.length) fail(new V4tuneError(`tokenizer worker exited with code ${code}`)); });
  }
  try {
    while (opts.inThread !== false && failure === null && next < parts.length) {
      const id = next++;
      complete(id, parts[id]!.map(opts.encode));
      // let the workers' replies and ready messages in between batches
      await new Promise<void>((r) => setImmediate(r));
    }
    while (failure === null && finished < parts.length) await new Promise<void>((r) => { wake = r; });
    if (failure !== null) throw failure;
  } finally {
    await Promise.all(pool.map((w) => w.terminate()));
  }
  return { encoded: results.flat(), workers: opts.inThread === false ? extra : helped > 0 ? extra + 1 : 1 };
}

/** Time allowed to tokenize a document: 10 s plus 1 s per 10,000 characters. */
export function documentTimeLimitMs(chars: number): number {
  return 10_000 + chars / 10;
}

/** Characters of a document's text (a chat's contents and reasoning). */
export function documentChars(d: Document): number {
  return d.kind === 'text' ? d.text.length : d.messages.reduce((s, m) => s + m.content.length + (m.reasoning_content?.length ?? 0), 0);
}

interface PoolJob {
  id: number;
  docs: Document[];
  limitMs: number;
  started: number;
  resolve: (e: EncodedDocument[]) => void;
  reject: (e: unknown) => void;
}

/**
 * Tokenizer worker threads for a stream of batches: `encode(batch)` resolves with the batch's
 * encodings. Without the pool (running from sources, or `workers` < 2) batches are encoded in
 * this thread. On the pool each batch has a time limit, the sum of its documents'
 * `documentTimeLimitMs`: a batch over it (a tokenizer regex backtracking catastrophically, say)
 * stops every worker and fails the run with an error naming the tokenizer.
 */
export class TokenizerPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly queue: PoolJob[] = [];
  private readonly running = new Map<Worker, PoolJob>();
  private failure: V4tuneError | null = null;
  private timer: NodeJS.Timeout | null = null;
  private nextId = 0;

  /** Threads that tokenize: the workers, or 1 (this thread). */
  get threads(): number {
    return Math.max(1, this.workers.length);
  }

  constructor(private readonly tokenizerPath: string, workers: number, private readonly encodeHere: (d: Document) => EncodedDocument) {
    if (workers < 2 || !workerPoolAvailable()) return;
    for (let i = 0; i < workers; i++) {
      const w = new Worker(WORKER_FILE, { workerData: { tokenizerPath } });
      w.on('message', (m: BatchReply | BatchError | WorkerReady) => {
        if ('ready' in m) { this.idle.push(w); this.pump(); return; }
        if ('error' in m) { this.fail(new V4tuneError(`tokenizer worker failed: ${m.error}`)); return; }
        const job = this.running.get(w);
        this.running.delete(w);
        this.idle.push(w);
        job?.resolve(splitReply(m));
        this.pump();
      });
      w.on('error', (e) => this.fail(new V4tuneError(`tokenizer worker failed: ${e.message}`)));
      w.on('exit', (code) => { if (code !== 0 && this.failure === null && this.timer !== null) this.fail(new V4tuneError(`tokenizer worker exited with code ${code}`)); });
      this.workers.push(w);
    }
    this.timer = setInterval(() => this.watch(), 1000);
    this.timer.unref();
  }

  encode(docs: Document[]): Promise<EncodedDocument[]> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.workers.length === 0) {
      try { return Promise.resolve(docs.map(this.encodeHere)); } catch (e) { return Promise.reject(e); }
    }
    return new Promise((resolve, reject) => {
      const limitMs = docs.reduce((s, d) => s + documentTimeLimitMs(documentChars(d)), 0);
      this.queue.push({ id: this.nextId++, docs, limitMs, started: 0, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.failure === null && this.idle.length > 0 && this.queue.length > 0) {
      const w = this.idle.shift()!;
      const job = this.queue.shift()!;
      job.started = performance.now();
      this.running.set(w, job);
      w.postMessage({ id: job.id, docs: job.docs } satisfies BatchRequest);
    }
  }

  private watch(): void {
    const now = performance.now();
    for (const job of this.running.values()) {
      if (now - job.started > job.limitMs) {
        this.fail(new InputError(`${this.tokenizerPath}: tokenizing a batch of ${job.docs.length} document(s) took over ${(job.limitMs / 1000).toFixed(0)} s, the time limit (10 s + 1 s per 10,000 characters per document); the tokenizer's Split regex may backtrack catastrophically`));
        return;
      }
    }
  }

  private fail(e: V4tuneError): void {
    if (this.failure) return;
    this.failure = e;
    for (const job of [...this.running.values(), ...this.queue]) job.reject(e);
    this.running.clear();
    this.queue.length = 0;
    for (const w of this.workers) void w.terminate();
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
