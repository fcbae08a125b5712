// Every source format prepare reads — text, JSONL (any field), chat, ShareGPT, Alpaca, .json
// arrays and JSON lines, Parquet — chosen by extension and content or declared; an unknown
// extension refused; bad records counted and reported as file:line up to data.max_bad_records.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { join } from 'node:path';
import { prepareDataset, type PrepareOptions } from '../../src/data/prepare.js';
import { openDataset } from '../../src/data/dataset.js';
import { loadTokenizer, type TextTokenizer } from '../../src/data/tokenizer.js';
import { InputError } from '../../src/errors.js';
import { embeddedTokenizerFile, prepareOptions, tempDir, write } from './helpers.js';
import { runPython, skipPython } from '../interop/python.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 60_000 });

const tmp = tempDir();
let tokPath: string;
let tok: TextTokenizer;
beforeAll(async () => {
  tokPath = embeddedTokenizerFile(join(tmp.dir, 'tok'));
  tok = await loadTokenizer(tokPath);
});
afterAll(() => tmp.cleanup());

type Source = PrepareOptions['sources'][number];
const src = (path: string, over: Partial<Source> = {}): Source => ({ path, format: 'auto', text_field: 'text', ...over });
let n = 0;
const out = (): string => join(tmp.dir, `out${n++}`);

/** Each document's tokens (segments of a document joined in order), by source name and doc id. */
function documents(dir: string): Map<string, { ids: number[]; mask: number[] }> {
  const ds = openDataset(dir);
  const docs = new Map<string, { ids: number[]; mask: number[] }>();
  for (const split of ['train', 'eval'] as const) {
    for (const row of ds.rows(split)) {
      let at = 0;
      row.segments.forEach((len, k) => {
        if (k < row.source_ids!.length) {
          const key = `${ds.manifest.sources[row.source_ids![k]!]!.name}#${row.doc_ids![k]}`;
          const d = docs.get(key) ?? { ids: [], mask: [] };
          d.ids.push(...row.input_ids.subarray(at, at + len));
          d.mask.push(...row.loss_mask.subarray(at, at + len));
          docs.set(key, d);
        }
        at += len;
      });
    }
  }
  return docs;
}

const textIds = (t: string): number[] => [tok.bosId, ...tok.encode(t), tok.eosId];

