// v4tune's adapters in PEFT 0.21 on transformers 5.18's DeepseekV4ForCausalLM, both directions:
// - transformers(base) + PeftModel.from_pretrained(v4tune's adapter, transformers layout) gives
//   the logits of transformers(v4tune's merged folder) and of v4tune(base + adapter), ≤ 1e-4 of
//   the largest logit at every position of 200 tokens, for an adapter on every default target
//   (attention incl. the grouped wo_a, shared expert, every routed expert);
// - an adapter PEFT trained for a few steps on transformers' V4 (target_modules and
//   target_parameters on the stacked experts and o_a_proj), read by v4tune: v4tune(base + adapter)
//   = v4tune(merged with it) and = PEFT's own logits; `v4tune eval --adapter` reads it, and
//   `v4tune train` with `train.warm_start` on it starts from it (its step-0 eval loss is the
//   adapter's), trains on, and writes an adapter PEFT loads with v4tune's logits (≤ 1e-4).
// The base is stored F32 (a merge then adds ΔW without rounding) and has 16 indexer heads
// (fixtures.ts); transformers' torch.topk is made stable (ties to the lower index, as V4's
// reference and v4tune) for the run.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mergeAdapter } from '../../src/export/merge.js';
import { createAdapter } from '../../src/lora/adapter.js';
import { loadAdapter, saveAdapter } from '../../src/lora/peft.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { loadModel } from '../../src/model/load.js';
import { main } from '../../src/cli/main.js';
import { corpus } from '../train/helpers.js';
import { capture } from '../cli/capture.js';
import { writeTinyModel } from './fixtures.js';
import { runPython, skipPython } from './python.js';
import { relErrRows } from '../ref64.js';

const T = 200;
const V = 129280;

const PY_COMMON = String.raw`
import sys, json, numpy as np, torch
torch.manual_seed(0)
_topk = torch.topk
def stable_topk(x, k, dim=-1, largest=True, sorted=True, **kw):
    # ties to the lower index (V4's reference on CUDA, v4tune): a stable sort
    v, i = torch.sort(x, dim=dim, descending=largest, stable=True)
    return torch.return_types.topk((v.narrow(dim, 0, k), i.narrow(dim, 0, k)))
torch.topk = stable_topk
torch.Tensor.topk = lambda self, k, dim=-1, largest=True, sorted=True: stable_topk(self, k, dim, largest, sorted)
from transformers import AutoModelForCausalLM
def load(d):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
def logits(m, ids, out):
    with torch.no_grad():
        l = m(torch.tensor([ids])).logits[0].float().numpy()
    l.astype('<f4').tofile(out)
`;

// One Python process for both directions (importing torch + transformers + PEFT and loading the
// model is most of its time): PEFT applies v4tune's adapter (and transformers runs v4tune's merged
// folder), then PEFT trains its own adapter for 3 steps on the same base.
const PY_APPLY_AND_TRAIN = PY_COMMON + String.raw`
from peft import PeftModel, LoraConfig, get_peft_model
base_dir, adapter_dir, merged_dir, ids_file, out_dir, out_adapter = sys.argv[1:7]
ids = json.load(open(ids_file))
m = PeftModel.from_pretrained(load(base_dir), adapter_dir).eval()
logits(m, ids, out_dir + '/peft.f32')
wrapped = sum(1 for n, _ in m.named_modules() if n.endswith('lora_A'))
logits(load(merged_dir), ids, out_dir + '/merged.f32')
torch.manual_seed(0)
m = load(base_dir)
cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r'model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|kv_proj|o_b_proj)|mlp\.shared_experts\.(gate_proj|up_proj|down_proj))',
                 target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj', 'self_attn.o_a_proj.weight'])
pm = get_peft_model(m, cfg)
opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
x = torch.tensor([ids[:64]])
for step in range(3):
    loss = pm(x, labels=x).loss
    opt.zero_grad(); loss.backward(); opt.step()
pm.eval()
pm.save_pretrained(out_adapter)
logits(pm, ids, out_dir + '/trained.f32')
print(json.dumps({'wrapped': wrapped, 'loss': float(loss)}))
`;

