// prepare end to end: Arrow shards that apache-arrow reads back, the manifest, splits, dedup,
// the bundled corpus, cache reuse and invalidation, and the inspect report.
import { describe, expect, it, beforeAll, afterAll, vi } from 'vitest';
import { readFileSync, readdirSync, statSync, copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tableFromIPC, Type, type List } from 'apache-arrow';
import { prepareDataset, type PrepareOptions } from '../../src/data/prepare.js';
import { openDataset } from '../../src/data/dataset.js';
import { shardToIPC } from '../../src/data/arrow.js';
import { inspectDataset, renderDatasetSummary } from '../../src/data/inspect.js';
import { loadTokenizer, sha256Hex, type TextTokenizer } from '../../src/data/tokenizer.js';
import { InputError } from '../../src/errors.js';
import { BUNDLED, embeddedTokenizerFile, prepareOptions, tempDir, write } from './helpers.js';
import { tinySentencePieceModel } from './sp-model.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const tmp = tempDir();
let tokPath: string;
let tok: TextTokenizer;
beforeAll(async () => {
  tokPath = embeddedTokenizerFile(join(tmp.dir, 'tok'));
  tok = await loadTokenizer(tokPath);
});
afterAll(() => tmp.cleanup());

function corpus(name: string): string {
  const dir = join(tmp.dir, name);
  write(join(dir, 'a.txt'), 'The pump ran hot.\n');
  write(join(dir, 'b.txt'), 'Check the seal. '.repeat(30));
  write(join(dir, 'copy-of-a.txt'), 'The pump ran hot.\n');
  write(join(dir, 'notes.jsonl'), ['{"body": "Valve closed."}', '', '{"body": "   "}', '{"body": "Strainer cleaned twice."}'].join('\n'));
  write(join(dir, 'chat.jsonl'), `${JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] })}\n`);
  return dir;
}

function sources(dir: string): PrepareOptions['sources'] {
  return [
    { path: join(dir, '*.txt'), format: 'auto', text_field: 'text' },
    { path: join(dir, 'notes.jsonl'), format: 'jsonl', text_field: 'body' },
    { path: join(dir, 'chat.jsonl'), format: 'auto', text_field: 'text' },
  ];
}

