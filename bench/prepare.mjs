// Tokenization throughput of `prepare`: MB/s on one thread and with the worker pool, and the
// whole prepare stage end to end, on a corpus of >= 50 MB generated on the fly in a temp folder.
// Runs against the compiled package (dist/; `npm run build` first). Writes
// bench/results/prepare.json. Usage: node bench/prepare.mjs [--mb 50] [--workers 0]
import { mkdtempSync, rmSync, writeFileSync, renameSync, mkdirSync, statSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (m) => import(join(root, 'dist', m));
const { writeEmbeddedTokenizer } = await dist('data/embedded-tokenizer.js');
const { loadTokenizer } = await dist('data/tokenizer.js');
const { encodeDocument } = await dist('data/documents.js');
const { tokenizeDocuments, resolveWorkers, workerPoolAvailable } = await dist('data/pool.js');
const { prepareDataset } = await dist('data/prepare.js');
const { VERSION } = await dist('version.js');
const { mulberry32 } = await dist('random.js');

const arg = (name, dflt) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? Number(process.argv[i + 1]) : dflt; };
const targetMB = arg('mb', 50);
const workers = resolveWorkers(arg('workers', 0));


/**
 * A synthetic technical corpus: sentences of words drawn from a Zipf(1.1) distribution over a
 * 40,000-word vocabulary built from syllables (so the tokenizer sees a realistic spread of
 * frequent and rare words), with numbers, units, punctuation and paragraph breaks.
 */
function generateCorpus(dir, bytes) {
  const rand = mulberry32(42);
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
  const lines = [];
  let size = 0;
  let docs = 0;
  while (size < bytes) {
    const paras = [];
    const np = 1 + Math.floor(rand() * 5);
    for (let p = 0; p < np; p++) {
      const ns = 2 + Math.floor(rand() * 6);
      const ss = [];
      for (let s = 0; s < ns; s++) ss.push(sentence());
      paras.push(ss.join(' '));
    }
    const line = JSON.stringify({ text: paras.join('\n\n') });
    lines.push(line);
    size += Buffer.byteLength(line) + 1;
    docs++;
  }
  const file = join(dir, 'corpus.jsonl');
  writeFileSync(file, `${lines.join('\n')}\n`);
  return { file, bytes: statSync(file).size, documents: docs, texts: lines.map((l) => JSON.parse(l).text) };
}

const tmp = mkdtempSync(join(tmpdir(), 'v4tune-bench-prepare-'));
try {
  if (!workerPoolAvailable()) throw new Error('the worker pool is not available: run `npm run build` first');
  const load0 = loadavg();
  console.log(`prepare bench: generating a ${targetMB} MB corpus in ${tmp}`);
  const corpus = generateCorpus(tmp, targetMB * 1e6);
  const textBytes = corpus.texts.reduce((s, t) => s + Buffer.byteLength(t), 0);
  writeEmbeddedTokenizer(join(tmp, 'tok'));
  const tokPath = join(tmp, 'tok', 'tokenizer.json');
  const tok = await loadTokenizer(tokPath);
  const docs = corpus.texts.map((text) => ({ kind: 'text', text }));
  const encode = (d) => encodeDocument(tok, null, d);
  const count = (enc) => enc.reduce((s, e) => s + e.ids.length, 0);

  console.log(`prepare bench: ${(corpus.bytes / 1e6).toFixed(1)} MB, ${corpus.documents} documents; one thread…`);
  let t = performance.now();
  const one = await tokenizeDocuments(docs, { tokenizerPath: tokPath, workers: 1, encode });
  const oneS = (performance.now() - t) / 1000;
  const tokens = count(one.encoded);
  console.log(`  one thread: ${oneS.toFixed(1)} s, ${(textBytes / 1e6 / oneS).toFixed(2)} MB/s, ${tokens} tokens`);

  console.log(`prepare bench: worker pool (${workers} workers)…`);
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
  const load1 = loadavg();

  const result = {
    bench: 'prepare',
    v4tune_version: VERSION,
    date: new Date().toISOString(),
    machine: { node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', loadavg_start: load0, loadavg_end: load1 },
    corpus: { bytes: corpus.bytes, text_bytes: textBytes, documents: corpus.documents, tokens, generator: 'Zipf(1.1) over a 40k syllable vocabulary, seed 42 (bench/prepare.mjs)' },
    tokenizer: 'embedded DeepSeek V4 (byte-level BPE, @huggingface/tokenizers)',
    one_thread: { seconds: oneS, mb_per_s: textBytes / 1e6 / oneS, tokens_per_s: tokens / oneS },
    pool: { workers: pool.workers, seconds: poolS, mb_per_s: textBytes / 1e6 / poolS, tokens_per_s: tokens / poolS, speedup: oneS / poolS },
    prepare_end_to_end: { workers: s.workers, seconds: prepS, mb_per_s: corpus.bytes / 1e6 / prepS, rows: s.manifest.rows, seq_len: 1024, packing_efficiency: s.manifest.packing_efficiency, tokenize_seconds: s.seconds.tokenize },
    note: 'MB/s counts document text bytes (UTF-8) for tokenization and corpus file bytes end to end. The machine may be shared: see loadavg.',
  };
  const out = join(root, 'bench', 'results', 'prepare.json');
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(`${out}.tmp`, `${JSON.stringify(result, null, 2)}\n`);
  renameSync(`${out}.tmp`, out);
  console.log(`prepare bench: wrote ${out}`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
