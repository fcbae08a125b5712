// Export settings are checked against the base model's shapes before anything runs: a GPTQ group
// size that does not divide every quantised linear's input fails `run` at once (before prepare,
// train and merge), naming the tensor and a group size that fits.
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { presetConfigJson } from '../../src/model/init.js';
import { parseConfig } from '../../src/model/config.js';
import { parseRecipe } from '../../src/recipe/load.js';
import { exportProblem } from '../../src/recipe/preflight.js';
import { capture } from '../cli/capture.js';
import { writeTinyRun } from '../cli/tiny-run.js';

vi.setConfig({ testTimeout: 120_000 });

const tiny = parseConfig(presetConfigJson('tiny', 'bf16'), 'tiny');
const recipe = (exportYaml: string) => parseRecipe(`model: { preset: tiny }\ndata: { sources: [{ path: a.txt }] }\nexport: ${exportYaml}\n`, '/r/r.yaml');

describe('export preflight', () => {
  it('a group size dividing every quantised linear passes; one that does not names the tensor and a size that fits', () => {
    expect(exportProblem(recipe('{ quantize: [gptq], group_size: 32 }'), tiny)).toBeNull();
    expect(exportProblem(recipe('{ quantize: [gguf-q4_0], group_size: 96 }'), tiny)).toBeNull(); // GGUF blocks are fixed
    const why = exportProblem(recipe('{ quantize: [gptq], group_size: 96 }'), tiny);
    expect(why).toMatch(/^export\.group_size 96 does not divide the input size \d+ of layers\.0\.attn\.\w+\.weight .*export\.group_size: \d+ divides every quantised linear's input$/);
    const fit = Number(/export\.group_size: (\d+) divides/.exec(why!)![1]);
    expect(exportProblem(recipe(`{ quantize: [gptq], group_size: ${fit} }`), tiny)).toBeNull();
  });

  it('`run` refuses such a recipe before preparing or training anything (exit 2)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-preflight-'));
    const file = writeTinyRun(dir, 'export: { merge: true, quantize: [gptq], group_size: 96 }');
    const r = await capture(() => main(['node', 'v4tune', 'run', file]));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/export\.group_size 96 does not divide .*; nothing was run/);
    expect(existsSync(join(dir, 'out', 'data'))).toBe(false);
    expect(existsSync(join(dir, 'out', 'checkpoints'))).toBe(false);
  });
});
