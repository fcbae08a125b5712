// How a stage talks to whoever runs it: lines for people, warnings, and progress on long work.
// The CLI's context is one (a bar on a TTY, a few plain lines otherwise, nothing with --quiet);
// a script passes its own, `lineSink` (plain lines) or `silentSink`.

export interface Progress {
  /** Advance to `done` of the total (absolute, not an increment). */
  update(done: number, note?: string): void;
  stop(): void;
}

export interface Sink {
  /** A line of the plan or of results, for people. */
  log(line: string): void;
  /** A warning (the CLI shows it even with --quiet). */
  warn(line: string): void;
  progress(label: string, total: number, unit?: string): Progress;
}

export const silentProgress: Progress = { update: () => {}, stop: () => {} };

/** Says nothing. */
export const silentSink: Sink = { log: () => {}, warn: () => {}, progress: () => silentProgress };

/**
 * Plain lines through `say` (default: stdout), warnings through `warnTo` (default: stderr as
 * `warning: …`); progress at most one line at each quarter and one at the end.
 */
export function lineSink(say: (line: string) => void = (l) => process.stdout.write(`${l}\n`), warnTo: (line: string) => void = (l) => process.stderr.write(`warning: ${l}\n`)): Sink {
  return { log: say, warn: warnTo, progress: (label, total, unit = '') => lineProgress(label, total, unit, say) };
}

/** At most one line at each quarter of `total`, and one at the end. */
export function lineProgress(label: string, total: number, unit: string, say: (l: string) => void): Progress {
  let nextQuarter = 1;
  let last = 0;
  let stopped = false;
  const line = (done: number, note?: string) => `${label}: ${done}/${total}${unit ? ` ${unit}` : ''}${note ? ` ${note}` : ''}`;
  return {
    update: (done, note) => {
      last = done;
      if (total <= 0 || nextQuarter >= 4 || done < (total * nextQuarter) / 4 || done >= total) return;
      while (nextQuarter < 4 && done >= (total * nextQuarter) / 4) nextQuarter++;
      say(line(done, note));
    },
    stop: () => {
      if (stopped) return;
      stopped = true;
      say(`${line(last)} done`);
    },
  };
}
