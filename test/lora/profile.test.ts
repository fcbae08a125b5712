// profile-experts and lora.experts: profiled (ESFT-style expert selection): the model's routing
// observer, the counts of a profile, the gate-mass selection, and the CLI around them (profile
// file, stale and missing profiles, train with the selected experts only, run, resume).
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDataset } from '../../src/data/dataset.js';
import { loadAdapter } from '../../src/lora/peft.js';
import {
  sampleRows, sampleRowsBySource, SAMPLE_BY_SOURCE, SAMPLE_METHOD, describeSelection, expertSubset, PROFILE_FILE, PROFILE_FORMAT, RoutingCounter, selectBlock, selectExperts, type ExpertProfile,
} from '../../src/lora/profile.js';
import { configFingerprint } from '../../src/model/config.js';
import { initModel } from '../../src/model/init.js';
import { loadModel } from '../../src/model/load.js';
import type { V4Model } from '../../src/model/v4/model.js';
import { cli } from '../cli/capture.js';

interface Call { block: string; idx: Int32Array; weights: Float32Array; N: number; k: number; positions: Int32Array | null }

function recorder(): { calls: Call[]; observe: (b: string, idx: Int32Array, w: Float32Array, N: number, k: number, p: Int32Array | null) => void } {
  const calls: Call[] = [];
  return { calls, observe: (block, idx, weights, N, k, positions) => calls.push({ block, idx: idx.slice(), weights: weights.slice(), N, k, positions: positions?.slice() ?? null }) };
}

describe('the routing observer', () => {
  let model: V4Model;
  const T = 40;
  const segments = [25, 15];
  const ids = Int32Array.from({ length: T }, (_, t) => (t * 7919 + 13) % 129280);
  const mask = Uint8Array.from({ length: T }, (_, t) => (t % 3 === 0 ? 0 : 1));

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'v4tune-profile-model-'));
    await initModel({ preset: 'tiny', out: dir, seed: 3 });
    model = await loadModel(dir);
  });
  afterAll(() => model?.dispose());

  it('reports every block of the trunk with the router\'s choices (hash layers: tid2eid) and leaves the loss unchanged', async () => {
    const c = model.config;
    const rec = recorder();
    const withObs = await model.loss(ids, mask, { segments, onRouting: rec.observe });
    const without = await model.loss(ids, mask, { segments });
    expect(withObs).toEqual(without);
    expect(rec.calls.map((x) => x.block)).toEqual(Array.from({ length: c.num_hidden_layers }, (_, l) => `layers.${l}`));
    const tid = model.weights.layers[0]!.ffn.tid2eid!;
    for (const call of rec.calls) {
      expect(call.N).toBe(T);
      expect(call.k).toBe(c.num_experts_per_tok);
      expect(call.positions).toBeNull();
      for (let t = 0; t < T; t++) {
        const row = [...call.idx.subarray(t * call.k, (t + 1) * call.k)];
        expect(new Set(row).size).toBe(call.k);
        for (const e of row) expect(e >= 0 && e < c.n_routed_experts).toBe(true);
        // w = s[idx] / Σ s[idx] · routed_scaling_factor: each token's weights sum to the factor
        const sum = call.weights.subarray(t * call.k, (t + 1) * call.k).reduce((s, v) => s + v, 0);
        expect(sum).toBeCloseTo(c.routed_scaling_factor, 5);
        if (call.block === 'layers.0') expect(row).toEqual([...tid.subarray(ids[t]! * call.k, (ids[t]! + 1) * call.k)]);
      }
    }
    const logitsRec = recorder();
    await model.logits(ids, { segments, onRouting: logitsRec.observe });
    expect(logitsRec.calls).toEqual(rec.calls);
  });

  it('route() reports the trunk as loss() does and the MTP block with the positions of the tokens it embeds; mtpLogits the same', async () => {
    const fromLoss = recorder();
    await model.loss(ids, mask, { segments, onRouting: fromLoss.observe });
    const fromRoute = recorder();
    await model.route(ids, { segments, onRouting: fromRoute.observe });
    const trunk = fromRoute.calls.filter((x) => x.block.startsWith('layers.'));
    expect(trunk).toEqual(fromLoss.calls);
    const mtp = fromRoute.calls.filter((x) => x.block === 'mtp.0');
    expect(mtp).toHaveLength(1);
    // pairs (t, t+1) inside each segment: the MTP row is the token t+1
    const expected = [...Array.from({ length: 24 }, (_, p) => p + 1), ...Array.from({ length: 14 }, (_, p) => 25 + p + 1)];
    expect(mtp[0]!.N).toBe(expected.length);
    expect([...mtp[0]!.positions!]).toEqual(expected);
    const fromMtp = recorder();
    const { rows } = await model.mtpLogits(ids, { segments, onRouting: fromMtp.observe });
    expect([...rows].map((t) => t + 1)).toEqual(expected);
    expect(fromMtp.calls).toEqual(fromRoute.calls);
  });

  it('the counter\'s load and gate mass equal a recount of the reported choices over the tokens with loss_mask 1', async () => {
    const rec = recorder();
    await model.route(ids, { segments, onRouting: rec.observe });
    const counter = new RoutingCounter(model.config.n_routed_experts);
    await model.route(ids, { segments, onRouting: counter.observe(mask) });
    const counted = mask.reduce((s, v) => s + v, 0);
    for (const call of rec.calls) {
      const b = counter.blocks.get(call.block)!;
      const load = new Array<number>(8).fill(0);
      const mass = new Array<number>(8).fill(0);
      let tokens = 0;
      for (let n = 0; n < call.N; n++) {
        if (mask[call.positions ? call.positions[n]! : n] !== 1) continue;
        tokens++;
        for (let j = 0; j < call.k; j++) {
          load[call.idx[n * call.k + j]!]++;
          mass[call.idx[n * call.k + j]!] += call.weights[n * call.k + j]!;
        }
      }
      expect(b.tokens).toBe(tokens);
      if (call.block.startsWith('layers.')) expect(b.tokens).toBe(counted);
      expect(b.load).toEqual(load);
      expect(b.load.reduce((s, v) => s + v, 0)).toBe(tokens * call.k);
      b.gate_mass.forEach((m, e) => expect(m).toBeCloseTo(mass[e]!, 9));
      expect(b.gate_mass.reduce((s, v) => s + v, 0)).toBeCloseTo(tokens * model.config.routed_scaling_factor, 3);
    }
  });
});

