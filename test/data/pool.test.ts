// The tokenizer worker pool gives exactly the in-thread result, whatever the worker count.
// Worker threads load compiled JavaScript, so this test runs the compiled package in dist/
// (built by `npm ci` / `npm run build`).
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BUNDLED, embeddedTokenizerFile, prepareOptions, tempDir } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 60_000 });

const DIST = join(BUNDLED, '../../dist/data');
type PoolModule = typeof import('../../src/data/pool.js');
type PrepareModule = typeof import('../../src/data/prepare.js');
type DocumentsModule = typeof import('../../src/data/documents.js');
type TokenizerModule = typeof import('../../src/data/tokenizer.js');

const tmp = tempDir();
let tokPath: string;
let pool: PoolModule;
let prep: PrepareModule;
let documents: DocumentsModule;
let tokenizer: TokenizerModule;
beforeAll(async () => {
  if (!existsSync(join(DIST, 'tokenize-worker.js'))) throw new Error(`${DIST}/tokenize-worker.js is missing: run \`npm run build\` first`);
  tokPath = embeddedTokenizerFile(join(tmp.dir, 'tok'));
  pool = (await import(join(DIST, 'pool.js'))) as PoolModule;
  prep = (await import(join(DIST, 'prepare.js'))) as PrepareModule;
  documents = (await import(join(DIST, 'documents.js'))) as DocumentsModule;
  tokenizer = (await import(join(DIST, 'tokenizer.js'))) as TokenizerModule;
});
afterAll(() => tmp.cleanup());

describe('tokenizer worker pool (compiled)', () => {
  it('is available from dist/ and encodes small batches on 3 workers exactly as one thread does, in document order', async () => {
    expect(pool.workerPoolAvailable()).toBe(true);
    const tok = await tokenizer.loadTokenizer(tokPath);
    const ids = documents.chatTokenIds(tok);
    if ('missing' in ids) throw new Error('chat tokens missing');
    const docs = readFileSync(join(BUNDLED, 'qa-chat.jsonl'), 'utf8').trim().split('\n').slice(0, 120)
      .map((l, i) => (i % 2 === 0
        ? { kind: 'chat' as const, messages: (JSON.parse(l) as { messages: import('../../src/data/documents.js').ChatMessage[] }).messages }
        : { kind: 'text' as const, text: l }));
    const encode = (d: (typeof docs)[number]) => documents.encodeDocument(tok, ids, d);
    const single = await pool.tokenizeDocuments(docs, { tokenizerPath: tokPath, workers: 1, encode });
    const multi = await pool.tokenizeDocuments(docs, { tokenizerPath: tokPath, workers: 3, encode, batchChars: 2000, inThread: false });
    expect(single.workers).toBe(1);
    expect(multi.workers).toBe(3);
    expect(multi.encoded.length).toBe(docs.length);
    multi.encoded.forEach((e, i) => {
      expect([...e.ids]).toEqual([...single.encoded[i]!.ids]);
      expect([...e.mask]).toEqual([...single.encoded[i]!.mask]);
    });

    // this thread and the workers share the queue: a slow in-thread encoder lets the workers
    // (which take batches once their tokenizer is loaded) do part of the work, in order
    const slow = (d: (typeof docs)[number]) => {
      const until = performance.now() + 20;
      while (performance.now() < until);
      return encode(d);
    };
    const shared = await pool.tokenizeDocuments(docs, { tokenizerPath: tokPath, workers: 2, encode: slow, batchChars: 500 });
    expect(shared.workers).toBe(2);
    shared.encoded.forEach((e, i) => expect([...e.ids]).toEqual([...single.encoded[i]!.ids]));

    // a corpus done before any worker is ready is reported as one thread
    const quick = await pool.tokenizeDocuments(docs.slice(0, 2), { tokenizerPath: tokPath, workers: 2, encode, batchChars: 10 });
    expect(quick.workers).toBe(1);
  });

  it('prepare writes byte-identical shards with 1 and with 2 workers', async () => {
    const sources = [{ path: join(BUNDLED, 'qa-chat.jsonl'), format: 'auto' as const, text_field: 'text' }];
    const a = await prep.prepareDataset(prepareOptions(tokPath, join(tmp.dir, 'w1'), { sources, seq_len: 128, eval_fraction: 0.1, workers: 1 }));
    const b = await prep.prepareDataset(prepareOptions(tokPath, join(tmp.dir, 'w2'), { sources, seq_len: 128, eval_fraction: 0.1, workers: 2 }));
    expect(a.workers).toBe(1);
    expect(b.workers).toBeGreaterThanOrEqual(1);
    const shards = [...a.manifest.splits.train.shards, ...a.manifest.splits.eval.shards];
    expect([...b.manifest.splits.train.shards, ...b.manifest.splits.eval.shards]).toEqual(shards);
    for (const s of shards) expect(readFileSync(join(tmp.dir, 'w2', s)).equals(readFileSync(join(tmp.dir, 'w1', s)))).toBe(true);
  });

  it('a tokenizer regex that backtracks catastrophically is stopped by the per-document time limit, naming the tokenizer', async () => {
    // (\s|\s)* before $ is exponential on spaces followed by a letter, and nests no repetition,
    // so the load-time check lets it through: the pool's time limit has to stop it
    const json = JSON.parse(readFileSync(tokPath, 'utf8')) as { pre_tokenizer: { pretokenizers: { pattern?: { Regex?: string } }[] } };
    json.pre_tokenizer.pretokenizers[0]!.pattern = { Regex: '(?:\\s|\\s)*$' };
    const slowTok = join(tmp.dir, 'slow', 'tokenizer.json');
    mkdirSync(join(tmp.dir, 'slow'), { recursive: true });
    writeFileSync(slowTok, JSON.stringify(json));
    writeFileSync(join(tmp.dir, 'slow', 'evil.jsonl'), `${JSON.stringify({ text: `${' '.repeat(40)}a` })}\n`);
    const t = performance.now();
    const err = await prep.prepareDataset(prepareOptions(slowTok, join(tmp.dir, 'slow-out'), { sources: [{ path: join(tmp.dir, 'slow', 'evil.jsonl'), format: 'auto', text_field: 'text' }], workers: 2 })).catch((e: unknown) => e);
    expect((err as Error).message).toContain(`${slowTok}: tokenizing a batch of 1 document(s) took over 10 s, the time limit`);
    expect((err as { exitCode?: number }).exitCode).toBe(2);
    expect(performance.now() - t).toBeLessThan(60_000);
  });
});
