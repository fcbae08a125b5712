// The suite's global setup (tmp-setup.ts): under `npm test`, every temporary file goes into the
// run's own folder, which the setup removes at the end; commands the tests start inherit it.
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';

const viaNpm = process.env.npm_lifecycle_event === 'test';

describe.skipIf(!viaNpm)('the test run\'s temporary folder (run through `npm test` to check it)', () => {
  it('os.tmpdir() is the run\'s own folder, and a child process gets the same', () => {
    expect(basename(tmpdir())).toMatch(/^v4tune-test-/);
    const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(require("os").tmpdir())'], { encoding: 'utf8' });
    expect(child.stdout).toBe(tmpdir());
  });
});
