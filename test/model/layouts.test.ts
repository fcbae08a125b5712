// Both checkpoint layouts (official names, and transformers names with stacked experts) load to
// the same model: identical logits on the reference fixture.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Checkpoint, copyCheckpoint } from '../../src/model/checkpoint.js';
import { loadModel } from '../../src/model/load.js';
import { FIXTURE, cases, readI32 } from './fixture.js';

describe('checkpoint layouts', () => {
  it('the transformers layout of the fixture gives bit-identical logits to the official one', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'v4tune-layout-')), 'hf');
    const src = await Checkpoint.open(join(FIXTURE, 'checkpoint'));
    try {
      await copyCheckpoint(src, out, { layout: 'transformers' });
    } finally {
      await src.close();
    }
    const hf = await Checkpoint.open(out);
    expect(hf.layout).toBe('transformers');
    await hf.close();
    expect(readdirSync(out).some((f) => f.endsWith('.safetensors'))).toBe(true);

    const c = cases().cases.find((x) => x.name === 't17')!;
    const ids = readI32(c.ids);
    const official = await loadModel(join(FIXTURE, 'checkpoint'), { backend: 'tfjs' });
    const transformers = await loadModel(out, { backend: 'tfjs' });
    try {
      const a = await official.logits(ids);
      const b = await transformers.logits(ids);
      expect(b).toEqual(a);
    } finally {
      official.dispose();
      transformers.dispose();
    }
  });
});
