// Builds the MPI binding (native/mpi → build/Release/v4tune_mpi.node) with node-gyp where the
// system MPI's compiler wrapper and headers exist (Debian: libopenmpi-dev). Without them it
// writes why into build/build-status.json and v4tune stays single-process; under CI=true (where
// .ci/run installs Open MPI) or with --force a failed build fails.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const strict = process.env.CI === 'true' || process.argv.includes('--force');
const status = (ok, error) => {
  mkdirSync(join(here, 'build'), { recursive: true });
  writeFileSync(join(here, 'build', 'build-status.json'), JSON.stringify({ ok, error }) + '\n');
};
// The compile and link flags of the system MPI: Open MPI's wrapper says them with --showme:*,
// MPICH's (and Intel MPI's) prints its whole command line with -show.
function mpiFlags() {
  const ask = (args) => {
    const r = spawnSync('mpicc', args, { encoding: 'utf8' });
    return r.status === 0 && !r.error ? r.stdout.trim().split(/\s+/).filter(Boolean) : null;
  };
  const ompiCompile = ask(['--showme:compile']);
  const ompiLink = ask(['--showme:link']);
  if (ompiCompile && ompiLink) return { cflags: ompiCompile, libs: ompiLink };
  const show = ask(['-show']);
  if (!show) return null;
  return { cflags: show.filter((f) => f.startsWith('-I') || f.startsWith('-D')), libs: show.filter((f) => /^-(L|l|Wl,)/.test(f)) };
}
const flags = mpiFlags();
const include = (flags?.cflags ?? []).filter((f) => f.startsWith('-I')).map((f) => f.slice(2));
if (!flags || !include.some((d) => existsSync(join(d, 'mpi.h')))) {
  const why = 'no MPI found (mpicc and mpi.h; Debian: apt-get install openmpi-bin libopenmpi-dev)';
  status(false, why);
  console.error(`v4tune: MPI binding not built: ${why}; v4tune runs single-process.`);
  process.exit(strict ? 1 : 0);
}
const bundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const nodeGyp = process.env.npm_config_node_gyp ?? (existsSync(bundled) ? bundled : null);
const [cmd, args] = nodeGyp ? [process.execPath, [nodeGyp]] : ['node-gyp', []];
const prefix = join(dirname(process.execPath), '..');
const nodedir = process.env.npm_config_nodedir ?? (existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null);
const env = { ...process.env, V4TUNE_MPI_CFLAGS: flags.cflags.join(' '), V4TUNE_MPI_LIBS: flags.libs.join(' ') };
const r = spawnSync(cmd, [...args, 'rebuild', ...(nodedir ? [`--nodedir=${nodedir}`] : [])], { cwd: here, stdio: 'inherit', env });
const failed = r.status !== 0 || r.error;
status(!failed, failed ? String(r.error ?? `node-gyp exited ${r.status}`) : null);
if (failed) {
  console.error(`v4tune: MPI binding build failed (${r.error ?? `node-gyp exited ${r.status}`}); v4tune runs single-process.`);
  if (strict) process.exit(1);
}
