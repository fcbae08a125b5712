// inspect: parameter counts by part and storage by format, from the headers alone.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { inspectModel, renderModelSummary } from '../../src/model/inspect.js';

const FIXTURE = join(__dirname, '../../../shared/fixtures/v4-tiny-ref/checkpoint');

describe('inspectModel on the reference fixture', () => {
  it('counts parameters by part (hand-computed) and bytes by format', async () => {
    const s = await inspectModel(FIXTURE);
    expect(s.layout).toBe('official');
    expect(s.tokenizer).toBe(false);
    // routed experts: 4 layers x 8 experts x 3 matrices of 32x64
    expect(s.parameters['routed experts']).toBe(4 * 8 * 3 * 32 * 64);
    expect(s.parameters['embed+head']).toBe(2 * 1000 * 64);
    // shared expert: 4 layers x 3 x 32x64
    expect(s.parameters['shared expert']).toBe(4 * 3 * 32 * 64);
    // MTP: everything under mtp.0
    expect(s.parameters.MTP).toBeGreaterThan(8 * 3 * 32 * 64);
    expect(s.parameters.other).toBe(0);
    // FP4: 4 layers + MTP, 8 experts x 3 -> 120 tensors of 32x32 bytes + 32x2 (or 64x1) scales
    expect(s.formats.fp4).toEqual({ tensors: 120, bytes: 120 * (1024 + 64) });
    // every byte of every tensor: equals the index's total_size
    expect(s.totalBytes).toBe(1035553);
    const text = renderModelSummary(s);
    expect(text).toContain('official layout');
    expect(text).toMatch(/routed experts\s+196\.61k/);
  });
});
