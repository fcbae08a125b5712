#!/usr/bin/env node
import { main } from '../dist/cli/main.js';

// Output piped into a reader that stops early (`v4tune inspect … | head`) is not an error.
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
process.exitCode = await main(process.argv);
