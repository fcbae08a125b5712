// Watching a run: every progress line has elapsed time and an ETA, evals are printed as they
// happen, eval prompts are continued at every eval (log, TensorBoard), and TensorBoard's own
// reader (EventAccumulator) reads the event files v4tune writes — across a resume too.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { trainRecipe } from '../../src/stages/train.js';
import { crc32c, maskedCrc32c } from '../../src/train/tensorboard.js';
import { runPython, skipPython } from '../interop/python.js';
import { fixtureRecipe, makeFixture, quietContext, type Fixture } from './helpers.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

let fx: Fixture;
const addon = tryLoadAddon();
const threadsBefore = addon?.info().threads ?? 0;
beforeAll(async () => {
  addon?.setThreads(1);
  fx = await makeFixture(20); // 20 distinct documents: the hash-drawn eval split is not empty
});
afterAll(() => {
  addon?.setThreads(threadsBefore);
  fx?.cleanup();
});

type Json = Record<string, unknown>;
const logLines = (out: string) => readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Json);

const READ_EVENTS = `
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}, "text": {}}
for t in tags["tensors"]:
    out["text"][t] = [[e.step, e.tensor_proto.string_val[0].decode("utf8")] for e in acc.Tensors(t)]
print(json.dumps(out))
`;

describe('watching a run', () => {
  it('CRC-32C is Castagnoli\'s (RFC 3720 check value) and TFRecord masks it', () => {
    expect(crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    const c = 0xe3069283;
    expect(maskedCrc32c(new TextEncoder().encode('123456789'))).toBe(((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0);
  });

  it('progress lines carry elapsed and ETA; evals and eval-prompt samples are printed as they happen and logged', async () => {
    const out = join(fx.dir, 'watch');
    const notes: string[] = [];
    const ctx = quietContext();
    ctx.progress = () => ({ update: (_d, note) => { if (note) notes.push(note); }, stop: () => {} });
    const r = await trainRecipe(fixtureRecipe(fx, out, { steps: 4, eval_every: 2, eval_prompts: ['pump P-1 pressure', { chat: 'Status of P-2?' }], eval_max_new_tokens: 4 }), ctx, { evalRows: 1 });
    expect(notes).toHaveLength(4);
    for (const n of notes) expect(n).toMatch(/tok\/s · \d+\.\ds elapsed · ETA \d+\.\ds/);
    const text = ctx.lines.join('\n');
    expect(text).toMatch(/step 2\/4: eval loss \d+\.\d{4}, perplexity/);
    expect(text).toMatch(/step 4\/4: eval loss/);
    expect(text).toMatch(/sample @2: "pump P-1 pressure" → /);
    expect(text).toMatch(/sample @4: "Status of P-2\?" → /);
    const evals = logLines(out).filter((l) => 'eval_loss' in l);
    expect(evals.map((l) => l.step)).toEqual([0, 2, 4]);
    for (const l of evals) expect((l.samples as Json[]).map((x) => x.prompt)).toEqual(['pump P-1 pressure', 'Status of P-2?']);
    expect(r.samples.length).toBe(2);
    expect(typeof (logLines(out)[1]!.elapsed)).toBe('number');
  });

  it.skipIf(skipPython)('TensorBoard\'s EventAccumulator reads the logged scalars and samples, and a resumed run\'s steps once each', async () => {
    const out = join(fx.dir, 'tb');
    const train = { steps: 5, eval_every: 2, checkpoint_every: 1, log_to: ['jsonl', 'tensorboard'], eval_prompts: ['pump P-3'], eval_max_new_tokens: 3 };
    const recipe = fixtureRecipe(fx, out, train);
    await trainRecipe(recipe, quietContext((done) => { if (done === 3) process.emit('SIGINT'); }), { evalRows: 1 }).catch(() => null);
    await trainRecipe(recipe, quietContext(), { resume: true, evalRows: 1 });
    expect(readdirSync(join(out, 'tensorboard')).filter((f) => f.startsWith('events.out.tfevents.'))).toHaveLength(2);
    const tb = JSON.parse(runPython(READ_EVENTS, [join(out, 'tensorboard')]).trim()) as {
      scalars: Record<string, [number, number][]>;
      text: Record<string, [number, string][]>;
    };
    const log = logLines(out);
    const f32 = (x: unknown) => Math.fround(x as number);
    const steps = log.filter((l) => typeof l.loss === 'number');
    expect(tb.scalars['train/loss']).toEqual(steps.map((l) => [l.step, f32(l.loss)]));
    expect(tb.scalars['train/lr']).toEqual(steps.map((l) => [l.step, f32(l.lr)]));
    expect(tb.scalars['train/grad_norm']).toEqual(steps.map((l) => [l.step, f32(l.grad_norm)]));
    expect(tb.scalars['train/tokens_per_s']!.map(([s]) => s)).toEqual([1, 2, 3, 4, 5]);
    expect(tb.scalars['eval/loss']).toEqual(log.filter((l) => 'eval_loss' in l).map((l) => [l.step, f32(l.eval_loss)]));
    const samples = log.filter((l) => 'samples' in l).map((l) => [l.step, (l.samples as { prompt: string; completion: string }[]).map((x) => `**${x.prompt}** → ${x.completion}`).join('\n\n')]);
    expect(tb.text.samples).toEqual(samples);
  });
});
