// The native kernel suites again with the instruction set capped at AVX2 and at scalar
// (V4TUNE_ISA, read when the addon loads), each in a child vitest: every kernel's float64 /
// TypeScript reference checks hold on the paths a CPU without AVX-512 (or without AVX2) takes,
// not only on this machine's widest one. The bf16 dot-product tests skip there (no AVX512-BF16).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { skipNative } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const SUITES = ['ops', 'gemm', 'lora', 'int4', 'requant'].map((f) => `test/backend/native/${f}.test.ts`);

describe.skipIf(skipNative)('native kernels under a capped instruction set', () => {
  for (const isa of ['avx2', 'scalar'] as const) {
    it(`V4TUNE_ISA=${isa}: ${SUITES.length} kernel suites pass`, () => {
      // the child is a fresh vitest: none of this worker's VITEST_* variables
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VITEST')));
      const r = spawnSync(process.execPath, [join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--reporter=dot', '--no-color', ...SUITES], {
        cwd: root, env: { ...env, V4TUNE_ISA: isa, CI: 'true' }, encoding: 'utf8', timeout: 240_000,
      });
      const out = `${r.stdout}\n${r.stderr}`;
      expect(r.status, out.slice(-4000)).toBe(0);
      // the suites ran (not all skipped): the cap reached the addon
      expect(out, out.slice(-4000)).toMatch(/Tests\s+\d+ passed/);
      expect(out, out.slice(-4000)).not.toMatch(/Tests\s+.*failed/);
    }, 300_000);
  }
});
