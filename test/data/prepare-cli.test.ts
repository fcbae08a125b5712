// `v4tune prepare <recipe>`: the verb over a recipe file — JSON summary, reuse on a second run,
// the tokenizer taken from the recipe or else the model folder, exit 2 on bad input.
import { describe, expect, it, beforeAll, afterAll, afterEach, vi } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cli } from '../cli/capture.js';
import { embeddedTokenizerFile, tempDir, write } from './helpers.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const tmp = tempDir();
let tokPath: string;
beforeAll(() => { tokPath = embeddedTokenizerFile(join(tmp.dir, 'tok')); });
afterAll(() => tmp.cleanup());
afterEach(() => { process.exitCode = undefined; });


function recipe(name: string, body: string): string {
  const dir = join(tmp.dir, name);
  write(join(dir, 'corpus', 'a.txt'), 'Replace the wear ring when the clearance doubles.\n');
  write(join(dir, 'corpus', 'b.jsonl'), `${JSON.stringify({ messages: [{ role: 'user', content: 'Why?' }, { role: 'assistant', content: 'Wear.' }] })}\n`);
  return write(join(dir, 'recipe.yaml'), body);
}

describe('v4tune prepare', () => {
  it('prepares the recipe\'s corpus with --json, then reuses it on the second run', async () => {
    const file = recipe('ok', `model: { preset: tiny }\ntokenizer: ${tokPath}\ndata:\n  sources: [{ path: corpus/* }]\n  seq_len: 64\n  eval_fraction: 0\noutput: run\n`);
    const first = await cli('--json', 'prepare', file);
    expect(first.code).toBe(0);
    const summary = JSON.parse(first.out) as { ok: boolean; reused: boolean; output: string; rows: number; documents: { kept: number } };
    expect(summary).toMatchObject({ ok: true, reused: false, output: join(tmp.dir, 'ok', 'run', 'data'), documents: { kept: 2 } });
    expect(summary.rows).toBe(1);
    const second = await cli('--json', 'prepare', file);
    expect(JSON.parse(second.out)).toMatchObject({ ok: true, reused: true });
    expect(second.err).toMatch(/up to date.*reusing/);
  });

  it('takes the model folder\'s tokenizer.json when the recipe names none', async () => {
    const file = recipe('model-tok', 'model: { path: model }\ndata:\n  sources: [{ path: corpus/*.txt }]\n  seq_len: 64\noutput: run\n');
    embeddedTokenizerFile(join(tmp.dir, 'model-tok', 'model'));
    write(join(tmp.dir, 'model-tok', 'model', 'config.json'), JSON.stringify({ vocab_size: 129280 }));
    const r = await cli('--json', 'prepare', file);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ tokenizer: { source: join('model', 'tokenizer.json'), kind: 'hf' } });
  });

  it('a preset recipe without a tokenizer uses the preset\'s embedded tokenizer without creating the checkpoint', async () => {
    const file = recipe('preset-tok', 'model: { preset: tiny }\ndata:\n  sources: [{ path: corpus/*.txt }]\n  seq_len: 64\noutput: run\n');
    const r = await cli('--json', 'prepare', file);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ tokenizer: { source: 'deepseek-v4 (the embedded DeepSeek V4 tokenizer)' } });
    expect(existsSync(join(tmp.dir, 'preset-tok', 'run', 'model'))).toBe(false);
  });

  it('a data-only recipe (no model) prepares with `tokenizer: deepseek-v4`; the train stage then says it needs a model', async () => {
    const file = recipe('data-only', 'tokenizer: deepseek-v4\ndata:\n  sources: [{ path: corpus/* }]\n  seq_len: 64\n  eval_fraction: 0\noutput: run\n');
    const r = await cli('--json', 'prepare', file);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ ok: true, documents: { kept: 2 } });
    const t = await cli('train', file);
    expect(t.code).toBe(2);
    expect(t.err).toContain('the recipe has no model section');
  });

  it('exits 2 with a hint that works when there is no tokenizer: no model at all, or a model folder without one', async () => {
    const noModel = recipe('no-tok', 'data:\n  sources: [{ path: corpus/*.txt }]\noutput: run\n');
    const r = await cli('prepare', noModel);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`${noModel}: no tokenizer: the recipe has neither \`tokenizer\` nor a model; set \`tokenizer:\` in the recipe to a tokenizer.json or SentencePiece .model file, or to \`deepseek-v4\``);
    // following the hint works
    write(noModel, 'tokenizer: deepseek-v4\ndata:\n  sources: [{ path: corpus/*.txt }]\noutput: run\n');
    expect((await cli('prepare', noModel)).code).toBe(0);
    const pathModel = recipe('no-tok-path', 'model: { path: model }\ndata:\n  sources: [{ path: corpus/*.txt }]\noutput: run\n');
    const p = await cli('prepare', pathModel);
    expect(p.code).toBe(2);
    expect(p.err).toContain(`no tokenizer: the recipe has no \`tokenizer\` and ${join(tmp.dir, 'no-tok-path', 'model', 'tokenizer.json')} does not exist; set \`tokenizer:\``);
  });

  it('bounds data.seq_len by the model\'s max_position_embeddings and a hard cap, data.shard_rows by the Arrow shard size, data.workers by the cores, naming field and limit', async () => {
    const big = recipe('seq-bound', 'model: { preset: tiny }\ndata:\n  sources: [{ path: corpus/*.txt }]\n  seq_len: 8192\noutput: run\n');
    const r = await cli('prepare', big);
    expect(r.code).toBe(2);
    expect(r.err).toContain('data.seq_len 8192 is larger than the model\'s max_position_embeddings 4096');
    const huge = recipe('seq-cap', 'tokenizer: deepseek-v4\ndata:\n  sources: [{ path: corpus/*.txt }]\n  seq_len: 2000000\noutput: run\n');
    const h = await cli('prepare', huge);
    expect(h.code).toBe(2);
    expect(h.err).toContain('data.seq_len must be ≤ 1048576 (got 2000000)');
    const rows = recipe('rows-bound', 'tokenizer: deepseek-v4\ndata:\n  sources: [{ path: corpus/*.txt }]\n  seq_len: 1048576\n  shard_rows: 4096\noutput: run\n');
    const s = await cli('prepare', rows);
    expect(s.code).toBe(2);
    expect(s.err).toContain('data.shard_rows 4096 × data.seq_len 1048576 tokens do not fit one Arrow shard (at most 2147483647 tokens): data.shard_rows must be at most 2047');
    const many = recipe('rows-cap', 'tokenizer: deepseek-v4\ndata:\n  sources: [{ path: corpus/*.txt }]\n  shard_rows: 10000000\noutput: run\n');
    expect((await cli('prepare', many)).err).toContain('data.shard_rows must be ≤ 1000000 (got 10000000)');
    const workers = recipe('workers-cap', 'tokenizer: deepseek-v4\ndata:\n  sources: [{ path: corpus/*.txt }]\n  workers: 100000\noutput: run\n');
    const w = await cli('prepare', workers);
    expect(w.code).toBe(2);
    expect(w.err).toMatch(/data\.workers 100000 is more than the limit \d+ \(4 per core\)/);
  });

  it('exits 2 when the model\'s vocab_size is smaller than the tokenizer\'s ids', async () => {
    const file = recipe('small-vocab', 'model: { path: model }\ndata:\n  sources: [{ path: corpus/*.txt }]\noutput: run\n');
    embeddedTokenizerFile(join(tmp.dir, 'small-vocab', 'model'));
    write(join(tmp.dir, 'small-vocab', 'model', 'config.json'), JSON.stringify({ vocab_size: 1000 }));
    const r = await cli('prepare', file);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/does not fit the model's vocab_size 1000/);
  });

  it('exits 2 on a corpus glob that matches nothing, with one line on stderr', async () => {
    const file = recipe('nomatch', `model: { preset: tiny }\ntokenizer: ${tokPath}\ndata:\n  sources: [{ path: nothing/*.txt }]\noutput: run\n`);
    const r = await cli('prepare', file);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain('nothing/*.txt: the glob matches no files');
  });

  it('inspect picks rows with --row, --sample/--seed and --source, and refuses two ways of picking at once', async () => {
    const file = recipe('inspect', 'tokenizer: deepseek-v4\ndata:\n  sources: [{ path: corpus/a.txt, name: manual }, { path: corpus/b.jsonl, name: chats }]\n  seq_len: 32\n  packing: false\n  eval_fraction: 0\noutput: run\n');
    expect((await cli('prepare', file)).code).toBe(0);
    const data = join(tmp.dir, 'inspect', 'run', 'data');
    const one = await cli('--json', 'inspect', data, '--source', 'chats', '--sample', '1', '--seed', '2');
    expect(one.code, one.err).toBe(0);
    const s = JSON.parse(one.out) as { rows: { segments: { source?: string; location?: string }[] }[]; matched: number };
    expect(s.matched).toBe(1);
    expect(s.rows[0]!.segments[0]).toMatchObject({ source: 'chats', location: join('corpus', 'b.jsonl:1') });
    const row = await cli('inspect', data, '--row', '0', '--split', 'train');
    expect(row.code).toBe(0);
    expect(row.err + row.out).toContain('── train row 0 ──');
    const both = await cli('inspect', data, '--row', '0', '--sample', '2');
    expect(both.code).toBe(2);
    expect(both.err).toContain('--rows, --row and --sample choose rows in different ways: give one of them');
  });
});
