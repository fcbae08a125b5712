// Tokenization throughput of `prepare`: MB/s of the two encoders of the embedded tokenizer on one
// thread (@huggingface/tokenizers and v4tune's src/data/bpe.ts, checked to give the same ids),
// then what prepare runs — one thread and the worker pool — and the whole prepare stage end to
// end, on a corpus of >= 50 MB generated on the fly in a temp folder; then streaming: the CLI's
// `prepare` in a child process on a generated corpus of --stream-mb (1000) MB, its MB/s and peak
// RSS (ru_maxrss). Runs against the compiled package (dist/; `npm run build` first). Writes
// bench/results/prepare.json.
// Usage: node bench/prepare.mjs [--mb 50] [--workers 0] [--stream-mb 1000]
// The corpus generator is exported (generateTexts) so tests can encode the same text.
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync, renameSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';

/**
 * A synthetic technical corpus: documents of sentences of words drawn from a Zipf(1.1)
 * distribution over a 40,000-word vocabulary built from syllables (so the tokenizer sees a
 * realistic spread of frequent and rare words), with numbers, units, punctuation and paragraph
 * breaks. `rand` is a uniform generator (the bench uses mulberry32(42)); documents are added
 * until their JSONL lines ({"text": ...} and a newline) reach `bytes`.
 */
export function generateTexts(rand, bytes) {
  const next = documentGenerator(rand);
  const texts = [];
  let size = 0;
  while (size < bytes) {
    const text = next();
    texts.push(text);
    size += Buffer.byteLength(JSON.stringify({ text })) + 1;
  }
  return texts;
}

/** The generator behind generateTexts: each call returns the next document. */
export function documentGenerator(rand) {
  const syl = ['pu', 'mp', 'va', 'lve', 'se', 'al', 'ro', 'tor', 'shaft', 'im', 'pel', 'ler', 'bea', 'ring', 'flow', 'pre', 'ssure', 'ca', 'vi', 'ta', 'tion', 'mo', 'nit', 'or', 'in', 'spec', 'cou', 'pling', 'ther', 'mal', 'gas', 'ket', 'stra', 'iner', 'dis', 'charge', 'suc', 'ge', 'ar', 'box', 'oil', 'lu', 'bri', 'cant', 'de', 're', 'un', 'ex', 'con', 'trol'];
  const vocab = Array.from({ length: 40000 }, (_, i) => {
    let w = '';
    const n = 1 + (i % 4);
    for (let k = 0; k < n; k++) w += syl[Math.floor(rand() * syl.length)];
    return w;
  });
  const cdf = [];
  let acc = 0;
  for (let r = 1; r <= vocab.length; r++) { acc += 1 / r ** 1.1; cdf.push(acc); }
  const word = () => {
    const u = rand() * acc;
    let lo = 0, hi = cdf.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (cdf[mid] < u) lo = mid + 1; else hi = mid; }
    return vocab[lo];
  };
  const units = ['mm', 'bar', 'kW', 'rpm', '°C', 'm³/h', 'mm/s', 'A'];
  const sentence = () => {
    const n = 6 + Math.floor(rand() * 18);
    const ws = [];
    for (let i = 0; i < n; i++) ws.push(rand() < 0.07 ? `${(rand() * 1000).toFixed(rand() < 0.5 ? 0 : 2)} ${units[Math.floor(rand() * units.length)]}` : word());
    const s = ws.join(' ');
    return s[0].toUpperCase() + s.slice(1) + (rand() < 0.1 ? '?' : rand() < 0.2 ? ':' : '.');
  };
  return () => {
    const paras = [];
    const np = 1 + Math.floor(rand() * 5);
    for (let p = 0; p < np; p++) {
      const ns = 2 + Math.floor(rand() * 6);
      const ss = [];
      for (let s = 0; s < ns; s++) ss.push(sentence());
      paras.push(ss.join(' '));
    }
    return paras.join('\n\n');
  };
}

/**
 * Write a JSONL corpus ({"text": ...} per line) of at least `bytes` bytes to `file`, streaming
 * (memory stays small at any size): documents drawn from a pool of `pool` generated ones
 * (documentGenerator), each prefixed with its line number so no two are duplicates.
 * Returns the bytes and documents written.
 */
