// The layers of src/, bottom to top. A module may import its own layer and the layers below it,
// never one above: leaves (errors, fs rules, locks, random, nearest names, the stages' sink, version) and the
// compute backends sit under the data, the model, LoRA, training, export, the report, the
// stages (one library function per CLI verb) and the CLI on top. Type-only imports count too,
// except the recipe's parsed type, which every stage takes as its argument. Checked by dependency-cruiser in test/architecture/layers.test.ts.
const LAYERS = [
  ['leaves', '^src/(errors|fsutil|lock|random|nearest|sink|version)\\.ts$'],
  ['backend', '^src/backend/'],
  ['data', '^src/(data|chat)/'],
  ['model', '^src/model/'],
  ['recipe', '^src/recipe/'],
  ['lora', '^src/lora/'],
  ['train', '^src/(train|distributed)/'],
  ['export', '^src/export/'],
  ['report', '^src/report/'],
  ['stages', '^src/stages/'],
  ['cli', '^src/cli/'],
  ['package', '^src/index\\.ts$'],
];

const forbidden = [];
LAYERS.forEach(([name, path], i) => {
  const above = LAYERS.slice(i + 1).map(([, p]) => `(${p})`).join('|');
  if (!above) return;
  forbidden.push({
    name: `${name}-imports-upward`,
    comment: `${name} may not import a layer above it`,
    severity: 'error',
    from: { path },
    to: { path: above, pathNot: '^src/recipe/load\\.ts$', dependencyTypesNot: [] },
  });
});
forbidden.push({
  name: 'recipe-type-only',
  comment: 'below the recipe layer, the parsed recipe is taken as a type only',
  severity: 'error',
  from: { path: LAYERS.slice(0, 4).map(([, p]) => `(${p})`).join('|') },
  to: { path: '^src/recipe/load\\.ts$', dependencyTypesNot: ['type-only'] },
});
forbidden.push({
  name: 'backends-independent',
  comment: 'one backend never imports another (shared host code lives in src/backend/*.ts); the ascend backend is the native one with its LoRA ops on the NPU, so it alone builds on backend/native',
  severity: 'error',
  from: { path: '^src/backend/([^/]+)/', pathNot: '^src/backend/ascend/' },
  to: { path: '^src/backend/([^/]+)/', pathNot: '^src/backend/$1/' },
});
forbidden.push({
  name: 'ascend-only-on-native',
  comment: 'the ascend backend builds on the native backend only, never on tfjs',
  severity: 'error',
  from: { path: '^src/backend/ascend/' },
  to: { path: '^src/backend/tfjs/' },
});
forbidden.push({
  name: 'cli-commands-load-lazily',
  comment: 'a command module loads what its verb runs (stages, recipe loading, the model) inside its action, by import(): starting the CLI, or any one verb, never loads the others',
  severity: 'error',
  from: { path: '^src/cli/commands/' },
  to: { path: '^src/', pathNot: '^src/(cli/|errors\\.ts$|export/quantize-types\\.ts$)', dynamic: false, dependencyTypesNot: ['type-only'] },
});
forbidden.push({
  name: 'merge-loads-no-dataset',
  comment: 'a merge reads no dataset: its stage never reaches the data layer (Apache Arrow, the tokenizers), which took a fifth of a second of every merge to load',
  severity: 'error',
  from: { path: '^src/stages/merge\\.ts$' },
  to: { path: '^src/data/', reachable: true },
});
forbidden.push({
  name: 'no-cycles',
  severity: 'error',
  from: { path: '^src/' },
  to: { circular: true },
});

module.exports = {
  forbidden,
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