describe('prepare', () => {
  it('writes Arrow IPC shards that apache-arrow reads back with list<int32>, list<uint8>, list<uint16> columns holding every document', async () => {
    const dir = corpus('arrow');
    const out = join(tmp.dir, 'arrow-out');
    const s = await prepareDataset(prepareOptions(tokPath, out, { sources: sources(dir), seq_len: 32, shard_rows: 2 }));
    expect(s.reused).toBe(false);
    const m = s.manifest;
    expect(m.documents).toEqual({ read: 6, empty: 1, duplicates: 1, kept: 5, bad: 0, dropped: 0 });
    expect(m.splits.train.shards.length).toBe(Math.ceil(m.splits.train.rows / 2));
    const files = readdirSync(out).sort();
    expect(files).toEqual(['.v4tune-output.json', 'README.md', 'dataset_dict.json', 'eval', 'manifest.json', 'tokenizer.json', 'tokenizer_config.json', 'train', ...m.splits.train.shards].sort());
    expect(sha256Hex(readFileSync(join(out, 'tokenizer.json')))).toBe(m.tokenizer.sha256);
    expect(m.tokenizer.encoder).toBe('v4tune-bpe');

    const allIds: number[] = [];
    let rows = 0;
    let loss = 0;
    for (const shard of m.splits.train.shards) {
      const table = tableFromIPC(readFileSync(join(out, shard)));
      const types = ['input_ids', 'loss_mask', 'segment_ids'].map((c) => {
        const t = table.schema.fields.find((f) => f.name === c)!.type as List;
        return [t.typeId, t.children[0]!.type.typeId, (t.children[0]!.type as { bitWidth?: number }).bitWidth, (t.children[0]!.type as { isSigned?: boolean }).isSigned];
      });
      expect(types).toEqual([[Type.List, Type.Int, 32, true], [Type.List, Type.Int, 8, false], [Type.List, Type.Int, 16, false]]);
      for (let r = 0; r < table.numRows; r++) {
        const ids = [...(table.getChild('input_ids')!.get(r) as { toArray(): Int32Array }).toArray()];
        const mask = [...(table.getChild('loss_mask')!.get(r) as { toArray(): Uint8Array }).toArray()];
        const seg = [...(table.getChild('segment_ids')!.get(r) as { toArray(): Uint16Array }).toArray()];
        expect(ids.length).toBe(32);
        expect(mask.length).toBe(32);
        expect(seg[0]).toBe(0);
        allIds.push(...ids.filter((_, i) => !(ids[i] === tok.eosId && mask[i] === 0 && seg[i] === seg[31] && seg[31]! > 0)));
        loss += mask.reduce((a, b) => a + b, 0);
        rows++;
      }
    }
    expect(rows).toBe(m.rows);
    expect(loss).toBe(m.loss_tokens);
    const expected = [
      ...tok.encode('The pump ran hot.\n'), ...tok.encode('Check the seal. '.repeat(30)),
      ...tok.encode('Valve closed.'), ...tok.encode('Strainer cleaned twice.'), ...tok.encode('Hi'), ...tok.encode('Hello!'),
    ];
    // Every body token appears exactly as often as in the documents (bos/eos/chat markers aside).
    const count = (xs: number[]): Map<number, number> => { const c = new Map<number, number>(); for (const x of xs) c.set(x, (c.get(x) ?? 0) + 1); return c; };
    const have = count(allIds);
    for (const [id, n] of count(expected)) expect([id, have.get(id)]).toEqual([id, n]);
    expect(m.tokens).toBe(allIds.length);
  });

  it('splits by document with a seed: the same seed gives the same split, another seed another one, eval holds about eval_fraction of the documents', async () => {
    const dir = join(tmp.dir, 'split');
    write(join(dir, 'd.jsonl'), Array.from({ length: 400 }, (_, i) => JSON.stringify({ text: `Work order ${i}: pump ${i % 7} checked.` })).join('\n'));
    const run = async (seed: number, name: string) => (await prepareDataset(prepareOptions(tokPath, join(tmp.dir, name), {
      sources: [{ path: join(dir, 'd.jsonl'), format: 'auto', text_field: 'text' }], eval_fraction: 0.25, seed,
    }))).manifest;
    const a = await run(7, 'split-a');
    const b = await run(7, 'split-b');
    const c = await run(8, 'split-c');
    expect(a.splits.eval.documents).toBe(b.splits.eval.documents);
    expect(readFileSync(join(tmp.dir, 'split-a', a.splits.eval.shards[0]!))).toEqual(readFileSync(join(tmp.dir, 'split-b', b.splits.eval.shards[0]!)));
    expect(readFileSync(join(tmp.dir, 'split-a', a.splits.eval.shards[0]!))).not.toEqual(readFileSync(join(tmp.dir, 'split-c', c.splits.eval.shards[0]!)));
    // a seeded draw per document: binomial(400, 0.25) has sd 8.7; 4 sd either side
    expect(Math.abs(a.splits.eval.documents - 100)).toBeLessThan(35);
    expect(a.splits.train.documents + a.splits.eval.documents).toBe(400);
  });

  it('prepares the bundled corpus: every document lands in train or eval, rows read back through openDataset, inspect counts every segment', async () => {
    const out = join(tmp.dir, 'bundled-out');
    const s = await prepareDataset(prepareOptions(tokPath, out, {
      sources: [{ path: join(BUNDLED, '*.txt'), format: 'auto', text_field: 'text' }, { path: join(BUNDLED, '*.jsonl'), format: 'auto', text_field: 'text' }],
      seq_len: 256, eval_fraction: 0.1, seed: 3, vocabSize: 129280,
    }));
    const m = s.manifest;
    expect(m.sources.map((x) => x.files.map((f) => [f.path.split('/').at(-1), f.format, f.records]))).toEqual([
      [['procedure-lockout.txt', 'text', 1], ['procedure-seal.txt', 'text', 1], ['procedure-vibration.txt', 'text', 1]],
      [['qa-chat.jsonl', 'chat', 450], ['workorders.jsonl', 'jsonl', 600]],
    ]);
    expect(m.sources.map((x) => x.read)).toEqual([3, 1050]);
    expect(m.sources.reduce((a, x) => a + x.documents, 0)).toBe(m.documents.kept);
    expect(m.documents.kept + m.documents.duplicates).toBe(1053);
    expect(m.splits.train.documents + m.splits.eval.documents).toBe(m.documents.kept);
    // binomial(kept, 0.1): sd about 10; 4 sd either side
    expect(Math.abs(m.splits.eval.documents - m.documents.kept * 0.1)).toBeLessThan(40);
    expect(m.loss_tokens).toBeLessThan(m.tokens);
    // Whole documents of ~100-300 tokens in rows of 256: best-fit decreasing reaches about 75%.
    expect(m.packing_efficiency).toBeGreaterThan(0.7);
    const ds = openDataset(out);
    let rows = 0;
    let tokens = 0;
    for (const split of ['train', 'eval'] as const) {
      for (const row of ds.rows(split)) {
        rows++;
        expect(row.segments.reduce((a, b) => a + b, 0)).toBe(256);
        tokens += row.input_ids.length;
      }
    }
    expect(rows).toBe(m.rows);
    expect(tokens - m.splits.train.pad_tokens - m.splits.eval.pad_tokens).toBe(m.tokens);
    const report = await inspectDataset(out, { rows: 2 });
    expect(report.histogram.reduce((a, b) => a + b.count, 0)).toBe(m.splits.train.segments + m.splits.eval.segments);
    const text = renderDatasetSummary(report, { color: false });
    expect(text).toContain('packing efficiency');
    expect(text).toContain('── train row 1 ──');
  });

  it('inspect decodes rows back to text with the loss mask visible (no-loss spans in ⟦ ⟧, padding marked)', async () => {
    const dir = join(tmp.dir, 'inspect');
    write(join(dir, 'chat.jsonl'), `${JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] })}\n`);
    const out = join(tmp.dir, 'inspect-out');
    await prepareDataset(prepareOptions(tokPath, out, { sources: [{ path: join(dir, 'chat.jsonl'), format: 'auto', text_field: 'text' }], seq_len: 12, root: dir }));
    const report = await inspectDataset(out, { rows: 1 });
    expect(report.rows[0]!.segments.map((g) => g.spans.map((sp) => [sp.text, sp.loss]))).toEqual([
      [['<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>', false], ['</think>Hello!<｜end▁of▁sentence｜>', true]],
      [['<｜end▁of▁sentence｜> × 4', false]],
    ]);
    const text = renderDatasetSummary(report, { color: false });
    expect(text).toContain('[segment 0, 8 tokens, source "chat.jsonl" doc 0 (chat.jsonl:1)] ⟦<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>⟧</think>Hello!<｜end▁of▁sentence｜>');
    expect(text).toContain('[segment 1, padding, 4 tokens]');
    expect(renderDatasetSummary(report, { color: true })).toContain('\x1b[2m<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>\x1b[22m</think>');
  });

  it('works with a SentencePiece .model: copies it as tokenizer.model, and rows decode back through the dataset\'s own copy', async () => {
    const dir = join(tmp.dir, 'sp');
    const model = write(join(dir, 'sp.model'), tinySentencePieceModel());
    write(join(dir, 'a.txt'), 'the seal leaks.');
    const out = join(tmp.dir, 'sp-out');
    const s = await prepareDataset(prepareOptions(model, out, { sources: [{ path: join(dir, 'a.txt'), format: 'auto', text_field: 'text' }], seq_len: 32, packing: false }));
    expect(s.manifest.tokenizer).toMatchObject({ kind: 'sentencepiece', file: 'tokenizer.model', vocab_size: 34, bos_id: 1, eos_id: 2 });
    const ds = openDataset(out);
    const sp = await ds.tokenizer();
    const [row] = [...ds.rows('train')];
    const n = row!.segments[0]!;
    expect(row!.input_ids[0]).toBe(1);
    expect(row!.input_ids[n - 1]).toBe(2);
    expect(sp.decode(row!.input_ids.subarray(1, n - 1))).toBe('the seal leaks.');
    expect([...row!.input_ids.subarray(n)].every((t) => t === 2)).toBe(true);
    expect([...row!.loss_mask.subarray(n)].every((m) => m === 0)).toBe(true);
  });

  it('refuses a tokenizer whose ids do not fit the model\'s vocab_size', async () => {
    const dir = corpus('vocab');
    const err = await prepareDataset(prepareOptions(tokPath, join(tmp.dir, 'vocab-out'), { sources: sources(dir), vocabSize: 128000 })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/^.*tokenizer.json: the tokenizer.s ids go up to 128822 \(token "<\/think>"\), which does not fit the model.s vocab_size 128000$/);
  });
});

