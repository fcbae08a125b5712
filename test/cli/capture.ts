// Running the CLI inside a test: stdout and stderr captured, the exit code returned, and
// process.exitCode left as it was found.
import { vi } from 'vitest';
import { main } from '../../src/cli/main.js';

export interface CliResult { code: number; out: string; err: string }

/** Run `run` (a CLI entry returning its exit code) with stdout and stderr captured. */
export async function capture(run: () => Promise<number>): Promise<CliResult> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => { out += String(s); return true; });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => { err += String(s); return true; });
  process.exitCode = undefined;
  try {
    return { code: await run(), out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
    process.exitCode = undefined;
  }
}

/** `v4tune ...args` through the real program. */
export const cli = (...args: string[]): Promise<CliResult> => capture(() => main(['node', 'v4tune', ...args]));