/** transformers(base) + PeftModel.from_pretrained(adapter): its logits */
const PY_PEFT_LOGITS = PY_COMMON + String.raw`
from peft import PeftModel
base_dir, adapter_dir, ids_file, out = sys.argv[1:5]
ids = json.load(open(ids_file))
m = PeftModel.from_pretrained(load(base_dir), adapter_dir).eval()
logits(m, ids, out)
`;

function sequence(n: number, seed: number): number[] {
  let x = seed;
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    ids.push(100 + (x % 120000));
  }
  return ids;
}

/** max over positions of max |a − b| / max |b| */
const relErr = (a: Float32Array, b: Float32Array): number => relErrRows(a, b, V);
const readF32 = (p: string): Float32Array => {
  const b = readFileSync(p);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4).slice();
};

describe.skipIf(skipPython)('PEFT + transformers apply v4tune adapters, and v4tune applies PEFT\'s', { timeout: 600_000 }, () => {
  let dir = '';
  const ids = sequence(T, 4242);
  let wrapped = 0;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-peft-'));
    await writeTinyModel(join(dir, 'model'), { f32: true });
    writeFileSync(join(dir, 'ids.json'), JSON.stringify(ids));
    // v4tune's adapter on every default target (B made non-zero) and the folder merged with it
    const ck = await Checkpoint.open(join(dir, 'model'));
    const config = ck.config;
    await ck.close();
    const a = createAdapter({ config, dir: join(dir, 'model') }, { r: 4, alpha: 8, seed: 1 });
    for (const m of a.modules()) {
      const l = a.factors(m)!;
      for (let i = 0; i < l.B.length; i++) l.B[i] = 0.05 * Math.sin(1 + i * 0.37 + m.length);
    }
    expect(a.modules().some((m) => /ffn\.experts\.\d+\.w1$/.test(m))).toBe(true);
    expect(a.modules().some((m) => /attn\.wo_a$/.test(m))).toBe(true);
    await saveAdapter(a, join(dir, 'adapter'));
    await mergeAdapter({ base: join(dir, 'model'), adapter: join(dir, 'adapter'), out: join(dir, 'merged'), warn: () => {} });
    const out = runPython(PY_APPLY_AND_TRAIN, [join(dir, 'model'), join(dir, 'adapter'), join(dir, 'merged'), join(dir, 'ids.json'), dir, join(dir, 'peft-trained')]);
    wrapped = (JSON.parse(out.trim().split('\n').pop()!) as { wrapped: number }).wrapped;
  }, 600_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('transformers(base) + PEFT(v4tune adapter) = transformers(merged) = v4tune(base + adapter), ≤ 1e-4 at every position of 200 tokens, every default target', async () => {
    expect(wrapped).toBeGreaterThan(0);
    const peft = readF32(join(dir, 'peft.f32'));
    const merged = readF32(join(dir, 'merged.f32'));
    const model = await loadModel(join(dir, 'model'), { backend: 'auto', note: () => {} });
    const reloaded = await loadAdapter(join(dir, 'adapter'));
    const mine = await model.logits(Int32Array.from(ids), { adapter: reloaded });
    const base = await model.logits(Int32Array.from(ids));
    model.dispose();
    expect(relErr(peft, mine)).toBeLessThan(1e-4);
    expect(relErr(merged, mine)).toBeLessThan(1e-4);
    expect(relErr(base, mine)).toBeGreaterThan(1e-2);
  });

  it('an adapter PEFT trained on transformers\' V4: v4tune(base + adapter) = v4tune(merged) = PEFT\'s logits, ≤ 1e-4', async () => {
    const theirs = readF32(join(dir, 'trained.f32'));
    const warnings: string[] = [];
    const adapter = await loadAdapter(join(dir, 'peft-trained'), { warn: (l) => warnings.push(l) });
    expect(warnings.join('\n')).toMatch(/no base config fingerprint/);
    expect(adapter.modules().some((m) => /layers\.\d+\.ffn\.experts\.\d+\.w3$/.test(m))).toBe(true);
    expect(adapter.modules().some((m) => /layers\.\d+\.attn\.wo_a$/.test(m))).toBe(true);
    const model = await loadModel(join(dir, 'model'), { backend: 'auto', note: () => {} });
    const mine = await model.logits(Int32Array.from(ids), { adapter });
    const base = await model.logits(Int32Array.from(ids));
    model.dispose();
    expect(relErr(mine, theirs)).toBeLessThan(1e-4);
    expect(relErr(base, theirs)).toBeGreaterThan(1e-3); // the trained adapter changes the logits
    await mergeAdapter({ base: join(dir, 'model'), adapter: join(dir, 'peft-trained'), out: join(dir, 'merged-trained'), warn: () => {} });
    const merged = await loadModel(join(dir, 'merged-trained'), { backend: 'auto', note: () => {} });
    const viaMerge = await merged.logits(Int32Array.from(ids));
    merged.dispose();
    expect(relErr(viaMerge, mine)).toBeLessThan(1e-4);
  });

  it('v4tune evaluates and resumes training from the PEFT-trained adapter (train.warm_start); PEFT loads the result and gives v4tune\'s logits, ≤ 1e-4', async () => {
    // the PEFT-trained adapter (beforeAll)
    mkdirSync(join(dir, 'corpus'), { recursive: true });
    corpus(12).forEach((text, i) => writeFileSync(join(dir, 'corpus', `doc-${i}.txt`), text));
    const recipe = join(dir, 'continue.yaml');
    writeFileSync(recipe, JSON.stringify({
      name: 'continue-peft',
      model: { path: join(dir, 'model') },
      data: { sources: [{ path: join(dir, 'corpus', '*.txt'), format: 'text' }], seq_len: 32, eval_fraction: 0.3, output: join(dir, 'data') },
      lora: { r: 4, alpha: 8 },
      train: { threads: 1, steps: 2, lr: 1e-2, warmup_steps: 0, eval_every: 0, checkpoint_every: 0, warm_start: join(dir, 'peft-trained') },
      output: join(dir, 'run'),
    }));
    const cli = (...args: string[]) => capture(() => main(['node', 'v4tune', '--json', ...args]));
    const last = (out: string) => JSON.parse(out) as Record<string, unknown>;
    expect((await cli('prepare', recipe)).code).toBe(0);
    // v4tune eval --adapter <the PEFT-trained adapter>
    const ev = await cli('eval', recipe, '--adapter', join(dir, 'peft-trained'));
    expect(ev.code, ev.err).toBe(0);
    const withAdapter = last(ev.out).loss as number;
    expect(last(ev.out).adapter).toBe(join(dir, 'peft-trained'));
    // train from it: step 0 evaluates exactly the adapter it starts from
    const tr = await cli('train', recipe);
    expect(tr.code, tr.err).toBe(0);
    const t = last(tr.out);
    expect(t).toMatchObject({ ok: true, step: 2 });
    expect((t.eval_before as { loss: number }).loss).toBeCloseTo(withAdapter, 6);
    // the result loads in PEFT on transformers' V4 and gives v4tune's logits
    runPython(PY_PEFT_LOGITS, [join(dir, 'model'), join(dir, 'run', 'adapter'), join(dir, 'ids.json'), join(dir, 'continued.f32')]);
    const theirs = readF32(join(dir, 'continued.f32'));
    const model = await loadModel(join(dir, 'model'), { backend: 'auto', note: () => {} });
    const mine = await model.logits(Int32Array.from(ids), { adapter: await loadAdapter(join(dir, 'run', 'adapter')) });
    const start = await model.logits(Int32Array.from(ids), { adapter: await loadAdapter(join(dir, 'peft-trained'), { warn: () => {} }) });
    model.dispose();
    console.log(`continued from the PEFT-trained adapter: eval loss ${withAdapter.toFixed(4)} at step 0, ${(t.eval_after as { loss: number }).loss.toFixed(4)} after 2 steps; PEFT vs v4tune ${relErr(mine, theirs).toExponential(2)}, moved ${relErr(start, mine).toExponential(2)}`);
    expect(relErr(mine, theirs)).toBeLessThan(1e-4);
    expect(relErr(start, mine)).toBeGreaterThan(1e-4); // the two steps moved the adapter
  });
});