describe('prepare cache', () => {
  it('reuses the output for unchanged inputs and says so; a changed source, option or tokenizer rebuilds it', async () => {
    const dir = corpus('cache');
    const out = join(tmp.dir, 'cache-out');
    const opts = prepareOptions(tokPath, out, { sources: sources(dir), seq_len: 32 });
    const lines: string[] = [];
    const sink = { log: (l: string) => lines.push(l), warn: (l: string) => lines.push(l), progress: () => ({ update: () => {}, stop: () => {} }) };
    const first = await prepareDataset(opts, sink);
    const mtime = statSync(join(out, 'manifest.json')).mtimeMs;

    const again = await prepareDataset(opts, sink);
    expect(again.reused).toBe(true);
    expect(again.manifest.cache_key).toBe(first.manifest.cache_key);
    expect(statSync(join(out, 'manifest.json')).mtimeMs).toBe(mtime);
    expect(lines.at(-1)).toMatch(/up to date.*reusing/);

    writeFileSync(join(dir, 'a.txt'), 'The pump ran cold.\n');
    const changedSource = await prepareDataset(opts, sink);
    expect(changedSource.reused).toBe(false);
    expect(changedSource.manifest.cache_key).not.toBe(first.manifest.cache_key);

    const changedOption = await prepareDataset({ ...opts, seq_len: 48 }, sink);
    expect(changedOption.reused).toBe(false);
    expect(changedOption.manifest.seq_len).toBe(48);

    const tok2 = join(tmp.dir, 'tok2', 'tokenizer.json');
    write(tok2, `${readFileSync(tokPath, 'utf8')}\n`);
    copyFileSync(join(tmp.dir, 'tok', 'tokenizer_config.json'), join(tmp.dir, 'tok2', 'tokenizer_config.json'));
    const changedTok = await prepareDataset({ ...opts, seq_len: 48, tokenizer: tok2 }, sink);
    expect(changedTok.reused).toBe(false);
    expect(changedTok.manifest.tokenizer.sha256).not.toBe(changedOption.manifest.tokenizer.sha256);
    expect(readdirSync(tmp.dir).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
  });
});

describe('datasets from format version 1', () => {
  it('still open (rows without provenance) and inspect (old source entries, decoded rows); --source says to prepare again', async () => {
    const dir = join(tmp.dir, 'v1');
    const ids = Int32Array.from([tok.bosId, ...tok.encode('Old row.'), tok.eosId, tok.eosId, tok.eosId]);
    const L = ids.length;
    const seg = Uint16Array.from(ids, (_, i) => (i < L - 2 ? 0 : 1));
    write(join(dir, 'train-00000.arrow'), shardToIPC(ids, new Uint8Array(L).fill(1).map((x, i) => (i < L - 2 ? x : 0)), seg, L, 0, 1));
    copyFileSync(tokPath, join(dir, 'tokenizer.json'));
    const split = (rows: number, shards: string[]) => ({ documents: rows, rows, tokens: L - 2, loss_tokens: L - 2, pad_tokens: 2, segments: rows, chunked_documents: 0, packing_efficiency: 0.5, shards });
    write(join(dir, 'manifest.json'), JSON.stringify({
      format: 'v4tune-dataset', format_version: 1, v4tune_version: '0.1.0', cache_key: 'x', created_at: '2026-12-01T00:00:00Z',
      tokenizer: { kind: 'hf', file: 'tokenizer.json', source: '/old/tokenizer.json', sha256: 'ab', vocab_size: tok.vocabSize, bos_id: tok.bosId, eos_id: tok.eosId },
      seq_len: L, packing: true, eval_fraction: 0, seed: 0, shard_rows: 4096, dedup: true,
      sources: [{ path: '/old/a.txt', pattern: '/old/*.txt', format: 'text', text_field: 'text', bytes: 8, sha256: 'cd', documents: 1 }],
      documents: { read: 1, empty: 0, duplicates: 0, kept: 1 },
      splits: { train: split(1, ['train-00000.arrow']), eval: split(0, []) }, rows: 1, tokens: L - 2, loss_tokens: L - 2, packing_efficiency: 0.5,
    }));
    const [row] = [...openDataset(dir).rows('train')];
    expect([...row!.input_ids]).toEqual([...ids]);
    expect(row!.source_ids).toBeUndefined();
    const report = await inspectDataset(dir, { rows: 1 });
    const text = renderDatasetSummary(report, { color: false });
    expect(text).toContain('source /old/a.txt (text, 8 bytes, 1 docs)');
    expect(text).toContain(`[segment 0, ${L - 2} tokens] <｜begin▁of▁sentence｜>Old row.<｜end▁of▁sentence｜>`);
    await expect(inspectDataset(dir, { source: '/old/a.txt' })).rejects.toThrow('has no source_ids column');
  });
});

describe('the HF datasets layout', () => {
  it('sits beside the shards by default (dataset_dict.json, a folder per split with state.json listing its stream files) and is left out with hf_datasets: false', async () => {
    const dir = corpus('hf');
    const on = await prepareDataset(prepareOptions(tokPath, join(tmp.dir, 'hf-on'), { sources: sources(dir), seq_len: 32, shard_rows: 2 }));
    const state = JSON.parse(readFileSync(join(on.output, 'train', 'state.json'), 'utf8')) as { _data_files: { filename: string }[]; _split: string };
    expect(state._data_files.map((f) => f.filename)).toEqual(on.manifest.splits.train.hf_files);
    expect(state._data_files).toHaveLength(on.manifest.splits.train.shards.length);
    expect(state._split).toBe('train');
    expect(JSON.parse(readFileSync(join(on.output, 'dataset_dict.json'), 'utf8'))).toEqual({ splits: ['train', 'eval'] });
    const off = await prepareDataset(prepareOptions(tokPath, join(tmp.dir, 'hf-off'), { sources: sources(dir), seq_len: 32, hf_datasets: false }));
    expect(readdirSync(off.output).sort()).toEqual(['.v4tune-output.json', 'README.md', 'manifest.json', 'tokenizer.json', 'tokenizer_config.json', ...off.manifest.splits.train.shards].sort());
    expect(off.manifest.splits.train.hf_files).toBeUndefined();
  });
});
