// flash preset: V4-Flash's exact widths and formats (FP8 attention with 128×128 block scales, FP4
// experts), here with 1 layer (ratio 4: compressor with overlapping windows, indexer) and 7
// routed experts top-6 (each token still leaves one out, so the choice is tested); the
// vocabulary cut to 1024 rows (vocabSize, tests only) so the checkpoint is written quickly — the
// head is the same GEMM at any row count. On a 9-token sequence the native backend's logits,
// loss and LoRA gradients equal a float64 forward composed from ref64.ts (flash-ref64.ts), which
// reuses every product a finite difference's move does not reach.
//   logits: max|Δ|/max|ref| ≤ 1e-4, loss: relative 1e-5 (the fixture's float32 tolerances);
//   gradients: for each module family, Σ grad·v along a random direction v of its LoRA factors
//   equals the float64 central difference (ε = 1e-3) of the reference loss to 1e-3 relative.
// 9 tokens give two compressed entries (windows 0–3 and 4–7, the second pooling the first
// through the overlap channels); index_topk (512) exceeds them, so the indexer keeps every one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LoraFactors } from '../../src/backend/ops.js';
import { Checkpoint } from '../../src/model/checkpoint.js';
import { initModel } from '../../src/model/init.js';
import { loadModel } from '../../src/model/load.js';
import type { ModelAdapter, V4Model } from '../../src/model/v4/model.js';
import { skipNative } from '../backend/native/helpers.js';
import { FlashRef64, type Lora64 } from './flash-ref64.js';
import { rand, relErr } from '../ref64.js';

const R = 2;
const SCALING = 2;

/** module → [in, out] of its LoRA (wo_a: in per group) */
function modules(c: { hidden_size: number; q_lora_rank: number; num_attention_heads: number; head_dim: number; o_groups: number; o_lora_rank: number; n_routed_experts: number; moe_intermediate_size: number }): Map<string, [number, number, string]> {
  const d = c.hidden_size;
  const hd = c.head_dim;
  const I = c.moe_intermediate_size;
  const m = new Map<string, [number, number, string]>();
  const a = 'layers.0.attn';
  m.set(`${a}.wq_a`, [d, c.q_lora_rank, 'attention']);
  m.set(`${a}.wq_b`, [c.q_lora_rank, c.num_attention_heads * hd, 'attention']);
  m.set(`${a}.wkv`, [d, hd, 'attention']);
  m.set(`${a}.wo_a`, [(c.num_attention_heads * hd) / c.o_groups, c.o_groups * c.o_lora_rank, 'attention']);
  m.set(`${a}.wo_b`, [c.o_groups * c.o_lora_rank, d, 'attention']);
  m.set(`${a}.compressor.wkv`, [d, 2 * hd, 'compressor']);
  m.set(`${a}.compressor.wgate`, [d, 2 * hd, 'compressor']);
  for (const w of ['w1', 'w3']) m.set(`layers.0.ffn.shared_experts.${w}`, [d, I, 'shared expert']);
  m.set('layers.0.ffn.shared_experts.w2', [I, d, 'shared expert']);
  for (let e = 0; e < c.n_routed_experts; e++) {
    for (const w of ['w1', 'w3']) m.set(`layers.0.ffn.experts.${e}.${w}`, [d, I, 'routed experts']);
    m.set(`layers.0.ffn.experts.${e}.w2`, [I, d, 'routed experts']);
  }
  return m;
}

