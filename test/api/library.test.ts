// The README's "Library API" example, run as written against the package root.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, createAdapter, saveAdapter, loadAdapter } from '../../src/index.js';

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
    } finally {
      model.dispose();
    }
  });
});