describe('prepare reads every source format', () => {
  it('text, JSONL with a chosen field, .json arrays and .json lines: one document per record, doc_ids are record indices', async () => {
    const dir = join(tmp.dir, 'plain');
    write(join(dir, 'a.txt'), 'Bearing temperature rose to 85 °C.');
    write(join(dir, 'notes.jsonl'), ['{"body": "Valve closed."}', '', '{"body": "Strainer cleaned."}'].join('\n'));
    write(join(dir, 'arr.json'), JSON.stringify([{ text: 'Seal replaced.' }, { text: 'Pump restarted,\nnominal.' }], null, 2));
    write(join(dir, 'lines.json'), '{"text": "Impeller balanced."}\n{"text": "Motor aligned."}\n');
    const o = out();
    const s = await prepareDataset(prepareOptions(tokPath, o, {
      sources: [src(join(dir, 'a.txt'), { name: 'txt' }), src(join(dir, 'notes.jsonl'), { name: 'notes', text_field: 'body' }), src(join(dir, '*.json'), { name: 'json' })],
      seq_len: 128, root: dir,
    }));
    const m = s.manifest;
    expect(m.sources.map((x) => x.files.map((f) => [f.path, f.container, f.format, f.first_doc_id, f.records]))).toEqual([
      [['a.txt', 'text', 'text', 0, 1]],
      [['notes.jsonl', 'jsonl', 'jsonl', 0, 3]],
      [['arr.json', 'json', 'jsonl', 0, 2], ['lines.json', 'jsonl', 'jsonl', 2, 2]],
    ]);
    const docs = documents(o);
    expect(docs.get('txt#0')!.ids).toEqual(textIds('Bearing temperature rose to 85 °C.'));
    expect(docs.get('notes#0')!.ids).toEqual(textIds('Valve closed.'));
    expect(docs.get('notes#2')!.ids).toEqual(textIds('Strainer cleaned.'));
    expect(docs.get('json#1')!.ids).toEqual(textIds('Pump restarted,\nnominal.'));
    expect(docs.get('json#3')!.ids).toEqual(textIds('Motor aligned.'));
    expect(docs.size).toBe(7);
  });

  it('ShareGPT and Alpaca records give exactly the tokens and loss mask of the same conversation as chat messages', async () => {
    const dir = join(tmp.dir, 'chatty');
    const chat = [
      { messages: [{ role: 'system', content: 'You maintain pumps.' }, { role: 'user', content: 'Why does the seal leak?' }, { role: 'assistant', content: 'Worn faces.' }] },
      { messages: [{ role: 'user', content: 'Torque for M12?\n\nGrade 8.8, dry.' }, { role: 'assistant', content: 'About 80 N·m.' }] },
    ];
    write(join(dir, 'chat.jsonl'), chat.map((c) => JSON.stringify(c)).join('\n'));
    write(join(dir, 'sharegpt.json'), JSON.stringify([
      { system: 'You maintain pumps.', conversations: [{ from: 'human', value: 'Why does the seal leak?' }, { from: 'gpt', value: 'Worn faces.' }] },
      { conversations: [{ from: 'human', value: 'Torque for M12?\n\nGrade 8.8, dry.' }, { from: 'gpt', value: 'About 80 N·m.' }] },
    ]));
    write(join(dir, 'alpaca.jsonl'), [
      { system: 'You maintain pumps.', instruction: 'Why does the seal leak?', input: '', output: 'Worn faces.' },
      { instruction: 'Torque for M12?', input: 'Grade 8.8, dry.', output: 'About 80 N·m.' },
    ].map((r) => JSON.stringify(r)).join('\n'));
    const o = out();
    const s = await prepareDataset(prepareOptions(tokPath, o, {
      sources: [src(join(dir, 'chat.jsonl'), { name: 'chat' }), src(join(dir, 'sharegpt.json'), { name: 'sharegpt' }), src(join(dir, 'alpaca.jsonl'), { name: 'alpaca' })],
      seq_len: 128, dedup: false,
    }));
    expect(s.manifest.sources.map((x) => x.files[0]!.format)).toEqual(['chat', 'sharegpt', 'alpaca']);
    const docs = documents(o);
    for (const k of [0, 1]) {
      const want = docs.get(`chat#${k}`)!;
      expect(want.mask.some((x) => x === 1)).toBe(true);
      expect(docs.get(`sharegpt#${k}`)).toEqual(want);
      expect(docs.get(`alpaca#${k}`)).toEqual(want);
    }
  });

  it('a declared format reads a file whatever its extension; under auto an unknown extension is refused, naming the file and what to do', async () => {
    const dir = join(tmp.dir, 'ext');
    write(join(dir, 'log.csv'), 'pump,state\nP1,ok\n');
    write(join(dir, 'records.data'), '{"instruction": "Check", "output": "Done."}\n');
    const refused = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(join(dir, 'log.csv'))] })).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(InputError);
    expect((refused as Error).message).toContain(`${join(dir, 'log.csv')}: unknown corpus file extension ".csv"`);
    expect((refused as Error).message).toContain('declare the source\'s `format`');
    const o = out();
    const s = await prepareDataset(prepareOptions(tokPath, o, { sources: [src(join(dir, 'log.csv'), { format: 'text', name: 'csv' }), src(join(dir, 'records.data'), { format: 'alpaca', name: 'data' })], seq_len: 64 }));
    expect(s.manifest.sources.map((x) => [x.files[0]!.container, x.files[0]!.format, x.documents])).toEqual([['text', 'text', 1], ['jsonl', 'alpaca', 1]]);
    expect(documents(o).get('csv#0')!.ids).toEqual(textIds('pump,state\nP1,ok\n'));
  });

  it.skipIf(skipPython)('Parquet (written by pyarrow, several row groups): text records and chat records, doc_ids are row indices', async () => {
    const dir = join(tmp.dir, 'parquet');
    write(join(dir, '.keep'), '');
    runPython([
      'import pyarrow as pa, pyarrow.parquet as pq, sys',
      'd = sys.argv[1]',
      'pq.write_table(pa.table({"text": [f"Work order {i}: pump checked." for i in range(25)], "id": list(range(25))}), d + "/orders.parquet", row_group_size=10)',
      'msgs = [[{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}] for i in range(3)]',
      'pq.write_table(pa.table({"messages": msgs}), d + "/chat.parquet")',
    ].join('\n'), [dir]);
    write(join(dir, 'chat.jsonl'), [0, 1, 2].map((i) => JSON.stringify({ messages: [{ role: 'user', content: `Q${i}?` }, { role: 'assistant', content: `A${i}.` }] })).join('\n'));
    const o = out();
    const s = await prepareDataset(prepareOptions(tokPath, o, {
      sources: [src(join(dir, 'orders.parquet'), { name: 'orders' }), src(join(dir, 'chat.parquet'), { name: 'pq-chat' }), src(join(dir, 'chat.jsonl'), { name: 'jsonl-chat' })],
      seq_len: 64, dedup: false,
    }));
    expect(s.manifest.sources.map((x) => [x.files[0]!.container, x.files[0]!.format, x.documents])).toEqual([['parquet', 'jsonl', 25], ['parquet', 'chat', 3], ['jsonl', 'chat', 3]]);
    const docs = documents(o);
    expect(docs.get('orders#17')!.ids).toEqual(textIds('Work order 17: pump checked.'));
    for (const k of [0, 1, 2]) expect(docs.get(`pq-chat#${k}`)).toEqual(docs.get(`jsonl-chat#${k}`));
  });
});

