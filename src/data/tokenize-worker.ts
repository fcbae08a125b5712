// Worker thread of the tokenizer pool (src/data/pool.ts): loads the tokenizer once, then encodes
// batches of documents and sends back their tokens and loss masks, concatenated.
import { parentPort, workerData } from 'node:worker_threads';
import { loadTokenizer } from './tokenizer.js';
import { chatTokenIds, encodeDocument, type ChatTokenIds } from './documents.js';
import { encodeBatch, type BatchRequest, type BatchReply, type WorkerReady } from './pool.js';

interface WorkerInit { tokenizerPath: string }

const { tokenizerPath } = workerData as WorkerInit;
const port = parentPort;
if (!port) throw new Error('tokenize-worker runs only as a worker thread');

const ready = loadTokenizer(tokenizerPath).then((tok) => {
  const ids = chatTokenIds(tok);
  const special: ChatTokenIds | null = 'missing' in ids ? null : ids;
  return (req: BatchRequest): BatchReply => encodeBatch(req, (d) => encodeDocument(tok, special, d));
});

ready.then(() => port.postMessage({ ready: true } satisfies WorkerReady)).catch((e: unknown) => {
  port.postMessage({ id: -1, error: e instanceof Error ? e.message : String(e) });
});

port.on('message', (req: BatchRequest) => {
  ready.then((encode) => {
    const reply = encode(req);
    port.postMessage(reply, [reply.ids.buffer as ArrayBuffer, reply.mask.buffer as ArrayBuffer, reply.lengths.buffer as ArrayBuffer]);
  }).catch((e: unknown) => {
    port.postMessage({ id: req.id, error: e instanceof Error ? e.message : String(e) });
  });
});
