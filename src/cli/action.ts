// The wrapper every verb's action goes through: builds the context from the global options,
// runs the verb, prints its summary as JSON with --json, and turns errors into one line and an
// exit code (0 ok, 1 runtime failure, 2 bad input).
import type { Command } from 'commander';
import { EXIT_BAD_INPUT, EXIT_RUNTIME, V4tuneError } from '../errors.js';
import { makeContext, type CliContext } from './context.js';

export type VerbResult = Record<string, unknown>;

/** Wrap a verb: `fn(ctx, ...commander args)` returns the verb's machine-readable summary. */
export function action<A extends unknown[]>(fn: (ctx: CliContext, ...args: A) => Promise<VerbResult>) {
  return async function (this: Command, ...args: unknown[]): Promise<void> {
    const cmd = args[args.length - 1] as Command;
    const ctx = makeContext(cmd.optsWithGlobals<{ json?: boolean; quiet?: boolean }>());
    try {
      const summary = await fn(ctx, ...(args.slice(0, -1) as A));
      if (ctx.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    } catch (e) {
      process.exitCode = reportError(e, ctx.json);
    }
  };
}

export function reportError(e: unknown, json: boolean): number {
  const code = e instanceof V4tuneError ? e.exitCode : EXIT_RUNTIME;
  const message = e instanceof V4tuneError ? e.message
    : e instanceof Error ? `internal error: ${e.message}${process.env.V4TUNE_DEBUG ? `\n${e.stack}` : ' (set V4TUNE_DEBUG=1 for the stack)'}` : String(e);
  process.stderr.write(`v4tune: ${message}\n`);
  if (json) process.stdout.write(`${JSON.stringify({ ok: false, exitCode: code, error: message })}\n`);
  return code;
}

export { EXIT_BAD_INPUT };