describe.skipIf(skipNative)('flash preset: native backend vs a float64 forward', { timeout: 900_000 }, () => {
  let dir = '';
  let model: V4Model;
  let ck: Checkpoint;
  let ref: FlashRef64;
  let shapes: Map<string, [number, number, string]>;
  const lora64 = new Map<string, Lora64>();
  const factors = new Map<string, LoraFactors>();
  const T = 9;
  const ids = Int32Array.from({ length: T }, (_, i) => (i * 15485863 + 7919) % 1024);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'v4tune-flash-'));
    await initModel({ preset: 'flash', layers: 1, experts: 7, out: join(dir, 'm'), seed: 3, vocabSize: 1024, tokenizer: false });
    model = await loadModel(join(dir, 'm'), { backend: 'native' });
    ck = await Checkpoint.open(join(dir, 'm'));
    ref = new FlashRef64(ck, ck.config);
    shapes = modules(ck.config);
    let i = 0;
    for (const [name, [inF, out]] of shapes) {
      const A = rand(R * inF, 100 + i, 1 / Math.sqrt(inF));
      const B = rand(out * R, 500 + i++, 0.05);
      lora64.set(name, { A, B, r: R, s: SCALING });
      factors.set(name, { A: Float32Array.from(A), B: Float32Array.from(B), r: R, scaling: SCALING });
    }
  }, 900_000);
  afterAll(async () => {
    model?.dispose();
    await ck?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const adapter = (): ModelAdapter => ({ factors: (n) => factors.get(n), modules: () => factors.keys() });

  it('has V4-Flash widths and formats', () => {
    const cfg = JSON.parse(readFileSync(join(dir, 'm', 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg).toMatchObject({
      hidden_size: 4096, num_attention_heads: 64, head_dim: 512, qk_rope_head_dim: 64, q_lora_rank: 1024,
      o_groups: 8, o_lora_rank: 1024, moe_intermediate_size: 2048, num_experts_per_tok: 6, n_routed_experts: 7,
      index_n_heads: 64, index_head_dim: 128, index_topk: 512, sliding_window: 128, vocab_size: 1024,
      num_hidden_layers: 1, compress_ratios: [4, 0], expert_dtype: 'fp4',
    });
    expect(ck.meta('layers.0.attn.wq_b.weight').dtype).toBe('F8_E4M3');
    expect(ck.meta('layers.0.ffn.experts.0.w1.weight').dtype).toBe('I8');
  });

  it('logits with LoRA on every target equal the float64 forward (1e-4)', async () => {
    const out = await model.logits(ids, { adapter: adapter() });
    const want = await ref.logits(ids, lora64);
    expect(relErr(out, want)).toBeLessThanOrEqual(1e-4);
  });

  it('loss (1e-5) and the LoRA gradients of every module family equal float64 finite differences (1e-3)', async () => {
    const mask = new Uint8Array(T);
    mask[4] = 1;
    mask[8] = 1;
    const { loss, grads } = await model.lossAndGrads(ids, mask, { adapter: adapter() });
    const want = await ref.loss(ids, mask, lora64);
    expect(Math.abs(loss - want) / Math.abs(want)).toBeLessThanOrEqual(1e-5);
    const families = [...new Set([...shapes.values()].map((s) => s[2]))];
    const eps = 1e-3;
    let seed = 900;
    for (const fam of families) {
      let predicted = 0;
      const dirs = new Map<string, { A: Float64Array; B: Float64Array }>();
      const moved = (sign: number): Map<string, Lora64> => new Map([...lora64].map(([n, f]) => [n, dirs.has(n) ? {
        ...f,
        A: f.A.map((x, i) => x + sign * eps * dirs.get(n)!.A[i]!),
        B: f.B.map((x, i) => x + sign * eps * dirs.get(n)!.B[i]!),
      } : f]));
      for (const [name, [inF, out, f]] of shapes) {
        if (f !== fam) continue;
        const v = { A: rand(R * inF, seed++, 1 / Math.sqrt(inF)), B: rand(out * R, seed++, 0.05) };
        dirs.set(name, v);
        const gA = grads.get(`base_model.model.${name}.lora_A.weight`)!;
        const gB = grads.get(`base_model.model.${name}.lora_B.weight`)!;
        v.A.forEach((x, i) => (predicted += x * gA[i]!));
        v.B.forEach((x, i) => (predicted += x * gB[i]!));
      }
      const fd = ((await ref.loss(ids, mask, moved(1))) - (await ref.loss(ids, mask, moved(-1)))) / (2 * eps);
      expect(Math.abs(fd), fam).toBeGreaterThan(1e-4);
      expect(Math.abs(predicted - fd) / Math.abs(fd), fam).toBeLessThanOrEqual(1e-3);
    }
  });
});
