// Shared fixtures of the train tests: the tiny preset created once per file in a temp folder, a
// small generated corpus prepared into a dataset (seq_len 32), and a recipe over them.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareDataset } from '../../src/data/prepare.js';
import { initModel } from '../../src/model/init.js';
import { parseRecipe, type LoadedRecipe } from '../../src/recipe/load.js';
import type { Sink } from '../../src/sink.js';

export interface Fixture {
  dir: string;
  modelDir: string;
  dataDir: string;
  cleanup(): void;
}

/** A small corpus with learnable structure: pump-station log lines. */
export function corpus(docs: number): string[] {
  const units = ['P-1', 'P-2', 'P-3', 'P-4'];
  const states = ['ok', 'check seal', 'vibration high', 'locked out'];
  const out: string[] = [];
  for (let d = 0; d < docs; d++) {
    const lines: string[] = [];
    for (let i = 0; i < 3; i++) {
      const u = units[(d + i) % units.length]!;
      lines.push(`pump ${u} pressure ${(d % 5) + 2} bar: ${states[(d * 3 + i) % states.length]}.`);
    }
    out.push(lines.join('\n'));
  }
  return out;
}

/** The tiny preset (seed 7) and a dataset of `docs` generated documents, seq_len 32 (eval documents are hash-drawn: 12 at 0.3 give 11 train and 6 eval rows). */
export async function makeFixture(docs = 12, evalFraction = 0.3): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'v4tune-train-'));
  const modelDir = join(dir, 'run', 'model');
  await initModel({ preset: 'tiny', out: modelDir, seed: 7 });
  const src = join(dir, 'corpus');
  mkdirSync(src);
  corpus(docs).forEach((text, i) => writeFileSync(join(src, `doc-${String(i).padStart(3, '0')}.txt`), text));
  const dataDir = join(dir, 'run', 'data');
  await prepareDataset({
    tokenizer: join(modelDir, 'tokenizer.json'),
    sources: [{ path: join(src, '*.txt'), format: 'text', text_field: 'text' }],
    seq_len: 32, packing: true, eval_fraction: evalFraction, seed: 0, shard_rows: 4096, dedup: true, output: dataDir, workers: 1,
  });
  return { dir, modelDir, dataDir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A recipe over the fixture (model.path, data.output set), with `train`/`lora` overrides; one
 * kernel thread, as the test machines are shared.
 */
export function fixtureRecipe(fx: Fixture, output: string, train: Record<string, unknown> = {}, lora: Record<string, unknown> = {}): LoadedRecipe {
  const text = JSON.stringify({
    name: 'train-test',
    model: { path: fx.modelDir },
    data: { sources: [{ path: join(fx.dir, 'corpus', '*.txt'), format: 'text' }], seq_len: 32, eval_fraction: 0.2, output: fx.dataDir },
    lora: { r: 4, alpha: 8, ...lora },
    train: { backend: 'auto', threads: 1, steps: 4, lr: 1e-2, warmup_steps: 1, eval_every: 0, checkpoint_every: 0, ...train },
    output,
  });
  return parseRecipe(text, join(fx.dir, 'recipe.yaml'));
}

/** A sink that records its lines and calls `onProgress` on every progress update. */
export function quietContext(onProgress?: (done: number) => void): Sink & { lines: string[]; warnings: string[] } {
  const lines: string[] = [];
  const warnings: string[] = [];
  return {
    lines,
    warnings,
    log: (l) => { lines.push(l); },
    warn: (l) => { warnings.push(l); },
    progress: () => ({ update: (done) => onProgress?.(done), stop: () => {} }),
  };
}