describe('selection by gate mass (ESFT gate criterion)', () => {
  it('threshold: the fewest experts, most gate mass first, whose share reaches it', () => {
    expect(selectBlock([1, 3, 3, 0, 2, 1], { threshold: 0.5 })).toEqual({ experts: [1, 2], share: 0.6 });
    expect(selectBlock([1, 3, 3, 0, 2, 1], { threshold: 0.61 }).experts).toEqual([1, 2, 4]);
    expect(selectBlock([1, 3, 3, 0, 2, 1], { threshold: 1 }).experts).toEqual([0, 1, 2, 4, 5]);
  });

  it('a threshold reached exactly stops there, also when the sum rounds just below it', () => {
    expect(selectBlock([2, 1, 1], { threshold: 0.5 })).toEqual({ experts: [0], share: 0.5 });
    // 0.6 + 0.3 = 0.8999999999999999 in doubles
    expect(selectBlock([0.3, 0.6, 0.1], { threshold: 0.9 }).experts).toEqual([0, 1]);
  });

  it('ties go to the lower id', () => {
    expect(selectBlock([1, 1, 1, 1], { threshold: 0.5 }).experts).toEqual([0, 1]);
    expect(selectBlock([0, 5, 2, 5, 2], { perLayer: 3, threshold: 0.5 }).experts).toEqual([1, 2, 3]);
  });

  it('experts_per_layer keeps that many whatever the threshold; a block without mass keeps the first ids', () => {
    expect(selectBlock([9, 1, 1, 1], { perLayer: 2, threshold: 0.5 })).toEqual({ experts: [0, 1], share: 10 / 12 });
    expect(selectBlock([1, 2], { perLayer: 5, threshold: 0.5 }).experts).toEqual([0, 1]);
    expect(selectBlock([0, 0, 0], { threshold: 0.5 })).toEqual({ experts: [0], share: 0 });
  });

  it('a hand-made profile gives createAdapter\'s expertSubset per block, hash layer included, and a one-line summary', () => {
    const p: ExpertProfile = {
      format: PROFILE_FORMAT, dataset_cache_key: 'k', model_fingerprint: 'f', rows_requested: 1, rows: 1, n_routed_experts: 4, num_experts_per_tok: 2,
      blocks: {
        'layers.0': { tokens: 2, load: [2, 2, 0, 0], gate_mass: [1.5, 1.5, 0, 0] },
        'layers.1': { tokens: 2, load: [1, 1, 1, 1], gate_mass: [0.5, 0.2, 0.3, 2] },
        'mtp.0': { tokens: 1, load: [0, 1, 1, 0], gate_mass: [0, 1, 0.5, 0] },
      },
    };
    const sel = selectExperts(p, { threshold: 0.5 });
    expect(expertSubset(sel)).toEqual({ 'layers.0': [0], 'layers.1': [3], 'mtp.0': [1] });
    expect(describeSelection(sel, 4)).toBe('1/4 experts per layer on average, 61% of gate mass');
    expect(expertSubset(selectExperts(p, { perLayer: 2, threshold: 0.5 }))).toEqual({ 'layers.0': [0, 1], 'layers.1': [0, 3], 'mtp.0': [1, 2] });
  });
});