export function writeCorpus(file, rand, bytes, pool = 4000) {
  const next = documentGenerator(rand);
  const texts = Array.from({ length: pool }, next);
  const fd = openSync(file, 'w');
  let size = 0;
  let docs = 0;
  try {
    while (size < bytes) {
      const lines = [];
      for (let k = 0; k < 256; k++) lines.push(JSON.stringify({ text: `Record ${docs + k}. ${texts[Math.floor(rand() * pool)]}` }));
      const chunk = `${lines.join('\n')}\n`;
      writeSync(fd, chunk);
      size += Buffer.byteLength(chunk);
      docs += 256;
    }
  } finally {
    closeSync(fd);
  }
  return { bytes: size, documents: docs };
}

/** Encode every text with `encode`; seconds, token count and an FNV-1a hash of all ids in order. */
function timeEncoder(texts, encode) {
  const t = performance.now();
  let tokens = 0;
  let hash = 0x811c9dc5;
  for (const text of texts) {
    const ids = encode(text);
    tokens += ids.length;
    for (let i = 0; i < ids.length; i++) hash = Math.imul(hash ^ ids[i], 0x01000193);
  }
  return { seconds: (performance.now() - t) / 1000, tokens, hash: (hash >>> 0).toString(16) };
}

/** Seconds for `n` worker threads to start and load the tokenizer, as the pool's workers do first. */
async function workerStartSeconds(tokenizerModule, tokPath, n) {
  const code = `import(${JSON.stringify(pathToFileURL(tokenizerModule).href)}).then((m) => m.loadTokenizer(${JSON.stringify(tokPath)}))`
    + ".then(() => require('node:worker_threads').parentPort.postMessage('ready'))";
  const t = performance.now();
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const w = new Worker(code, { eval: true });
    w.once('message', () => w.terminate().then(resolve));
    w.once('error', reject);
  })));
  return (performance.now() - t) / 1000;
}

