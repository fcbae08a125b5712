// The tiny preset (FP8 attention, FP4 experts) loaded on both backends, for whole-model
// native-vs-tfjs tests: made once per describe block in a temp folder, removed after it.
import { afterAll, beforeAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initModel } from '../../../src/model/init.js';
import { loadModel } from '../../../src/model/load.js';
import type { V4Model } from '../../../src/model/v4/model.js';

export function tinyPresetPair(prefix: string): { nat: () => V4Model; tfm: () => V4Model } {
  let dir = '';
  let nat: V4Model | undefined;
  let tfm: V4Model | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
    await initModel({ preset: 'tiny', out: join(dir, 'm'), seed: 5 });
    nat = await loadModel(join(dir, 'm'), { backend: 'native' });
    tfm = await loadModel(join(dir, 'm'), { backend: 'tfjs' });
  }, 60_000);
  afterAll(() => {
    nat?.dispose();
    tfm?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return { nat: () => nat!, tfm: () => tfm! };
}
