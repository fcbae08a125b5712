// What every verb gets: how to talk to the user. Plain lines go to stderr when --json owns stdout;
// progress is a bar on a TTY, a few plain lines otherwise, nothing with --quiet.
import { SingleBar, Presets } from 'cli-progress';

export interface Progress {
  /** Advance to `done` of the total (absolute, not an increment). */
  update(done: number, note?: string): void;
  stop(): void;
}

export interface CliContext {
  json: boolean;
  quiet: boolean;
  /** A line of the plan or of results, for people. */
  log(line: string): void;
  /** A warning; shown even with --quiet. */
  warn(line: string): void;
  progress(label: string, total: number, unit?: string): Progress;
}

export function makeContext(opts: { json?: boolean; quiet?: boolean }): CliContext {
  const json = opts.json === true;
  const quiet = opts.quiet === true;
  const out = json ? process.stderr : process.stdout;
  const say = (line: string) => { if (!quiet) out.write(`${line}\n`); };
  return {
    json,
    quiet,
    log: say,
    warn: (line) => process.stderr.write(`warning: ${line}\n`),
    progress: (label, total, unit = '') => (quiet ? silentProgress : out.isTTY ? barProgress(label, total, unit, out) : lineProgress(label, total, unit, say)),
  };
}

const silentProgress: Progress = { update: () => {}, stop: () => {} };

function barProgress(label: string, total: number, unit: string, stream: NodeJS.WriteStream): Progress {
  const bar = new SingleBar({
    format: `${label} [{bar}] {percentage}% {value}/{total}${unit ? ` ${unit}` : ''} {note}`,
    stream,
    hideCursor: true,
    clearOnComplete: false,
  }, Presets.shades_classic);
  bar.start(Math.max(total, 1), 0, { note: '' });
  return {
    update: (done, note = '') => bar.update(Math.min(done, Math.max(total, 1)), { note }),
    stop: () => bar.stop(),
  };
}

/** Without a TTY: at most one line at each quarter, and one at the end. */
function lineProgress(label: string, total: number, unit: string, say: (l: string) => void): Progress {
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
