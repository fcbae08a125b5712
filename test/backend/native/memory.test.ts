// The addon keeps freed memory in the process (glibc: no mmap for large blocks, no heap trim), so
// a training step's activations reuse the pages the step before freed instead of faulting fresh
// zeroed ones in; V4TUNE_MALLOC=system leaves glibc's policy alone. Each case runs in a child
// process (the policy is set when the addon loads) without glibc tunables of its own: 256 MB
// allocated and filled, dropped and collected, then allocated and filled again; the second fill's
// page faults are counted.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { ADDON_PATH } from '../../../src/backend/native/addon.js';
import { addon, skipNative } from './helpers.js';

const child = `
const nat = require(${JSON.stringify(ADDON_PATH)});
(async () => {
  const n = 64 << 20;
  let a = new Float32Array(n);
  a.fill(1);
  a = null;
  for (let i = 0; i < 3; i++) {
    globalThis.gc();
    await new Promise((r) => setTimeout(r, 50));
  }
  const f0 = process.resourceUsage().minorPageFault;
  const b = new Float32Array(n);
  b.fill(2);
  console.log(JSON.stringify({ keepFreed: nat.info().keepFreed, faults: process.resourceUsage().minorPageFault - f0, b: b[n - 1] }));
})();
`;
function run(malloc?: string): { keepFreed: boolean; faults: number; b: number } {
  const env = { ...process.env };
  delete env.GLIBC_TUNABLES;
  delete env.V4TUNE_MALLOC;
  if (malloc) env.V4TUNE_MALLOC = malloc;
  return JSON.parse(execFileSync(process.execPath, ['--expose-gc', '-e', child], { env, encoding: 'utf8' }));
}

// glibc only (the policy is mallopt's): elsewhere the addon leaves the C library alone
const glibc = process.platform === 'linux' && Boolean((process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime);

describe.skipIf(skipNative || !glibc)('native addon: freed memory is kept for reuse', () => {
  it('by default the second 256 MB fill reuses the first one\'s pages; V4TUNE_MALLOC=system maps fresh ones', () => {
    expect(addon?.info().keepFreed).toBe(process.env.V4TUNE_MALLOC !== 'system');
    const kept = run();
    expect(kept.keepFreed).toBe(true);
    expect(kept.b).toBe(2);
    // 65536 pages of 4 KiB (128 of 2 MiB where the system backs every mapping with huge pages)
    expect(kept.faults).toBeLessThan(100);
    const system = run('system');
    expect(system.keepFreed).toBe(false);
    expect(system.faults).toBeGreaterThan(100);
  });
});
