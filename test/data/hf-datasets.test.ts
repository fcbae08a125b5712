// A prepared dataset in the Python tools data teams use: HF datasets.load_from_disk opens the
// folder as a DatasetDict (train, eval) whose rows equal v4tune's own reader's, with the same
// column types (and load_dataset reads it through the card's configs); pyarrow (ipc.open_file)
// and polars (read_ipc) still read every shard.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { prepareDataset } from '../../src/data/prepare.js';
import { openDataset } from '../../src/data/dataset.js';
import { BUNDLED, embeddedTokenizerFile, prepareOptions, tempDir } from './helpers.js';
import { runPython, skipPython } from '../interop/python.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 120_000 });

const tmp = tempDir();
let out: string;
let empty: string;
beforeAll(async () => {
  if (skipPython) return;
  const tok = embeddedTokenizerFile(join(tmp.dir, 'tok'));
  out = join(tmp.dir, 'data');
  await prepareDataset(prepareOptions(tok, out, {
    sources: [
      { path: join(BUNDLED, '*.txt'), format: 'auto', text_field: 'text', name: 'procedures' },
      { path: join(BUNDLED, 'qa-chat.jsonl'), format: 'auto', text_field: 'text', name: 'qa' },
      { path: join(BUNDLED, 'workorders.jsonl'), format: 'auto', text_field: 'text', name: 'orders', weight: 0.5 },
    ],
    seq_len: 128, shard_rows: 100, eval_fraction: 0.1, seed: 1,
  }));
  empty = join(tmp.dir, 'no-eval');
  await prepareDataset(prepareOptions(tok, empty, { sources: [{ path: join(BUNDLED, '*.txt'), format: 'auto', text_field: 'text' }], seq_len: 64, eval_fraction: 0 }));
});
afterAll(() => tmp.cleanup());

const COLUMNS = ['input_ids', 'loss_mask', 'segment_ids', 'source_ids', 'doc_ids'] as const;

/** Every row of a split as v4tune's reader gives it, as plain arrays. */
function v4tuneRows(dir: string, split: 'train' | 'eval'): Record<string, number[]>[] {
  return [...openDataset(dir).rows(split)].map((r) => Object.fromEntries(COLUMNS.map((c) => [c, Array.from(r[c] as ArrayLike<number>)])));
}

describe.skipIf(skipPython)('HF datasets, pyarrow and polars read a prepared dataset', () => {
  it('datasets.load_from_disk opens a DatasetDict (train, eval) with the same types, and its rows equal v4tune\'s reader\'s', () => {
    const got = JSON.parse(runPython([
      'import datasets, json, sys',
      'd = datasets.load_from_disk(sys.argv[1])',
      'print(json.dumps({"type": type(d).__name__, "splits": list(d.keys()),',
      '  "features": {k: str(v) for k, v in d["train"].features.items()},',
      '  "rows": {s: d[s].to_list() for s in d}}))',
    ].join('\n'), [out])) as { type: string; splits: string[]; features: Record<string, string>; rows: Record<string, Record<string, number[]>[]> };
    expect(got.type).toBe('DatasetDict');
    expect(got.splits).toEqual(['train', 'eval']);
    expect(got.features).toEqual({
      input_ids: "List(Value('int32'))", loss_mask: "List(Value('uint8'))", segment_ids: "List(Value('uint16'))",
      source_ids: "List(Value('uint16'))", doc_ids: "List(Value('uint32'))",
    });
    const m = openDataset(out).manifest;
    expect(m.splits.train.shards.length).toBeGreaterThan(1);
    for (const split of ['train', 'eval'] as const) {
      expect(got.rows[split]!.length).toBe(m.splits[split].rows);
      expect(got.rows[split]).toEqual(v4tuneRows(out, split));
    }
  });

  it('datasets.load_dataset(folder) reads it too, through the dataset card\'s configs (the HF stream files), with the same rows', () => {
    const got = JSON.parse(runPython([
      'import datasets, json, sys, tempfile',
      'd = datasets.load_dataset(sys.argv[1], cache_dir=tempfile.mkdtemp())',
      'print(json.dumps({s: d[s].to_list() for s in d}))',
    ].join('\n'), [out])) as Record<string, Record<string, number[]>[]>;
    expect(Object.keys(got)).toEqual(['train', 'eval']);
    for (const split of ['train', 'eval'] as const) expect(got[split]).toEqual(v4tuneRows(out, split));
  });

  it('a split with no rows opens as an empty Dataset', () => {
    expect(runPython('import datasets, sys\nd = datasets.load_from_disk(sys.argv[1])\nprint(d["train"].num_rows > 0, d["eval"].num_rows)', [empty]).trim()).toBe('True 0');
  });

  it('pyarrow.ipc.open_file and polars.read_ipc read every shard with the same rows; the card and manifest sit beside them', () => {
    const m = openDataset(out).manifest;
    const shards = m.splits.train.shards.map((s) => join(out, s));
    const got = JSON.parse(runPython([
      'import json, sys, pyarrow as pa, polars as pl',
      'out = []',
      'for f in sys.argv[1:]:',
      '    t = pa.ipc.open_file(f).read_all()',
      '    p = pl.read_ipc(f)',
      '    assert p.to_dicts() == t.to_pylist(), f',
      '    out.append({"types": [str(x.type) for x in t.schema], "polars": [str(x) for x in p.dtypes], "rows": t.to_pylist()})',
      'print(json.dumps(out))',
    ].join('\n'), shards)) as { types: string[]; polars: string[]; rows: Record<string, number[]>[] }[];
    expect(got[0]!.types).toEqual(['list<item: int32 not null>', 'list<item: uint8 not null>', 'list<item: uint16 not null>', 'list<item: uint16 not null>', 'list<item: uint32 not null>']);
    expect(got[0]!.polars).toEqual(['List(Int32)', 'List(UInt8)', 'List(UInt16)', 'List(UInt16)', 'List(UInt32)']);
    expect(got.flatMap((s) => s.rows)).toEqual(v4tuneRows(out, 'train'));
    const card = readFileSync(join(out, 'README.md'), 'utf8');
    expect(card).toContain('datasets.load_from_disk');
    expect(card).toMatch(/\| 2 \| orders \| 1 \(`.*workorders.jsonl`\) \| jsonl \| 0.5 \|/);
  });
});
