// Mixing sources: per-source weight (sampling below 1, repetition above), max_documents and
// max_tokens caps, seeded and recorded in the manifest; provenance columns that lead back to
// each document; inspect's --row, --source, --sample/--seed.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { prepareDataset, type PrepareOptions } from '../../src/data/prepare.js';
import { openDataset } from '../../src/data/dataset.js';
import { inspectDataset, renderDatasetSummary } from '../../src/data/inspect.js';
import { loadTokenizer, type TextTokenizer } from '../../src/data/tokenizer.js';
import { InputError } from '../../src/errors.js';
import { embeddedTokenizerFile, prepareOptions, tempDir, write } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 60_000 });

const tmp = tempDir();
let tokPath: string;
let tok: TextTokenizer;
const big = join(tmp.dir, 'corpus', 'big.jsonl');
const small = join(tmp.dir, 'corpus', 'small.jsonl');
const BIG = 2000;
const SMALL = 200;
beforeAll(async () => {
  tokPath = embeddedTokenizerFile(join(tmp.dir, 'tok'));
  tok = await loadTokenizer(tokPath);
  write(big, Array.from({ length: BIG }, (_, i) => JSON.stringify({ text: `Manual page ${i}: torque the flange bolts in a star pattern.` })).join('\n'));
  write(small, Array.from({ length: SMALL }, (_, i) => JSON.stringify({ text: `Incident ${i}: the seal on pump ${i % 13} leaked.` })).join('\n'));
});
afterAll(() => tmp.cleanup());

type Source = PrepareOptions['sources'][number];
const src = (path: string, over: Partial<Source>): Source => ({ path, format: 'auto', text_field: 'text', ...over });
let n = 0;
const out = (): string => join(tmp.dir, `out${n++}`);

describe('mixing sources', () => {
  it('weight < 1 samples, weight > 1 repeats: documents per source within 4 standard deviations of weight × documents; recorded in the manifest', async () => {
    const s = await prepareDataset(prepareOptions(tokPath, out(), {
      sources: [src(big, { name: 'manual', weight: 0.3 }), src(small, { name: 'incidents', weight: 2.5 })],
      seq_len: 256, eval_fraction: 0, seed: 11,
    }));
    const [manual, incidents] = s.manifest.sources;
    // manual: binomial(2000, 0.3), sd 20.5; incidents: 2 × 200 + binomial(200, 0.5), sd 7.1
    expect(manual!.weight).toBe(0.3);
    expect(Math.abs(manual!.documents - 0.3 * BIG)).toBeLessThan(4 * 20.5);
    expect(manual!.dropped).toBe(BIG - manual!.documents);
    expect(manual!.repeats).toBe(0);
    expect(Math.abs(incidents!.documents - 2.5 * SMALL)).toBeLessThan(4 * 7.1);
    expect(incidents!.repeats).toBe(incidents!.documents - SMALL);
    expect(incidents!.dropped).toBe(0);
    expect(manual!.token_share + incidents!.token_share).toBeCloseTo(1, 10);
    // every copy of an incident is the same document (same doc id, same tokens), at most 3 copies
    const copies = new Map<number, number>();
    for (const row of openDataset(s.output).rows('train')) row.source_ids!.forEach((sid, k) => { if (sid === 1) copies.set(row.doc_ids![k]!, (copies.get(row.doc_ids![k]!) ?? 0) + 1); });
    expect(copies.size).toBe(SMALL);
    expect(Math.max(...copies.values())).toBe(3);
    expect(Math.min(...copies.values())).toBe(2);
  });

  it('is seeded: the same seed gives byte-identical shards, another seed another sample', async () => {
    const opts = (seed: number) => prepareOptions(tokPath, out(), { sources: [src(big, { name: 'manual', weight: 0.5 })], seq_len: 256, eval_fraction: 0.1, seed });
    const a = await prepareDataset(opts(5));
    const b = await prepareDataset(opts(5));
    const c = await prepareDataset(opts(6));
    const shard = (x: typeof a) => readFileSync(join(x.output, x.manifest.splits.train.shards[0]!));
    expect(shard(a)).toEqual(shard(b));
    expect(shard(a)).not.toEqual(shard(c));
  });

  it('max_documents and max_tokens stop a source there; the manifest says which cap was reached', async () => {
    const s = await prepareDataset(prepareOptions(tokPath, out(), {
      sources: [src(big, { name: 'manual', max_documents: 150 }), src(small, { name: 'incidents', weight: 3, max_tokens: 5000 })],
      seq_len: 256, eval_fraction: 0.1,
    }));
    const [manual, incidents] = s.manifest.sources;
    expect(manual!.documents).toBe(150);
    expect(manual!.cap_reached).toBe('max_documents');
    expect(incidents!.tokens).toBeLessThanOrEqual(5000);
    expect(incidents!.tokens).toBeGreaterThan(5000 - 40);
    expect(incidents!.cap_reached).toBe('max_tokens');
    const bad = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(big, { weight: 0 })] })).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(InputError);
    expect((bad as Error).message).toBe('data.sources[0].weight must be a number in (0, 1000] (got 0)');
  });

  it('source_ids and doc_ids lead every segment back to its document: the doc id is its line, the tokens are its text', async () => {
    const s = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(big, { name: 'manual' }), src(small, { name: 'incidents' })], seq_len: 64, eval_fraction: 0.2, root: tmp.dir }));
    const lines = [readFileSync(big, 'utf8').split('\n'), readFileSync(small, 'utf8').split('\n')];
    const seen = new Set<string>();
    const ds = openDataset(s.output);
    for (const split of ['train', 'eval'] as const) {
      for (const row of ds.rows(split)) {
        let at = 0;
        row.segments.forEach((len, k) => {
          if (k < row.source_ids!.length) {
            const sid = row.source_ids![k]!;
            const id = row.doc_ids![k]!;
            const text = (JSON.parse(lines[sid]![id]!) as { text: string }).text;
            expect([...row.input_ids.subarray(at, at + len)]).toEqual([tok.bosId, ...tok.encode(text), tok.eosId]);
            seen.add(`${sid}:${id}`);
          }
          at += len;
        });
      }
    }
    expect(seen.size).toBe(BIG + SMALL);
    expect(s.manifest.sources.map((x) => [x.name, x.pattern, x.files[0]!.path])).toEqual([['manual', 'corpus/big.jsonl', 'corpus/big.jsonl'], ['incidents', 'corpus/small.jsonl', 'corpus/small.jsonl']]);
  });
});

