// What every verb gets: the stages' Sink (src/sink.ts) as the CLI shows it, and the global
// flags. Plain lines go to stderr when --json owns stdout; progress is a bar on a TTY, a few
// plain lines otherwise, nothing with --quiet.
import { SingleBar, Presets } from 'cli-progress';
import { lineProgress, silentProgress, type Progress, type Sink } from '../sink.js';

export type { Progress } from '../sink.js';

export interface CliContext extends Sink {
  json: boolean;
  quiet: boolean;
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
