// The activation estimate behind the train stage's memory refusal (src/train/bounds.ts): with
// train.attention_chunk the per-query path (q before and after RoPE, the attention output, the
// probabilities) counts once per chunk row instead of once per token, and a refusal names both
// settings that lower the need. Figures at flash width (2 layers, 32 experts).
import { describe, expect, it } from 'vitest';
import { totalmem } from 'node:os';
import { parseConfig } from '../../src/model/config.js';
import { presetConfigJson } from '../../src/model/init.js';
import { activationBytesPerToken, checkTrainBounds, queryPathBytesPerRow } from '../../src/train/bounds.js';

const flash = parseConfig(presetConfigJson('flash', 'fp8', { layers: 2, experts: 32 }), 'config.json');

describe('activation estimate', () => {
  it('a chunked query path leaves q, o and the probabilities out of the per-token figure', () => {
    const whole = activationBytesPerToken(flash, true);
    const chunked = activationBytesPerToken(flash, true, true);
    // 3 · 64 heads · 512 + 64 heads · (128 window + 512 selected), in floats
    expect(queryPathBytesPerRow(flash)).toBe(4 * (3 * 64 * 512 + 64 * 640));
    // less the attention output each checkpointed block keeps for its recompute (d floats a token)
    const blocks = flash.num_hidden_layers + flash.num_nextn_predict_layers;
    expect(whole - chunked).toBe(queryPathBytesPerRow(flash) - 4 * blocks * flash.hidden_size);
    expect(activationBytesPerToken(flash, false) - activationBytesPerToken(flash, false, true)).toBe(blocks * queryPathBytesPerRow(flash));
    expect(chunked).toBeLessThan(0.75 * whole);
  });

  it('a refusal names the settings that would lower the need, and a chunk changes the verdict', () => {
    const file = 'recipe.yaml';
    const mem = totalmem();
    // the longest sequence whose chunked estimate fits this machine but whose whole one does not
    const perChunkRow = queryPathBytesPerRow(flash) * 1024;
    const seqLen = Math.floor((mem - perChunkRow) / activationBytesPerToken(flash, true, true));
    expect(seqLen * activationBytesPerToken(flash, true)).toBeGreaterThan(mem);
    const base = { file, seqLen, batchRows: 1, threads: 1, checkpointing: true };
    expect(() => checkTrainBounds({ ...flash, max_position_embeddings: null, rope_scaling: null }, base))
      .toThrow(/recipe\.yaml: train\.batch_rows 1 × data\.seq_len \d+ needs about [\d.]+ GiB .* or set train\.attention_chunk \(e\.g\. 1024\)/);
    expect(() => checkTrainBounds({ ...flash, max_position_embeddings: null, rope_scaling: null }, { ...base, attentionChunk: 1024 })).not.toThrow();
  });
});
