// `train.backend: ascend` is a recipe value; `backend: ascend` without CANN fails saying what is
// missing; `auto` takes ascend only where a device is visible, and elsewhere keeps today's choice
// and says in the same one line why ascend was not taken.
import { describe, expect, it } from 'vitest';
import { createBackend } from '../../../src/backend/index.js';
import { ascendAvailability } from '../../../src/backend/ascend/index.js';
import { trainSchema } from '../../../src/recipe/schema.js';
import { skipNative } from '../native/helpers.js';

describe('the ascend backend choice', () => {
  it('recipes accept train.backend: ascend', () => {
    expect(trainSchema.parse({ backend: 'ascend' }).backend).toBe('ascend');
    expect(() => trainSchema.parse({ backend: 'npu' })).toThrow();
  });

  it.skipIf(skipNative)('the addon carries the Ascend host code and probes for CANN in one line', () => {
    const a = ascendAvailability();
    if (!a.available) {
      expect(a.reason).not.toContain('\n');
      expect(a.reason).not.toContain('built without the Ascend host code');
      expect(a.reason.length).toBeGreaterThan(0);
    }
  });

  it.skipIf(skipNative)('backend ascend without a usable device says what is missing; auto falls back to native saying why', async () => {
    const a = ascendAvailability();
    const notes: string[] = [];
    const be = await createBackend('auto', (l) => notes.push(l));
    expect(notes).toHaveLength(1);
    if (a.available) {
      expect(be.name).toMatch(/^ascend \(NPU/);
      be.dispose();
      return;
    }
    expect(be.name).toMatch(/^native \(/);
    expect(notes[0]).toBe(`v4tune: backend ${be.name} (ascend: ${a.reason})`);
    await expect(createBackend('ascend')).rejects.toThrow(`backend ascend is not available: ${a.reason}`);
  });
});
