// Errors a user can act on. Every failure that reaches the CLI is one of these, with one
// sentence naming the file and the field or tensor; the CLI prints the message and exits with
// the error's exit code (2 bad input, 1 runtime failure).

export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_BAD_INPUT = 2;

export class V4tuneError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number = EXIT_RUNTIME) {
    super(message);
    this.name = 'V4tuneError';
    this.exitCode = exitCode;
  }
}

/** Bad input from the user: a recipe, corpus, checkpoint, adapter or file they named. */
export class InputError extends V4tuneError {
  constructor(message: string) {
    super(message, EXIT_BAD_INPUT);
    this.name = 'InputError';
  }
}

/** A stage the recipe asks for that this version of v4tune does not build yet. */
export class NotBuiltError extends V4tuneError {
  constructor(stage: string, detail = '') {
    super(`${stage} is not built yet in v4tune ${detail}`.trim(), EXIT_RUNTIME);
    this.name = 'NotBuiltError';
  }
}

/** A loss, gradient or weight that is NaN or infinite: the work stops (exit 1), nothing is passed on. */
export class NonFiniteError extends V4tuneError {
  constructor(message: string) {
    super(message, EXIT_RUNTIME);
    this.name = 'NonFiniteError';
  }
}

/** The index of the first NaN or ±Infinity in `x`, or -1. */
export function firstNonFinite(x: ArrayLike<number>): number {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) return i;
  return -1;
}