describe('inspect selects rows', () => {
  it('--row N, --source NAME, --sample K --seed S (reproducible, within the source), each segment naming its source and file:line', async () => {
    const s = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(big, { name: 'manual' }), src(small, { name: 'incidents' })], seq_len: 32, packing: false, eval_fraction: 0, root: tmp.dir }));
    const one = await inspectDataset(s.output, { row: 7 });
    expect(one.rows.map((r) => [r.split, r.index])).toEqual([['train', 7]]);
    const sampled = await inspectDataset(s.output, { sample: 5, seed: 3, source: 'incidents' });
    expect(sampled.matched).toBe(SMALL);
    expect(sampled.rows).toHaveLength(5);
    for (const r of sampled.rows) expect(r.segments[0]!.source).toBe('incidents');
    const again = await inspectDataset(s.output, { sample: 5, seed: 3, source: 'incidents' });
    expect(again.rows.map((r) => r.index)).toEqual(sampled.rows.map((r) => r.index));
    const other = await inspectDataset(s.output, { sample: 5, seed: 4, source: 'incidents' });
    expect(other.rows.map((r) => r.index)).not.toEqual(sampled.rows.map((r) => r.index));
    const seg = sampled.rows[0]!.segments[0]!;
    expect(seg.location).toBe(`corpus/small.jsonl:${seg.doc_id! + 1}`);
    expect(renderDatasetSummary(sampled, { color: false })).toContain(`source "incidents" doc ${seg.doc_id} (corpus/small.jsonl:${seg.doc_id! + 1})`);
    await expect(inspectDataset(s.output, { row: 999999 })).rejects.toThrow(/--row 999999: the train split of .* has 2200 rows/);
    await expect(inspectDataset(s.output, { source: 'nope' })).rejects.toThrow(/--source nope: .* has no source of that name \(its sources: manual, incidents\)/);
  });
});
