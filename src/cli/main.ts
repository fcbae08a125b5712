// `v4tune <verb>`: one verb per pipeline stage, and `run` for the whole recipe.
import { Command, CommanderError } from 'commander';
import { EXIT_BAD_INPUT } from '../errors.js';
import { VERSION } from '../version.js';
import { reportError } from './action.js';
import { register as registerRun } from './commands/run.js';
import { register as registerInspect } from './commands/inspect.js';
import { register as registerInitModel } from './commands/init-model.js';
import { register as registerPrepare } from './commands/prepare.js';
import { register as registerEval } from './commands/eval.js';
import { register as registerGenerate } from './commands/generate.js';
import { register as registerTrain } from './commands/train.js';
import { register as registerMerge } from './commands/merge.js';
import { register as registerQuantize } from './commands/quantize.js';
import { register as registerReport } from './commands/report.js';
import { register as registerProfileExperts } from './commands/profile-experts.js';

export function buildProgram(): Command {
  const program = new Command('v4tune')
    .description('LoRA fine-tuning, merging and INT4 export for DeepSeek V4 mixture-of-experts models')
    .version(VERSION)
    .option('--json', 'print a machine-readable summary (JSON) on stdout; messages go to stderr')
    .option('-q, --quiet', 'print nothing but errors and warnings')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  for (const register of [registerInitModel, registerPrepare, registerProfileExperts, registerTrain, registerEval, registerGenerate, registerMerge, registerQuantize, registerRun, registerInspect, registerReport]) register(program);
  for (const c of program.commands) c.exitOverride();
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return EXIT_BAD_INPUT;
    }
    return reportError(e, argv.includes('--json'));
  }
  return typeof process.exitCode === 'number' ? process.exitCode : 0;
}
