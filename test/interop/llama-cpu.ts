// node-llama-cpp 3.22.1 as the GGUF tests load it: on a CPU with AMX tiles (Intel Xeon 4th
// generation and later), llama.cpp's CPU backend is its `sapphirerapids` variant, which puts
// the attention and shared-expert weights of a DeepSeek V4 file into AMX buffers (F16, Q8_0 and
// Q4_0 files of the tiny preset; its BF16 and Q5_0-heavy Q4_K files run) and then aborts the process when it schedules the one-token decode graph (ggml-backend.cpp:
// GGML_ASSERT(*cur_backend_id != -1): no backend can run an op on such a weight) — in llama.cpp's
// buffer placement: the same files run without that variant (llama.cpp's own `--no-repack` option
// keeps weights out of those buffers; node-llama-cpp has no such option). There the tests load node-llama-cpp from a tree under the
// run's temporary folder whose prebuilt binaries leave that variant out, so ggml picks the best
// other one (zen4 or icelake: AVX-512, no AMX); the packages' files are hard links (copies on
// another filesystem), the other dependencies symbolic links to the project's node_modules.
import { cpSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const AMX_VARIANT = 'libggml-cpu-sapphirerapids.so';

/** whether this CPU reports AMX (the flags ggml's sapphirerapids variant scores on) */
function cpuHasAmx(): boolean {
  try {
    return /\bamx_int8\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
}

// dir's files into out (hard links where the filesystem allows, else copies), leaving `skip` out
function linkTree(dir: string, out: string, skip: (name: string) => boolean): void {
  mkdirSync(out, { recursive: true });
  for (const name of readdirSync(dir)) {
    if (skip(name)) continue;
    const from = join(dir, name), to = join(out, name);
    if (statSync(from).isDirectory()) linkTree(from, to, skip);
    else
      try {
        linkSync(from, to);
      } catch {
        cpSync(from, to);
      }
  }
}

/** node-llama-cpp's module: the project's, or on an AMX CPU the tree above (the reason is printed once) */
export async function importNodeLlamaCpp(): Promise<typeof import('node-llama-cpp')> {
  if (!cpuHasAmx()) return import('node-llama-cpp');
  const modules = fileURLToPath(new URL('../../node_modules', import.meta.url));
  const bins = join(modules, '@node-llama-cpp', 'linux-x64');
  if (!existsSync(join(bins, 'bins', 'linux-x64', AMX_VARIANT))) return import('node-llama-cpp');
  const root = join(mkdtempSync(join(tmpdir(), 'node-llama-cpp-')), 'node_modules');
  mkdirSync(join(root, '@node-llama-cpp'), { recursive: true });
  linkTree(join(modules, 'node-llama-cpp'), join(root, 'node-llama-cpp'), () => false);
  linkTree(bins, join(root, '@node-llama-cpp', 'linux-x64'), (name) => name === AMX_VARIANT);
  for (const name of readdirSync(modules)) {
    if (name === 'node-llama-cpp' || name === '@node-llama-cpp' || name === '.bin') continue;
    symlinkSync(join(modules, name), join(root, name));
  }
  console.log(`llama.cpp runs without its AMX CPU variant here (${AMX_VARIANT} left out): on this AMX CPU that variant aborts DeepSeek V4 decoding (see test/interop/llama-cpu.ts)`);
  const entry = JSON.parse(readFileSync(join(root, 'node-llama-cpp', 'package.json'), 'utf8')) as { exports?: { '.'?: { import?: string } | string }; main?: string };
  const dot = entry.exports?.['.'];
  const main = typeof dot === 'string' ? dot : dot?.import ?? entry.main ?? 'dist/index.js';
  return (await import(pathToFileURL(join(root, 'node-llama-cpp', main)).href)) as typeof import('node-llama-cpp');
}
