// The README's "Library API" example, run as written against the package root.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, createAdapter, saveAdapter, loadAdapter, mergeAdapter } from '../../src/index.js';

const FIXTURE = join(process.cwd(), '..', 'shared', 'fixtures', 'v4-tiny-ref');

describe('library API (README example)', () => {
  it('gives logits, loss and PEFT-keyed gradients, and a saved adapter reloads to identical logits', async () => {
    const model = await loadModel(join(FIXTURE, 'checkpoint'), { backend: 'auto', note: () => {} });
    try {
      const raw = readFileSync(join(FIXTURE, 't17.ids.i32'));
      const ids = new Int32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
      const logits = await model.logits(ids);                          // Float32Array, T × vocab
      expect(logits.length).toBe(17 * model.config.vocab_size);

      const adapter = createAdapter(model, { r: 8, alpha: 16, targets: ['attn.wq_a', 'ffn.experts.*.w1'], seed: 1 });
      const lossMask = new Uint8Array(ids.length).fill(1);
      const { loss, grads } = await model.lossAndGrads(ids, lossMask, { segments: [10, 7], adapter });
      expect(Number.isFinite(loss)).toBe(true);
      // B starts at zero, so only B gets a gradient at step 0; keys follow PEFT.
      const key = 'base_model.model.layers.0.attn.wq_a.lora_B.weight';
      expect(grads.get(key)!.some((g) => g !== 0)).toBe(true);
      expect(grads.get('base_model.model.layers.0.attn.wq_a.lora_A.weight')!.every((g) => g === 0)).toBe(true);

      // Give B a value so the adapter changes the logits, then save, reload, compare.
      for (const m of adapter.modules()) adapter.factors(m)!.B.fill(0.01);
      const dir = mkdtempSync(join(tmpdir(), 'v4tune-api-'));
      await saveAdapter(adapter, dir);
      const reloaded = await loadAdapter(dir);
      const a = await model.logits(ids, { adapter });
      const b = await model.logits(ids, { adapter: reloaded });
      expect(b).toEqual(a);
      expect(a).not.toEqual(logits);

      // The routing observer sees every MoE block's choice for every token.
      const seen = new Map<string, number>();
      await model.logits(ids, { onRouting: (block, idx, _w, N, k) => { expect(idx.length).toBe(N * k); seen.set(block, N); } });
      expect([...seen.values()]).toEqual(Array(model.config.num_hidden_layers).fill(ids.length));

      // Merge the adapter into BF16 weights: the merged model alone gives the adapted logits.
      const merged = join(mkdtempSync(join(tmpdir(), 'v4tune-api-merged-')), 'model');
      await mergeAdapter({ base: join(FIXTURE, 'checkpoint'), adapter: dir, out: merged, dtype: 'bf16' });
      const m2 = await loadModel(merged, { backend: 'auto', note: () => {} });
      try {
        const c = await m2.logits(ids);
        let num = 0;
        let den = 0;
        for (let i = 0; i < a.length; i++) { num = Math.max(num, Math.abs(c[i]! - a[i]!)); den = Math.max(den, Math.abs(a[i]!)); }
        expect(num / den).toBeLessThan(2e-2); // bf16 rounding of W + ΔW
      } finally {
        m2.dispose();
      }
    } finally {
      model.dispose();
    }
  });
});