async function main() {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  const dist = (m) => import(join(root, 'dist', m));
  const { writeEmbeddedTokenizer } = await dist('data/embedded-tokenizer.js');
  const { loadTokenizer } = await dist('data/tokenizer.js');
  const { byteLevelBpe } = await dist('data/bpe.js');
  const { encodeDocument } = await dist('data/documents.js');
  const { tokenizeDocuments, resolveWorkers, workerPoolAvailable } = await dist('data/pool.js');
  const { prepareDataset } = await dist('data/prepare.js');
  const { VERSION } = await dist('version.js');
  const { mulberry32 } = await dist('random.js');
  const { Tokenizer } = await import('@huggingface/tokenizers');

  const arg = (name, dflt) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? Number(process.argv[i + 1]) : dflt; };
  const targetMB = arg('mb', 50);
  const workers = resolveWorkers(arg('workers', 0));
  if (!workerPoolAvailable()) throw new Error('the worker pool is not available: run `npm run build` first');

  const tmp = mkdtempSync(join(tmpdir(), 'v4tune-bench-prepare-'));
  try {
    const load0 = loadavg();
    console.log(`prepare bench: generating a ${targetMB} MB corpus in ${tmp}`);
    const texts = generateTexts(mulberry32(42), targetMB * 1e6);
    const file = join(tmp, 'corpus.jsonl');
    writeFileSync(file, `${texts.map((text) => JSON.stringify({ text })).join('\n')}\n`);
    const corpus = { file, bytes: statSync(file).size, documents: texts.length };
    const textBytes = texts.reduce((s, t) => s + Buffer.byteLength(t), 0);
    writeEmbeddedTokenizer(join(tmp, 'tok'));
    const tokPath = join(tmp, 'tok', 'tokenizer.json');
    const json = JSON.parse(readFileSync(tokPath, 'utf8'));
    const config = JSON.parse(readFileSync(join(tmp, 'tok', 'tokenizer_config.json'), 'utf8'));

    console.log(`prepare bench: ${(corpus.bytes / 1e6).toFixed(1)} MB, ${corpus.documents} documents; encoders on one thread…`);
    let t = performance.now();
    const hf = new Tokenizer(json, config);
    const hfLoadS = (performance.now() - t) / 1000;
    const hfRun = timeEncoder(texts, (text) => hf.encode(text, { add_special_tokens: false }).ids);
    console.log(`  hf-js: ${hfRun.seconds.toFixed(1)} s, ${(textBytes / 1e6 / hfRun.seconds).toFixed(2)} MB/s`);
    t = performance.now();
    const fast = byteLevelBpe(json, config);
    const fastLoadS = (performance.now() - t) / 1000;
    if (!('encoder' in fast)) throw new Error(`v4tune-bpe does not take the embedded tokenizer: ${fast.unsupported}`);
    const fastRun = timeEncoder(texts, (text) => fast.encoder.encode(text));
    console.log(`  v4tune-bpe: ${fastRun.seconds.toFixed(1)} s, ${(textBytes / 1e6 / fastRun.seconds).toFixed(2)} MB/s (${(hfRun.seconds / fastRun.seconds).toFixed(1)}x)`);
    if (fastRun.tokens !== hfRun.tokens || fastRun.hash !== hfRun.hash) throw new Error(`the encoders disagree: hf-js ${hfRun.tokens} tokens (hash ${hfRun.hash}), v4tune-bpe ${fastRun.tokens} (hash ${fastRun.hash})`);

    const tok = await loadTokenizer(tokPath);
    const docs = texts.map((text) => ({ kind: 'text', text }));
    const encode = (d) => encodeDocument(tok, null, d);
    const count = (enc) => enc.reduce((s, e) => s + e.ids.length, 0);

    console.log(`prepare bench: tokenizeDocuments with the loaded tokenizer (${tok.encoder}), one thread…`);
    t = performance.now();
    const one = await tokenizeDocuments(docs, { tokenizerPath: tokPath, workers: 1, encode });
    const oneS = (performance.now() - t) / 1000;
    const tokens = count(one.encoded);
    console.log(`  one thread: ${oneS.toFixed(1)} s, ${(textBytes / 1e6 / oneS).toFixed(2)} MB/s, ${tokens} tokens`);

    console.log(`prepare bench: worker pool (${workers} workers)…`);
    const startS = await workerStartSeconds(join(root, 'dist', 'data', 'tokenizer.js'), tokPath, workers);
    console.log(`  ${workers} workers start and load the tokenizer in ${startS.toFixed(2)} s`);
    t = performance.now();
    const pool = await tokenizeDocuments(docs, { tokenizerPath: tokPath, workers, encode });
    const poolS = (performance.now() - t) / 1000;
    if (count(pool.encoded) !== tokens) throw new Error('pool and single thread disagree on the token count');
    console.log(`  pool: ${poolS.toFixed(1)} s, ${(textBytes / 1e6 / poolS).toFixed(2)} MB/s (${(oneS / poolS).toFixed(2)}x)`);

    console.log('prepare bench: prepareDataset end to end (read, hash, tokenize on the pool, pack, write)…');
    t = performance.now();
    const s = await prepareDataset({
      tokenizer: tokPath, sources: [{ path: corpus.file, format: 'jsonl', text_field: 'text' }], seq_len: 1024, packing: true,
      eval_fraction: 0.01, seed: 0, shard_rows: 4096, dedup: true, output: join(tmp, 'data'), workers: arg('workers', 0),
    });
    const prepS = (performance.now() - t) / 1000;
    console.log(`  prepare: ${prepS.toFixed(1)} s, ${(corpus.bytes / 1e6 / prepS).toFixed(2)} MB/s, ${s.manifest.rows} rows, packing efficiency ${(s.manifest.packing_efficiency * 100).toFixed(1)}%`);

    const streamMB = arg('stream-mb', 1000);
    console.log(`prepare bench: streaming — the CLI's prepare in a child process on a generated ${streamMB} MB corpus…`);
    const streamFile = join(tmp, 'stream.jsonl');
    t = performance.now();
    const streamCorpus = writeCorpus(streamFile, mulberry32(7), streamMB * 1e6);
    const genS = (performance.now() - t) / 1000;
    rmSync(join(tmp, 'data'), { recursive: true, force: true });
    writeFileSync(join(tmp, 'stream.yaml'), `tokenizer: deepseek-v4\ndata:\n  sources: [{ path: stream.jsonl }]\n  seq_len: 1024\n  eval_fraction: 0.01\n  workers: ${arg('workers', 0)}\n  output: stream-data\noutput: stream-run\n`);
    writeFileSync(join(tmp, 'rss.cjs'), "process.on('exit', () => { if (require('node:worker_threads').isMainThread) require('node:fs').writeFileSync(process.env.V4TUNE_RSS_OUT, String(process.resourceUsage().maxRSS)); });\n");
    const load2 = loadavg();
    t = performance.now();
    const child = spawnSync(process.execPath, ['-r', join(tmp, 'rss.cjs'), join(root, 'bin', 'v4tune.js'), '--json', 'prepare', join(tmp, 'stream.yaml')], { encoding: 'utf8', env: { ...process.env, V4TUNE_RSS_OUT: join(tmp, 'rss') }, maxBuffer: 1 << 26 });
    const streamS = (performance.now() - t) / 1000;
    if (child.status !== 0) throw new Error(`streaming prepare failed (${child.status ?? child.signal}): ${child.stderr}`);
    const streamed = JSON.parse(child.stdout);
    const peakMB = Number(readFileSync(join(tmp, 'rss'), 'utf8')) / 1024;
    console.log(`  ${(streamCorpus.bytes / 1e6).toFixed(0)} MB (${streamCorpus.documents} documents): ${streamS.toFixed(1)} s, ${(streamCorpus.bytes / 1e6 / streamS).toFixed(2)} MB/s, peak RSS ${peakMB.toFixed(0)} MB, ${streamed.rows} rows`);
    const load1 = loadavg();

    const encoderResult = (run, loadS) => ({ load_seconds: loadS, seconds: run.seconds, mb_per_s: textBytes / 1e6 / run.seconds, tokens_per_s: run.tokens / run.seconds });
    const result = {
      bench: 'prepare',
      v4tune_version: VERSION,
      date: new Date().toISOString(),
      machine: { node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', loadavg_start: load0, loadavg_end: load1, ...(process.env.BENCH_NOTE ? { note: process.env.BENCH_NOTE } : {}) },
      corpus: { bytes: corpus.bytes, text_bytes: textBytes, documents: corpus.documents, tokens, generator: 'Zipf(1.1) over a 40k syllable vocabulary, seed 42 (bench/prepare.mjs)' },
      tokenizer: 'embedded DeepSeek V4 (byte-level BPE)',
      encoders_one_thread: {
        hf_js: encoderResult(hfRun, hfLoadS),
        v4tune_bpe: encoderResult(fastRun, fastLoadS),
        speedup: hfRun.seconds / fastRun.seconds,
        same_ids: true,
      },
      encoder: tok.encoder,
      one_thread: { seconds: oneS, mb_per_s: textBytes / 1e6 / oneS, tokens_per_s: tokens / oneS },
      pool: { workers: pool.workers, worker_start_seconds: startS, seconds: poolS, mb_per_s: textBytes / 1e6 / poolS, tokens_per_s: tokens / poolS, speedup: oneS / poolS },
      prepare_streaming: {
        corpus: { bytes: streamCorpus.bytes, documents: streamCorpus.documents, generator: 'documents drawn from 4000 generated ones (documentGenerator, seed 7), each prefixed with its record number (bench/prepare.mjs writeCorpus)', generate_seconds: genS },
        command: 'v4tune prepare (compiled CLI, child process), seq_len 1024, eval_fraction 0.01, HF datasets layout on',
        workers: streamed.workers, seconds: streamS, mb_per_s: streamCorpus.bytes / 1e6 / streamS, peak_rss_mb: peakMB,
        peak_rss_bytes_per_corpus_byte: (peakMB * 1048576) / streamCorpus.bytes,
        rows: streamed.rows, tokens: streamed.tokens, packing_efficiency: streamed.packing_efficiency, loadavg_start: load2,
      },
      prepare_end_to_end: { workers: s.workers, seconds: prepS, mb_per_s: corpus.bytes / 1e6 / prepS, rows: s.manifest.rows, seq_len: 1024, packing_efficiency: s.manifest.packing_efficiency, tokenize_seconds: s.seconds.tokenize },
      note: 'MB/s counts document text bytes (UTF-8) for tokenization and corpus file bytes end to end (prepare_end_to_end in this process, prepare_streaming in a child process, its peak RSS from getrusage). encoders_one_thread times encode() alone on every document (same_ids: equal token count and id hash); one_thread and pool time tokenizeDocuments with the tokenizer prepare loads (`encoder`), pool including worker start-up (worker_start_seconds: the workers starting and loading the tokenizer, alone). The machine may be shared: see loadavg.',
    };
    const out = join(root, 'bench', 'results', 'prepare.json');
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(`${out}.tmp`, `${JSON.stringify(result, null, 2)}\n`);
    renameSync(`${out}.tmp`, out);
    console.log(`prepare bench: wrote ${out}`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
