// Builds the native addon with node-gyp during `npm install` / `npm ci`.
// A failed build leaves v4tune on the tfjs backend (it says why, once, at run time),
// except under CI=true, where a failed build fails the install so CI never passes on the fallback.
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const gypFile = join(here, 'binding.gyp');
if (!existsSync(gypFile)) process.exit(0);
const force = process.argv.includes('--force');
// npm passes its bundled node-gyp; run directly, look for npm's copy next to this node.
const bundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const nodeGyp = process.env.npm_config_node_gyp ?? (existsSync(bundled) ? bundled : null);
const [cmd, args] = nodeGyp ? [process.execPath, [nodeGyp]] : ['node-gyp', []];
// Use the headers installed beside this node (no download) unless npm names a nodedir.
const prefix = join(dirname(process.execPath), '..');
const nodedir = process.env.npm_config_nodedir ?? (existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null);
const r = spawnSync(cmd, [...args, 'rebuild', ...(nodedir ? [`--nodedir=${nodedir}`] : [])], { cwd: here, stdio: 'inherit', env: process.env });
const failed = r.status !== 0 || r.error;
mkdirSync(join(here, 'build'), { recursive: true });
writeFileSync(join(here, 'build', 'build-status.json'), JSON.stringify({ ok: !failed, error: failed ? String(r.error ?? `node-gyp exited ${r.status}`) : null }) + '\n');
if (failed) {
  console.error(`v4tune: native addon build failed (${r.error ?? `node-gyp exited ${r.status}`}); v4tune will run on the tfjs backend.`);
  if (process.env.CI === 'true' || force) process.exit(1);
}
// The MPI binding is a second, separate addon (native/mpi/build.mjs): built where MPI exists;
// elsewhere it says why and v4tune stays single-process (under CI=true, where MPI is installed,
// its failure fails the install).
const mpi = spawnSync(process.execPath, [join(here, 'mpi', 'build.mjs')], { stdio: 'inherit', env: process.env });
if (mpi.status !== 0 && process.env.CI === 'true') process.exit(1);
