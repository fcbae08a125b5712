import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRecipe, parseRecipe } from '../../src/recipe/load.js';
import { nearest } from '../../src/nearest.js';
import { InputError } from '../../src/errors.js';
import { DEFAULT_TARGETS } from '../../src/recipe/schema.js';

const FILE = '/recipes/r.yaml';
const minimal = 'model: { preset: tiny }\ndata:\n  sources: [{ path: corpus/*.txt }]\n';

function errorOf(text: string): InputError {
  try {
    parseRecipe(text, FILE);
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return e as InputError;
  }
  throw new Error('expected the recipe to be refused');
}

describe('recipe', () => {
  it('fills every section with documented defaults', () => {
    const r = parseRecipe(minimal, FILE);
    expect(r.data.seq_len).toBe(1024);
    expect(r.data.packing).toBe(true);
    expect(r.lora.targets).toEqual(DEFAULT_TARGETS);
    expect(r.train.backend).toBe('auto');
    expect(r.export.quantize).toEqual([]);
    expect(r.name).toBe('r');
  });

  it('resolves relative paths against the recipe folder', () => {
    const r = parseRecipe(`${minimal}tokenizer: tok/tokenizer.json\noutput: ../out\n`, FILE);
    expect(r.data.sources[0]!.path).toBe('/recipes/corpus/*.txt');
    expect(r.tokenizer).toBe('/recipes/tok/tokenizer.json');
    expect(r.output).toBe('/out');
    expect(r.data.output).toBe('/out/data');
    expect(parseRecipe(minimal, FILE).output).toBe('/recipes/runs/r');
  });

  it('names the file, the dotted field and the bad value', () => {
    const e = errorOf(`${minimal}train: { lr: fast }\n`);
    expect(e.message).toBe('/recipes/r.yaml: train.lr must be a number (got "fast")');
    expect(e.exitCode).toBe(2);
    expect(errorOf(minimal.replace('corpus/*.txt', '""')).message).toContain('data.sources[0].path must not be empty');
    expect(errorOf(`${minimal}  seq_len: 1\n`).message).toContain('data.seq_len must be ≥ 2 (got 1)');
    expect(errorOf(`${minimal}train: { backend: gpu }\n`).message).toContain('train.backend must be one of "auto", "native", "tfjs", "ascend" (got "gpu")');
  });

  it('rejects unknown keys and suggests the nearest known one', () => {
    expect(errorOf(`${minimal}  seqlen: 512\n`).message).toBe('/recipes/r.yaml: unknown field data.seqlen: did you mean data.seq_len?');
    expect(errorOf(`${minimal}trian: {}\n`).message).toContain('unknown field trian: did you mean train?');
    // other tools' names for a field, far from it in edit distance
    expect(errorOf(`${minimal}lora: { rank: 8 }\n`).message).toBe('/recipes/r.yaml: unknown field lora.rank: did you mean lora.r? (`rank` is another tool\'s name for it)');
    expect(errorOf(`${minimal}train: { learning_rate: 0.001 }\n`).message).toContain('unknown field train.learning_rate: did you mean train.lr? (`learning_rate` is another tool\'s name for it)');
    expect(errorOf(`${minimal}train: { gradient_accumulation_steps: 4 }\n`).message).toContain('did you mean train.grad_accum?');
    expect(errorOf(`${minimal}train: { save_total_limit: 2 }\n`).message).toContain('did you mean train.keep_checkpoints?');
    expect(errorOf(`${minimal}train: { num_train_epochs: 2 }\n`).message).toContain('did you mean train.epochs?');
    // an alias of a field of another section is not suggested here; nothing near lists the fields
    expect(errorOf(`${minimal}train: { zzzzzz: 1 }\n`).message).toMatch(/unknown field train\.zzzzzz; known fields here: backend, steps, epochs, /);
    expect(errorOf(`${minimal.replace('path: corpus', 'pth: corpus')}`).message).toContain('did you mean data.sources[0].path?');
    expect(nearest('zzzzzz', ['lr', 'steps'])).toBeUndefined();
  });

  it('needs exactly one of model.path and model.preset', () => {
    expect(errorOf('model: {}\ndata: { sources: [{ path: a }] }\n').message).toContain('exactly one of model.path or model.preset (got neither)');
    expect(errorOf('model: { path: m, preset: tiny }\ndata: { sources: [{ path: a }] }\n').message).toContain('(got both)');
  });

  it('reports YAML syntax errors with their line', () => {
    expect(errorOf('model:\n  preset: tiny\n data: [\n').message).toMatch(/^\/recipes\/r\.yaml:\d+: not valid YAML/);
  });

  it('reports a missing recipe file by name', () => {
    expect(() => loadRecipe('/nonexistent/recipe.yaml')).toThrow('/nonexistent/recipe.yaml: cannot read the recipe (ENOENT)');
  });

  it('loads every bundled recipe', () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-recipe-'));
    writeFileSync(join(dir, 'r.yaml'), minimal);
    expect(loadRecipe(join(dir, 'r.yaml')).dir).toBe(dir);
    const q = loadRecipe(new URL('../../recipes/quickstart.yaml', import.meta.url).pathname);
    expect(q.model.preset).toBe('tiny');
  });
});
