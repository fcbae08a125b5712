// A tiny end-to-end recipe for CLI tests: the `tiny` preset, 24 short maintenance notes, seq_len
// 64, three training steps, and the export line the test names.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Write `dir/corpus/notes.jsonl` and `dir/r.yaml` (output `dir/out`); returns the recipe path. */
export function writeTinyRun(dir: string, exportLine: string): string {
  mkdirSync(join(dir, 'corpus'), { recursive: true });
  const docs = Array.from({ length: 24 }, (_, i) => `Pump ${i} was inspected; the seal on impeller ${i % 5} showed wear of ${i * 0.1} mm and was replaced.`);
  writeFileSync(join(dir, 'corpus', 'notes.jsonl'), docs.map((text) => JSON.stringify({ text })).join('\n'));
  const file = join(dir, 'r.yaml');
  writeFileSync(file, [
    'name: tiny-run',
    'model: { preset: tiny }',
    'data:',
    '  sources: [{ path: corpus/*.jsonl }]',
    '  seq_len: 64',
    '  eval_fraction: 0.25',
    'train: { steps: 3, lr: 0.01, warmup_steps: 0, eval_every: 0, checkpoint_every: 0 }',
    exportLine,
    'output: out',
  ].join('\n'));
  return file;
}