describe('bad records', () => {
  const lines = ['{"text": "Good one."}', '{"text": "broken', '{"text": "Good two."}', '{"body": "wrong field"}', '{"text": "Good three."}'].join('\n');

  it('up to data.max_bad_records per source are skipped, counted and listed as file:line in the manifest; the run says so', async () => {
    const dir = join(tmp.dir, 'bad-ok');
    const file = write(join(dir, 'd.jsonl'), lines);
    const logs: string[] = [];
    const sink = { log: (l: string) => logs.push(l), warn: (l: string) => logs.push(l), progress: () => ({ update: () => {}, stop: () => {} }) };
    const s = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(file, { name: 'orders' })], max_bad_records: 2, root: dir }), sink);
    const m = s.manifest.sources[0]!;
    expect([m.read, m.bad, m.documents]).toEqual([3, 2, 3]);
    // the manifest's paths are relative (to the recipe's folder), the log's absolute
    expect(m.bad_examples[0]).toMatch(/^d\.jsonl:2: malformed JSONL/);
    expect(m.bad_examples[1]).toBe('d.jsonl:4: field "text" must be a string (got nothing)');
    expect(logs.some((l) => l.includes(`${file}:4: field "text" must be a string`) && l.includes('skipped'))).toBe(true);
  });

  it('one more than the limit fails the run naming the record (file:line), the source and the limit; the default limit is 0', async () => {
    const dir = join(tmp.dir, 'bad-fail');
    const file = write(join(dir, 'd.jsonl'), lines);
    const over = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(file, { name: 'orders' })], max_bad_records: 1 })).catch((e: unknown) => e);
    expect(over).toBeInstanceOf(InputError);
    expect((over as Error).message).toBe(`${file}:4: field "text" must be a string (got nothing) (source "orders": 2 bad records, more than data.max_bad_records 1)`);
    const strict = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(file)] })).catch((e: unknown) => e);
    expect((strict as Error).message).toMatch(new RegExp(`^${file}:2: malformed JSONL .* more than data.max_bad_records 0\\)$`));
  });

  it('JSON array elements, ShareGPT roles and Alpaca fields are reported at the element\'s line', async () => {
    const dir = join(tmp.dir, 'bad-json');
    const arr = write(join(dir, 'sg.json'), '[\n  {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},\n  {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "?"}]}\n]\n');
    const e1 = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(arr)] })).catch((e: unknown) => e);
    expect((e1 as Error).message).toContain(`${arr}:3: conversations[1].from "bot" is not one of system, human, user, gpt, assistant`);
    const alp = write(join(dir, 'alpaca.jsonl'), '{"instruction": "Do it", "output": "Done"}\n{"instruction": "Do it", "output": 3}\n');
    const e2 = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(alp)] })).catch((e: unknown) => e);
    expect((e2 as Error).message).toContain(`${alp}:2: "output" must be a string (got 3)`);
    const notArray = write(join(dir, 'obj.json'), '{"data": [1, 2]}');
    const e3 = await prepareDataset(prepareOptions(tokPath, out(), { sources: [src(notArray)] })).catch((e: unknown) => e);
    expect((e3 as Error).message).toContain(`${notArray}`);
  });
});
