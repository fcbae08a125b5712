// prepare streams: its peak memory does not grow with the corpus. The compiled CLI (dist/; `npm
// run build` first) prepares generated corpora of 20 MB and 200 MB in child processes (worker
// pool on), each reporting its peak RSS (getrusage ru_maxrss, main thread and workers together)
// when it exits. Holding the corpus, as prepare once did, cost about 8.5 bytes per corpus byte
// (1.5 GB more for the larger one); streaming, the two peaks differ by less than 128 MB.
import { describe, expect, it, afterAll, vi } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeCorpus } from '../../bench/prepare.mjs';
import { mulberry32 } from '../../src/random.js';
import { tempDir } from './helpers.js';

vi.setConfig({ testTimeout: 300_000 });

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = join(ROOT, 'bin', 'v4tune.js');
const tmp = tempDir('v4tune-stream-');
afterAll(() => tmp.cleanup());

/** Peak RSS in MB and the manifest of `prepare` on a generated corpus of `mb` MB. */
function prepareRss(mb: number): { peakMB: number; documents: number; rows: number } {
  const dir = join(tmp.dir, `c${mb}`);
  const corpus = writeCorpus(join(tmp.dir, `c${mb}.jsonl`), mulberry32(mb), mb * 1e6) as { bytes: number; documents: number };
  writeFileSync(join(tmp.dir, `r${mb}.yaml`), `tokenizer: deepseek-v4\ndata:\n  sources: [{ path: c${mb}.jsonl }]\n  seq_len: 1024\n  eval_fraction: 0.01\n  output: c${mb}-data\noutput: ${dir}\n`);
  const hook = join(tmp.dir, 'rss.cjs');
  writeFileSync(hook, "process.on('exit', () => { if (require('node:worker_threads').isMainThread) require('node:fs').writeFileSync(process.env.V4TUNE_RSS_OUT, String(process.resourceUsage().maxRSS)); });\n");
  const rssFile = join(tmp.dir, `rss${mb}`);
  const r = spawnSync(process.execPath, ['-r', hook, CLI, '--json', 'prepare', join(tmp.dir, `r${mb}.yaml`)], { encoding: 'utf8', env: { ...process.env, V4TUNE_RSS_OUT: rssFile }, timeout: 240_000 });
  if (r.status !== 0) throw new Error(`prepare failed (${r.status ?? r.signal}): ${r.stderr}`);
  const s = JSON.parse(r.stdout) as { documents: { kept: number }; rows: number };
  expect(s.documents.kept).toBe(corpus.documents);
  return { peakMB: Number(readFileSync(rssFile, 'utf8')) / 1024, documents: s.documents.kept, rows: s.rows };
}

describe.skipIf(!existsSync(join(ROOT, 'dist', 'data', 'prepare.js')))('prepare in bounded memory', () => {
  it('peak RSS on a 200 MB corpus exceeds that on a 20 MB corpus by less than 128 MB', () => {
    const small = prepareRss(20);
    const large = prepareRss(200);
    console.log(`prepare peak RSS: 20 MB corpus ${small.peakMB.toFixed(0)} MB, 200 MB corpus ${large.peakMB.toFixed(0)} MB (${large.rows} rows)`);
    expect(large.rows).toBeGreaterThan(9 * small.rows);
    expect(large.peakMB - small.peakMB).toBeLessThan(128);
  });
});
