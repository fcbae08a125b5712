// Tokenizing documents on every core: a pool of worker_threads, each with its own copy of the
// tokenizer, fed batches of documents. Results are put back in document order, so the output
// does not depend on the number of workers. Running from TypeScript sources (vitest), where a
// worker cannot load a .ts file, the pool is unavailable and tokenization runs in this thread.
import { Worker } from 'node:worker_threads';
import { cpus } from 'node:os';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { V4tuneError } from '../errors.js';
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
    chars += d.kind === 'text' ? d.text.length : d.messages.reduce((s, m) => s + m.content.length + (m.reasoning_content?.length ?? 0), 0);
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
