// Worker thread of init-model (init.ts ValueWorkers): draws one tensor's values a message, into
// the buffer it is handed, and hands the buffer back. The values depend only on (seed, name), so
// which thread draws a tensor changes no byte.
import { parentPort } from 'node:worker_threads';
import { initValues, type ValuesReply, type ValuesRequest } from './init.js';

const port = parentPort;
if (!port) throw new Error('init-worker runs only as a worker thread');
port.on('message', ({ t, seed, buf }: ValuesRequest) => {
  try {
    initValues(t, seed, new Float32Array(buf));
    port.postMessage({ buf } satisfies ValuesReply, [buf]);
  } catch (e) {
    port.postMessage({ error: e instanceof Error ? e.message : String(e) } satisfies ValuesReply);
  }
});
