// Backend selection: `auto` = ascend where CANN and an Ascend device are visible, else native when
// its addon is built, else tfjs (saying which, once, and in the same line why ascend was not
// taken); under CI=true a missing native addon is an error, so CI never passes on the fallback alone.
import { V4tuneError } from '../errors.js';
import type { Backend, BackendName } from './ops.js';

let noted = false;

// tfjs loaded on first use: a command on the native backend (or none) starts without it
async function createTfjsBackend(): Promise<Backend> {
  const mod = await import('./tfjs/index.js');
  return mod.createTfjsBackend();
}

async function tryNative(): Promise<{ backend: Backend | null; reason: string }> {
  try {
    const mod = await import('./native/index.js');
    return { backend: await mod.createNativeBackend(), reason: '' };
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    return { backend: null, reason: msg };
  }
}

/**
 * The backend for `name`. `auto` tries native, then tfjs, and reports its choice once per process
 * through `note` (default: stderr).
 */
export async function createBackend(name: BackendName = 'auto', note: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Promise<Backend> {
  if (name === 'tfjs') return createTfjsBackend();
  let ascendReason = '';
  if (name === 'ascend' || name === 'auto') {
    const { ascendAvailability, createAscendBackend } = await import('./ascend/index.js');
    const a = ascendAvailability();
    if (a.available || name === 'ascend') {
      const be = await createAscendBackend();
      if (name === 'auto' && !noted) note(`v4tune: backend ${be.name}`);
      noted = true;
      return be;
    }
    ascendReason = ` (ascend: ${a.reason})`;
  }
  const native = await tryNative();
  if (native.backend) {
    if (name === 'auto' && !noted) note(`v4tune: backend ${native.backend.name}${ascendReason}`);
    noted = true;
    return native.backend;
  }
  if (name === 'native') throw new V4tuneError(`backend native is not available: ${native.reason}`);
  if (process.env.CI === 'true') {
    throw new V4tuneError(`backend auto: the native addon is not available under CI=true (${native.reason}); CI must not pass on the tfjs fallback alone`);
  }
  const be = await createTfjsBackend();
  if (!noted) note(`v4tune: backend ${be.name} (the native addon is not built)`);
  noted = true;
  return be;
}

export type { Backend, BackendName } from './ops.js';