function writeCorpus(dir: string): void {
  mkdirSync(join(dir, 'corpus'), { recursive: true });
  const lines = Array.from({ length: 16 }, (_, i) => JSON.stringify({
    messages: [
      { role: 'user', content: `What torque does flange ${i} need?` },
      { role: 'assistant', content: `Flange ${i} takes ${20 + i} Nm, tightened in a star pattern in ${i % 3 + 2} passes.` },
    ],
  }));
  writeFileSync(join(dir, 'corpus', 'chat.jsonl'), lines.join('\n'));
}

function recipe(lora: string, output = 'out', train = 'steps: 1, lr: 0.01, warmup_steps: 0, eval_every: 0, checkpoint_every: 1'): string {
  return [
    'model: { preset: tiny }',
    'data:',
    '  sources: [{ path: corpus/*.jsonl }]',
    '  seq_len: 48',
    '  eval_fraction: 0.25',
    `lora: { ${lora} }`,
    `train: { ${train} }`,
    `output: ${output}`,
  ].join('\n');
}

describe('profile rows sampled across the train split', () => {
  it('spreads k of n rows over the whole split: every source packed in a block of rows gets its share to within one row', () => {
    for (const [n, k, seed] of [[100, 10, 0], [1000, 64, 7], [65, 64, 3], [10, 3, 1]] as const) {
      const rows = sampleRows(n, k, seed);
      expect(rows).toHaveLength(k);
      expect(new Set(rows).size).toBe(k);
      expect(rows.every((r) => r >= 0 && r < n)).toBe(true);
      // sources as blocks of rows in packing order: text documents, then a small chat source
      for (const [from, to] of [[0, Math.floor(n * 0.9)], [Math.floor(n * 0.9), n]]) {
        const got = rows.filter((r) => r >= from && r < to).length;
        expect(Math.abs(got - (k * (to - from)) / n)).toBeLessThanOrEqual(1);
      }
    }
    expect(sampleRows(5, 9, 0)).toEqual([0, 1, 2, 3, 4]);
  });

  it('by source: each source gets its share of the sample (at least one row), wherever its rows lie', () => {
    // 90 rows of source 0 and 10 of source 2, interleaved unevenly; 10 rows of source 1 at the end
    const rowSource = [...Array.from({ length: 100 }, (_, i) => (i % 10 === 3 ? 2 : 0)), ...Array.from({ length: 10 }, () => 1)];
    const picks = sampleRowsBySource(rowSource, 11, 4);
    expect(new Set(picks).size).toBe(11);
    const count = (s: number) => picks.filter((i) => rowSource[i] === s).length;
    expect([count(0), count(1), count(2)]).toEqual([9, 1, 1]);
    // a source far too small for its share still gets one row
    const tiny = [...Array.from({ length: 999 }, () => 0), 1];
    expect(sampleRowsBySource(tiny, 8, 0).filter((i) => tiny[i] === 1)).toHaveLength(1);
    expect(sampleRowsBySource(tiny, 8, 0)).toHaveLength(8);
    expect(sampleRows(1000, 64, 1)).not.toEqual(sampleRows(1000, 64, 2));
  });
});

