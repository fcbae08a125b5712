// Runs that continue: a run stopped three times (once as by a hard kill, losing its newest
// checkpoint) and resumed each time ends with the train.json, log and report of a run never
// stopped (times aside); a finished run extends to more steps (the schedule's new length
// stated); train.epochs; a warm start from an adapter; keep_checkpoints keeps the newest N and
// the best; early stopping ends a run whose eval loss stops improving.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { tryLoadAddon } from '../../src/backend/native/addon.js';
import { trainRecipe } from '../../src/stages/train.js';
import { V4tuneError } from '../../src/errors.js';
import { readTrainJson, trainingSection } from '../../src/report/collect.js';
import { learningRate } from '../../src/train/schedule.js';
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
const TIMES = new Set(['train_seconds', 'wall_seconds', 'tokens_per_s', 'tokensPerSecond', 'seconds', 'elapsed', 'resumed_from', 'resumes', 'generated_at']);
/** A JSON value with times (and the resume history) removed and the run folder named OUT. */
function timeless(x: unknown, out: string): unknown {
  return JSON.parse(JSON.stringify(x, (k, v: unknown) => (TIMES.has(k) ? undefined : typeof v === 'string' ? v.split(out).join('OUT') : v)));
}
const readJson = (p: string) => JSON.parse(readFileSync(p, 'utf8')) as Json;
const logLines = (out: string) => readFileSync(join(out, 'train-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Json);
const stopAt = (step: number) => quietContext((done) => { if (done === step) process.emit('SIGINT'); });

async function interrupted(p: Promise<unknown>): Promise<void> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(V4tuneError);
  expect((e as V4tuneError).exitCode).toBe(130);
}

describe('runs that continue', () => {
  const train = { steps: 8, batch_rows: 2, checkpoint_every: 2, eval_every: 2, lr: 5e-3, warmup_steps: 1 };

  it('stopped 3 times (once losing its newest checkpoint, as a hard kill does) and resumed: train.json, log and report equal a straight run\'s', async () => {
    const straight = join(fx.dir, 'k-straight');
    await trainRecipe(fixtureRecipe(fx, straight, train), quietContext(), { evalRows: 2 });

    const out = join(fx.dir, 'k-stopped');
    const recipe = fixtureRecipe(fx, out, train);
    await interrupted(trainRecipe(recipe, stopAt(3), { evalRows: 2 }));
    await interrupted(trainRecipe(recipe, stopAt(5), { resume: true, evalRows: 2 }));
    // a hard kill after step 5's checkpoint would have been written: resume from step 4 instead
    rmSync(join(out, 'checkpoints', 'step-5'), { recursive: true });
    const ctx = stopAt(6);
    await interrupted(trainRecipe(recipe, ctx, { resume: true, evalRows: 2 }));
    expect(ctx.lines.join('\n')).toContain('(step 4 of 8)');
    const resumedCtx = quietContext();
    const done = await trainRecipe(recipe, resumedCtx, { resume: true, evalRows: 2 });
    expect(done).toMatchObject({ ok: true, step: 8, resumes: [3, 4, 6], resumed_from: 6 });

    const a = readJson(join(straight, 'train.json'));
    const b = readJson(join(out, 'train.json'));
    expect(timeless(b, out)).toEqual(timeless(a, straight));
    expect(b.eval_before).not.toBeNull();
    expect(b.tokens).toBe(a.tokens);
    expect(b.train_seconds as number).toBeGreaterThan(0);
    expect(timeless(logLines(out), out)).toEqual(timeless(logLines(straight), straight));
    const rep = (o: string) => trainingSection(fixtureRecipe(fx, o, train), readTrainJson(fixtureRecipe(fx, o, train)));
    expect(timeless(rep(out), out)).toEqual(timeless(rep(straight), straight));
    expect(rep(out)).toMatchObject({ status: 'ok', evalBefore: { rows: 2 } });

    // --resume of the finished run: the whole run's numbers, not "0 tokens in 0.0 s"
    const again = await trainRecipe(recipe, quietContext(), { resume: true, evalRows: 2 });
    expect(again.tokens).toBe(a.tokens);
    expect(again.eval_before).toEqual(a.eval_before);
  });

  it('extends a finished run to more steps, stating the schedule\'s new length', async () => {
    const out = join(fx.dir, 'extend');
    const short = { ...train, steps: 4 };
    await trainRecipe(fixtureRecipe(fx, out, short), quietContext(), { evalRows: 1 });
    const longer = { ...train, steps: 6 };
    const ctx = quietContext();
    const r = await trainRecipe(fixtureRecipe(fx, out, longer), ctx, { resume: true, evalRows: 1 });
    expect(r).toMatchObject({ ok: true, step: 6, steps: 6, extended_from: 4 });
    expect(ctx.lines.join('\n')).toMatch(/extending the run from 4 to 6 steps: the cosine learning-rate schedule now spans 6 steps/);
    const log = logLines(out);
    expect(log.map((l) => l.step)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    const s = { lr: 5e-3, schedule: 'cosine' as const, warmupSteps: 1, steps: 6 };
    expect(log[5]!.lr).toBe(learningRate(4, s));
    expect(log[4]!.lr).toBe(learningRate(3, { ...s, steps: 4 }));
    // `run` (auto) resumes the extension; a shorter run than the checkpoint is refused
    await expect(trainRecipe(fixtureRecipe(fx, out, { ...train, steps: 5 }), quietContext(), { resume: true })).rejects.toThrow(/at step 6, past the 5 steps .* extended, not shortened/);
  });

  it('train.epochs sets the steps from the train split; a warm start begins from an adapter', async () => {
    const out = join(fx.dir, 'epochs');
    const r = await trainRecipe(fixtureRecipe(fx, out, { ...train, steps: undefined, epochs: 1.5 }), quietContext(), { evalRows: 1 });
    const rows = r.train_rows as number;
    expect(r.steps).toBe(Math.ceil((1.5 * rows) / 2));
    expect(r.epochs).toBeCloseTo((r.steps as number) * 2 / rows, 10);

    const warm = join(fx.dir, 'warm');
    const w = await trainRecipe(fixtureRecipe(fx, warm, { ...train, steps: 1, warm_start: join(out, 'adapter') }), quietContext(), { evalRows: 1 });
    // step 0 evaluates the adapter it starts from
    expect(w.eval_before).toEqual(r.eval_after);
    await expect(trainRecipe(fixtureRecipe(fx, join(fx.dir, 'warm-bad'), { ...train, steps: 1, warm_start: join(out, 'adapter') }, { r: 2 }), quietContext()))
      .rejects.toThrow(/train\.warm_start .*another r\?/);
  });

  it('keep_checkpoints keeps the newest N and the best by eval loss', async () => {
    const out = join(fx.dir, 'keep');
    const r = await trainRecipe(fixtureRecipe(fx, out, { ...train, steps: 8, eval_every: 1, checkpoint_every: 1, keep_checkpoints: 2, lr: 3e-2 }), quietContext(), { evalRows: 2 });
    const evals = logLines(out).filter((l) => l.step !== 0 && typeof l.eval_loss === 'number');
    let best = evals[0]!;
    for (const l of evals) if ((l.eval_loss as number) < (best.eval_loss as number)) best = l;
    const kept = readdirSync(join(out, 'checkpoints')).sort((x, y) => Number(x.slice(5)) - Number(y.slice(5)));
    expect(kept).toEqual([...new Set([`step-${best.step}`, 'step-7', 'step-8'])].sort((x, y) => Number(x.slice(5)) - Number(y.slice(5))));
    expect(r.best).toEqual({ step: best.step, eval_loss: best.eval_loss, checkpoint: join(out, 'checkpoints', `step-${best.step}`) });
  });

  it('early stopping ends the run after `patience` evals without a better eval loss, keeping the best checkpoint', async () => {
    const out = join(fx.dir, 'early');
    // a min_delta no eval can beat: the first eval stays the best
    const t = { ...train, steps: 8, eval_every: 1, checkpoint_every: 0, early_stopping_patience: 2, early_stopping_min_delta: 100 };
    const ctx = quietContext();
    const r = await trainRecipe(fixtureRecipe(fx, out, t), ctx, { evalRows: 1 });
    expect(r).toMatchObject({ ok: true, stopped_early: true, step: 3, steps: 8, best: { step: 1 } });
    expect(ctx.lines.join('\n')).toMatch(/early stopping at step 3: 2 evals without a lower eval loss/);
    expect(existsSync(join(out, 'checkpoints', 'step-1', 'adapter'))).toBe(true);
    expect(existsSync(join(out, 'adapter', 'adapter_model.safetensors'))).toBe(true);
    // `run` reuses the early-stopped run as finished
    expect(await trainRecipe(fixtureRecipe(fx, out, t), quietContext(), { auto: true, evalRows: 1 })).toMatchObject({ reused: true, stopped_early: true });
  });
});
