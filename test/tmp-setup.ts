// vitest's global setup (package.json `test`): every temporary folder a run makes goes into one
// folder, removed when the run ends. The suites, the commands they start (v4tune, mpirun, Python)
// and v4tune itself make theirs under os.tmpdir() / tempfile, which read TMPDIR. Before this, a
// run left about 25 folders and 0.9 GB in /tmp. V4TUNE_KEEP_TEST_TMP=1 keeps the folder (its path
// is printed) to look at what a test wrote.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const outer = tmpdir();
  const dir = mkdtempSync(join(outer, 'v4tune-test-'));
  // caches meant to outlive a run (the Ascend harness's compiled objects) stay in the outer one
  process.env.V4TUNE_TEST_CACHE_DIR ??= outer;
  process.env.TMPDIR = dir;
  return () => {
    if (process.env.V4TUNE_KEEP_TEST_TMP) console.log(`test temporary files kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  };
}
