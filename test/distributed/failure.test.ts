// failure.test.ts: a rank that dies ends the job. Rank 1 of a 2-rank run is killed (SIGKILL)
// after a few checkpoints; within seconds mpirun ends rank 0, which says why in one line; the
// last checkpoint stays complete, and a single-process --resume continues from it. A rank that
// hangs (SIGSTOP) ends the job after distributed.timeout_s, rank 0 saying which wait ran out.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeFixture, skipWithoutMpi, v4tune, writeRecipe, type Fixture } from './helpers.js';

/** The pid of rank `rank` among the processes running `needle` (from their MPI environment). */
function rankPid(needle: string, rank: number): number | null {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (!readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(needle)) continue;
      const env = readFileSync(`/proc/${d}/environ`, 'utf8').split('\0');
      if (env.includes(`OMPI_COMM_WORLD_RANK=${rank}`)) return Number(d);
    } catch {
      // the process ended while we looked
    }
  }
  return null;
}

const steps = (dir: string): number[] => {
  try {
    return readdirSync(dir).map((n) => /^step-(\d+)$/.exec(n)?.[1]).filter((s) => s !== undefined).map(Number).sort((a, b) => a - b);
  } catch {
    return [];
  }
};

describe.skipIf(skipWithoutMpi())('a rank that dies', () => {
  let fx: Fixture;
  beforeAll(async () => { fx = await makeFixture(); });
  afterAll(() => fx?.cleanup());

  it('ends the other rank with an error within seconds, the last checkpoint intact and resumable', async () => {
    const recipe = writeRecipe(fx, 'long.yaml', 'out-long', 'steps: 500, batch_rows: 2, grad_accum: 2, checkpoint_every: 1, schedule: constant');
    const ckDir = join(fx.dir, 'out-long', 'checkpoints');
    let killedAt = 0;
    let killed: number | null = null;
    const watch = setInterval(() => {
      if (killed !== null || steps(ckDir).length < 3) return;
      killed = rankPid('long.yaml', 1);
      if (killed !== null) {
        killedAt = performance.now();
        process.kill(killed, 'SIGKILL');
      }
    }, 100);
    const r = await v4tune(2, ['train', recipe], { cwd: fx.dir, timeoutMs: 180_000 });
    clearInterval(watch);
    const seconds = (performance.now() - killedAt) / 1000;
    expect(killed).not.toBeNull();
    expect(r.code).not.toBe(0);
    expect(seconds).toBeLessThan(15);
    expect(r.stderr).toMatch(/v4tune: rank 0 of 2: ended by the launcher \(another rank failed or the job was cancelled\); the last complete checkpoint in .*checkpoints is kept/);
    expect(r.stderr).toMatch(/rank 1 .* exited on signal 9/);
    // the last checkpoint is complete: a single-process resume continues from it
    const last = steps(ckDir).at(-1)!;
    expect(last).toBeGreaterThanOrEqual(3);
    const resume = await v4tune(1, ['train', writeRecipe(fx, 'long.yaml', 'out-long', `steps: ${last + 1}, batch_rows: 2, grad_accum: 2, checkpoint_every: 1, schedule: constant`), '--resume'], { cwd: fx.dir });
    expect(resume.code, resume.stderr).toBe(0);
    expect(resume.stdout).toContain(`resuming from ${join(ckDir, `step-${last}`)}`);
  }, 300_000);

  it('a rank that hangs ends the job after distributed.timeout_s with an error naming the wait', async () => {
    const recipe = writeRecipe(fx, 'hang.yaml', 'out-hang', 'steps: 500, batch_rows: 2, grad_accum: 2, checkpoint_every: 1, schedule: constant', 'distributed: { timeout_s: 4 }');
    const ckDir = join(fx.dir, 'out-hang', 'checkpoints');
    let stoppedAt = 0;
    let stopped: number | null = null;
    const watch = setInterval(() => {
      if (stopped !== null || steps(ckDir).length < 3) return;
      stopped = rankPid('hang.yaml', 1);
      if (stopped !== null) {
        stoppedAt = performance.now();
        process.kill(stopped, 'SIGSTOP');
      }
    }, 100);
    const r = await v4tune(2, ['train', recipe], { cwd: fx.dir, timeoutMs: 180_000 });
    clearInterval(watch);
    expect(stopped).not.toBeNull();
    expect(r.code).not.toBe(0);
    const seconds = (performance.now() - stoppedAt) / 1000;
    expect(seconds).toBeGreaterThan(3.5);
    expect(seconds).toBeLessThan(20);
    expect(r.stderr).toMatch(/v4tune: rank 0 of 2: \w+ waited 4 s for the other ranks \(distributed\.timeout_s\): a rank hangs or is far slower; ending the job/);
    expect(steps(ckDir).length).toBeGreaterThanOrEqual(3);
  }, 300_000);
});
