// `v4tune prepare <recipe>`: the verb over a recipe file — JSON summary, reuse on a second run,
// the tokenizer taken from the recipe or else the model folder, exit 2 on bad input.
import { describe, expect, it, beforeAll, afterAll, afterEach, vi } from 'vitest';
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
    expect(JSON.parse(r.out)).toMatchObject({ tokenizer: { source: join(tmp.dir, 'model-tok', 'model', 'tokenizer.json'), kind: 'hf' } });
  });

  it('exits 2 naming both places when there is neither a recipe tokenizer nor a model folder tokenizer', async () => {
    const file = recipe('no-tok', 'model: { preset: tiny }\ndata:\n  sources: [{ path: corpus/*.txt }]\noutput: run\n');
    const r = await cli('prepare', file);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`${file}: no tokenizer: the recipe has no \`tokenizer\` and ${join(tmp.dir, 'no-tok', 'run', 'model', 'tokenizer.json')} does not exist`);
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
});