describe('v4tune profile-experts and lora.experts: profiled', () => {
  let dir: string;
  let r: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-profile-'));
    writeCorpus(dir);
    r = join(dir, 'r.yaml');
    writeFileSync(r, recipe('r: 2, alpha: 4, experts: profiled, profile_rows: 3'));
    await initModel({ preset: 'tiny', out: join(dir, 'out', 'model'), seed: 0 });
    const p = await cli('prepare', r);
    expect(p.code, p.err).toBe(0);
  });

  it('train without a profile exits 2 naming the file and the command to run', async () => {
    const t = await cli('train', r);
    expect(t.code).toBe(2);
    expect(t.err).toContain(join(dir, 'out', PROFILE_FILE));
    expect(t.err).toContain('v4tune profile-experts');
  });

  it('writes expert-profile.json with the dataset cache_key and config fingerprint; load = counted tokens × k, gate mass = counted tokens × routed_scaling_factor', async () => {
    const s = await cli('--json', 'profile-experts', r);
    expect(s.code, s.err).toBe(0);
    const summary = JSON.parse(s.out) as { ok: boolean; rows: number; profile: string };
    expect(summary.ok).toBe(true);
    expect(summary.profile).toBe(join(dir, 'out', PROFILE_FILE));
    expect(s.err).toMatch(/layers\.0 \(hash\): \d+ tokens; top /);
    const p = JSON.parse(readFileSync(summary.profile, 'utf8')) as ExpertProfile;
    const ds = openDataset(join(dir, 'out', 'data'));
    const cfg = JSON.parse(readFileSync(join(dir, 'out', 'model', 'config.json'), 'utf8'));
    expect(p.dataset_cache_key).toBe(ds.manifest.cache_key);
    const { parseConfig } = await import('../../src/model/config.js');
    expect(p.model_fingerprint).toBe(configFingerprint(parseConfig(cfg, 'config.json')));
    // 3 rows sampled across the whole split (seed lora.seed = 0), recorded in the profile
    const all = [...ds.rows('train')];
    const bySource = all.every((r) => r.source_ids !== undefined);
    const rowSource = all.map((r) => r.source_ids?.[0] ?? 0);
    const rows = (bySource ? sampleRowsBySource(rowSource, 3, 0) : sampleRows(all.length, 3, 0)).map((i) => all[i]!);
    expect(p.sample).toEqual({ method: bySource ? SAMPLE_BY_SOURCE : SAMPLE_METHOD, seed: 0, split_rows: all.length });
    expect(p.rows).toBe(rows.length);
    const counted = rows.reduce((s, row) => s + row.loss_mask.reduce((a, v) => a + v, 0), 0);
    expect(counted).toBeLessThan(rows.reduce((s, row) => s + row.input_ids.length, 0)); // prompts are masked
    expect(Object.keys(p.blocks)).toEqual(['layers.0', 'layers.1', 'layers.2', 'layers.3', 'mtp.0']);
    for (const [name, b] of Object.entries(p.blocks)) {
      if (name.startsWith('layers.')) expect(b.tokens).toBe(counted);
      expect(b.load.reduce((a, v) => a + v, 0)).toBe(b.tokens * 2);
      expect(b.gate_mass.reduce((a, v) => a + v, 0)).toBeCloseTo(b.tokens * 1.5, 3);
    }
    const again = await cli('profile-experts', r, '--rows', '1');
    expect(again.code, again.err).toBe(0);
    expect((JSON.parse(readFileSync(summary.profile, 'utf8')) as ExpertProfile).rows).toBe(1);
    expect((await cli('profile-experts', r)).code).toBe(0);
  });

  it('train with experts: profiled adapts exactly the selected experts (and every other target), logs the selection; a changed profile refuses --resume', async () => {
    const p = JSON.parse(readFileSync(join(dir, 'out', PROFILE_FILE), 'utf8')) as ExpertProfile;
    const subset = expertSubset(selectExperts(p, { threshold: 0.5 }));
    const t = await cli('train', r);
    expect(t.code, t.err).toBe(0);
    expect(t.out).toMatch(/experts: profiled — [\d.]+\/8 experts per layer on average, \d+% of gate mass/);
    const a = await loadAdapter(join(dir, 'out', 'adapter'));
    const experts = new Map<string, Set<number>>();
    const others = new Set<string>();
    for (const m of a.modules()) {
      const x = /^((?:layers|mtp)\.\d+)\.ffn\.experts\.(\d+)\.w[123]$/.exec(m);
      if (x) (experts.get(x[1]!) ?? experts.set(x[1]!, new Set()).get(x[1]!)!).add(Number(x[2]));
      else others.add(m.replace(/^layers\.\d+\./, ''));
    }
    const layers = Object.fromEntries(Object.entries(subset).filter(([b]) => b.startsWith('layers.')));
    expect(Object.fromEntries([...experts].map(([b, s]) => [b, [...s].sort((x, y) => x - y)]))).toEqual(layers);
    for (const [b, ids] of Object.entries(layers)) for (const e of ids) for (const w of ['w1', 'w2', 'w3']) expect(a.modules()).toContain(`${b}.ffn.experts.${e}.${w}`);
    expect([...others].sort()).toEqual(['attn.wkv', 'attn.wo_a', 'attn.wo_b', 'attn.wq_a', 'attn.wq_b', 'ffn.shared_experts.w1', 'ffn.shared_experts.w2', 'ffn.shared_experts.w3']);

    // another selection: every layer's gate mass moved to expert 7
    for (const b of Object.values(p.blocks)) b.gate_mass = b.gate_mass.map((_, e) => (e === 7 ? 1 : 0));
    writeFileSync(join(dir, 'out', PROFILE_FILE), JSON.stringify(p));
    const resumed = await cli('train', r, '--resume');
    expect(resumed.code).toBe(2);
    expect(resumed.err).toContain(`the profiled experts (${PROFILE_FILE})`);
  });

  it('a profile of another dataset or model is stale: exit 2 naming the file and profile-experts', async () => {
    const file = join(dir, 'out', PROFILE_FILE);
    const p = JSON.parse(readFileSync(file, 'utf8')) as ExpertProfile;
    writeFileSync(file, JSON.stringify({ ...p, dataset_cache_key: 'another' }));
    const t = await cli('train', r, '--overwrite');
    expect(t.code).toBe(2);
    expect(t.err).toContain(`${file} is stale`);
    expect(t.err).toContain('v4tune profile-experts');
    writeFileSync(file, JSON.stringify({ ...p, model_fingerprint: '0000' }));
    const u = await cli('train', r, '--overwrite');
    expect(u.code).toBe(2);
    expect(u.err).toContain('config fingerprint 0000');
  });

  it('experts_per_layer without experts: profiled is refused', async () => {
    const r2 = join(dir, 'r2.yaml');
    writeFileSync(r2, recipe('experts_per_layer: 2'));
    const t = await cli('train', r2);
    expect(t.code).toBe(2);
    expect(t.err).toContain('lora.experts_per_layer only applies with lora.experts: profiled');
  });

  it('run with experts: profiled measures the profile before train, then reuses it; experts_per_layer trains that many per layer', async () => {
    const r3 = join(dir, 'r3.yaml');
    writeFileSync(r3, recipe('r: 2, alpha: 4, experts: profiled, experts_per_layer: 2, profile_rows: 2', 'out3', 'steps: 1, lr: 0.01, warmup_steps: 0, eval_every: 0, checkpoint_every: 0'));
    const first = await cli('--json', 'run', r3);
    expect(first.code, first.err).toBe(0);
    const s = JSON.parse(first.out);
    expect(s.profile).toMatchObject({ reused: false, rows: 2, profile: join(dir, 'out3', PROFILE_FILE) });
    const a = await loadAdapter(join(dir, 'out3', 'adapter'));
    for (let l = 0; l < 4; l++) expect(a.modules().filter((m) => m.startsWith(`layers.${l}.ffn.experts.`))).toHaveLength(2 * 3);
    const second = await cli('run', r3);
    expect(second.code, second.err).toBe(0);
    expect(second.out).toContain(`profile: reusing ${join(dir, 'out3', PROFILE_FILE)}`);
    expect(second.out).toContain('train: reusing the finished run');
  });
});
