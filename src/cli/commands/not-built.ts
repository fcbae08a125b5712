// Verbs of the design whose stage is not built yet: each says so and exits 1.
import type { Command } from 'commander';
import { NotBuiltError } from '../../errors.js';
import { action } from '../action.js';

/** Stages that exist in the design but not yet in this version, with what they will do. */
export const NOT_BUILT: Record<string, string> = {
  'profile-experts': 'measure per-layer expert load and gate mass on the domain corpus',
};

export function registerNotBuilt(program: Command): void {
  for (const [verb, what] of Object.entries(NOT_BUILT)) {
    program.command(verb)
      .description(`${what} (not built yet)`)
      .argument('[args...]')
      .allowUnknownOption()
      .action(action(async () => { throw new NotBuiltError(`v4tune ${verb} (${what})`, `${NOT_BUILT_VERSION_NOTE}`); }));
  }
}

const NOT_BUILT_VERSION_NOTE = '— see "What is not done yet" in README.md';
