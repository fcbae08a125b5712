// The suite's vitest settings (package.json `test` passes --config): the project root as vitest's
// root, and the global setup that gives each run its own temporary folder (tmp-setup.ts).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('..', import.meta.url)),
    globalSetup: ['test/tmp-setup.ts'],
  },
});
