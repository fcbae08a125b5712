// layers.test.ts: src/ imports point one way (test/architecture/layers.cjs, checked by
// dependency-cruiser): leaves and backends, data, model, recipe, LoRA, training, export, the
// report, the stages, the CLI, the package root — no module imports a layer above its own, one
// backend never imports another, there are no import cycles, and a CLI command loads its stage
// only when it runs.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const depcruise = join(root, 'node_modules', '.bin', 'depcruise');
const rules = join(root, 'test', 'architecture', 'layers.cjs');

interface Violation { from: string; to: string; rule: { name: string } }

/** dependency-cruiser's violations of the layer rules for `src/` under `cwd` */
function violations(cwd: string): Violation[] {
  let out: string;
  try {
    out = execFileSync(depcruise, ['src', '--config', rules, '--output-type', 'json'], { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  } catch (e) {
    // depcruise exits non-zero when a rule is broken; the JSON report is still on stdout
    out = (e as { stdout?: string }).stdout ?? '';
    if (!out) throw e;
  }
  return (JSON.parse(out) as { summary: { violations: Violation[] } }).summary.violations;
}

const scratch: string[] = [];
afterAll(() => { for (const d of scratch) rmSync(d, { recursive: true, force: true }); });

describe('layers', () => {
  it('src/ has no import that runs up a layer, across backends, or in a cycle', () => {
    const found = violations(root).map((v) => `${v.rule.name}: ${v.from} → ${v.to}`);
    expect(found).toEqual([]);
  });

  it('the rules catch an upward import, a backend importing another, a cycle and a command loading its stage up front (on a scratch tree)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-layers-'));
    scratch.push(dir);
    const put = (rel: string, text: string) => {
      mkdirSync(dirname(join(dir, rel)), { recursive: true });
      writeFileSync(join(dir, rel), text);
    };
    put('tsconfig.json', JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', strict: true } }));
    put('package.json', JSON.stringify({ type: 'module' }));
    put('src/cli/main.ts', 'export const main = 1;\n');
    put('src/model/load.ts', "import { main } from '../cli/main.js';\nexport const load = main;\n");
    put('src/backend/tfjs/index.ts', 'export const tf = 1;\n');
    put('src/backend/native/index.ts', "import { tf } from '../tfjs/index.js';\nexport const native = tf;\n");
    put('src/data/a.ts', "import { b } from './b.js';\nexport const a = () => b;\n");
    put('src/data/b.ts', "import { a } from './a.js';\nexport const b = () => a;\n");
    put('src/stages/train.ts', 'export const train = 1;\n');
    put('src/stages/eval.ts', 'export const evaluate = 1;\n');
    put('src/cli/commands/train.ts', "import { train } from '../../stages/train.js';\nexport const t = train;\n");
    put('src/cli/commands/eval.ts', "export const e = async () => (await import('../../stages/eval.js')).evaluate;\n");
    const names = violations(dir).map((v) => `${v.rule.name}: ${v.from} → ${v.to}`).sort();
    // a cycle is reported once, from the module where the cruise first meets it
    expect(names.filter((n) => !n.startsWith('no-cycles'))).toEqual([
      'backends-independent: src/backend/native/index.ts → src/backend/tfjs/index.ts',
      'cli-commands-load-lazily: src/cli/commands/train.ts → src/stages/train.ts',
      'model-imports-upward: src/model/load.ts → src/cli/main.ts',
    ]);
    expect(names.filter((n) => n.startsWith('no-cycles')).length).toBe(1);
    expect(names.find((n) => n.startsWith('no-cycles'))).toMatch(/^no-cycles: src\/data\/[ab]\.ts → src\/data\/[ab]\.ts$/);
  });
});
