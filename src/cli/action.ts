// The wrapper every verb's action goes through: builds the context from the global options,
// runs the verb, prints its summary as JSON with --json, and turns errors into one line and an
// exit code (0 ok, 1 runtime failure, 2 bad input).
import type { Command } from 'commander';
import { EXIT_BAD_INPUT, EXIT_RUNTIME, V4tuneError } from '../errors.js';
import { withPath } from '../fsutil.js';
import { makeContext, type CliContext } from './context.js';

export type VerbResult = Record<string, unknown>;

/** Wrap a verb: `fn(ctx, ...commander args)` returns the verb's machine-readable summary. */
export function action<A extends unknown[]>(fn: (ctx: CliContext, ...args: A) => Promise<VerbResult>) {
  return async function (this: Command, ...args: unknown[]): Promise<void> {
    const cmd = args[args.length - 1] as Command;
    const ctx = makeContext(cmd.optsWithGlobals<{ json?: boolean; quiet?: boolean }>());
    const stopSignals = exitOnSignals();
    try {
      const summary = await fn(ctx, ...(args.slice(0, -1) as A));
      if (ctx.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    } catch (e) {
      process.exitCode = reportError(e, ctx.json);
    } finally {
      stopSignals();
    }
  };
}

/**
 * Ctrl-C and SIGTERM end a verb through process.exit, so the exit hooks remove its temporaries
 * and release its locks (fsutil.ts, lock.ts). A verb that handles SIGINT itself (train stops
 * after the step, with a checkpoint) is left to do so. Returns how to remove the handlers.
 */
function exitOnSignals(): () => void {
  const handlers: [NodeJS.Signals, () => void][] = [
    ['SIGINT', () => { if (process.listenerCount('SIGINT') === 1) process.exit(130); }],
    ['SIGTERM', () => { if (process.listenerCount('SIGTERM') === 1) process.exit(143); }],
  ];
  for (const [s, h] of handlers) process.on(s, h);
  return () => { for (const [s, h] of handlers) process.off(s, h); };
}

export function reportError(err: unknown, json: boolean): number {
  const e = withPath(err, 'a file'); // ENOSPC, EROFS, EISDIR, … name their path
  const code = e instanceof V4tuneError ? e.exitCode : EXIT_RUNTIME;
  const message = e instanceof V4tuneError ? e.message
    : e instanceof Error ? `internal error: ${e.message}${process.env.V4TUNE_DEBUG ? `\n${e.stack}` : ' (set V4TUNE_DEBUG=1 for the stack)'}` : String(e);
  process.stderr.write(`v4tune: ${message}\n`);
  if (json) process.stdout.write(`${JSON.stringify({ ok: false, exitCode: code, error: message })}\n`);
  return code;
}

export { EXIT_BAD_INPUT };
