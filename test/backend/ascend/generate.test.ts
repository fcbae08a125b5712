// `v4tune generate --backend ascend`: the value is accepted; where CANN is absent it fails saying
// what is missing; on the stand-in runtime (the fake libascendcl.so under ASCEND_HOME_PATH) the
// model's ops go to the ascend backend.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { initModel } from '../../../src/model/init.js';
import { cli } from '../../cli/capture.js';
import { tempDir } from '../../data/helpers.js';
import { skipNative } from '../native/helpers.js';
import { fakeAscendHome, onDevice } from './harness.js';

vi.setConfig({ testTimeout: 600_000, hookTimeout: 600_000 });

const tmp = tempDir('v4tune-ascend-generate-');
const model = join(tmp.dir, 'model');
beforeAll(async () => {
  await initModel({ preset: 'tiny', out: model, seed: 5 });
});
afterAll(() => tmp.cleanup());

const generate = (backend: string) => cli('--json', 'generate', '--model', model, '--prompt', 'The pump', '--max-new-tokens', '6', '--backend', backend);

describe('generate --backend ascend', () => {
  it('an unknown backend names ascend among the values', async () => {
    const r = await generate('npu');
    expect(r.code).toBe(2);
    expect(r.err).toContain('--backend: must be auto, native, tfjs or ascend (got npu)');
  });

  // first, before the stand-in runtime is put on the path (the addon keeps a CANN that loaded)
  it.skipIf(skipNative || onDevice)('without CANN it fails saying what is missing', async () => {
    const r = await generate('ascend');
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/backend ascend is not available: the CANN runtime \(libascendcl\.so\) is not installed/);
  });

  // No preset fits the Ascend kernels' tiles end to end (tiny's experts are 32 wide, small's
  // output projection has 4 groups): generation on the device is not tested here; that the option
  // reaches the ascend backend is (its refusal names the tile limit).
  it.skipIf(skipNative || onDevice)('on the stand-in runtime it runs the ascend backend, which refuses the tiny model\'s 32-wide experts by name', async () => {
    const home = fakeAscendHome();
    process.env.ASCEND_HOME_PATH = home;
    process.env.V4TUNE_ASCEND_KERNELS = join(home, 'lib64', 'libascendcl.so');
    const r = await generate('ascend');
    expect(r.code).not.toBe(0);
    expect(r.err).toContain('ascend: w2 columns (32) must be a multiple of 64');
  });
});
