// loadModel: open a checkpoint folder and prepare its weights on a backend.
import { createBackend } from '../backend/index.js';
import type { BackendName } from '../backend/ops.js';
import { Checkpoint } from './checkpoint.js';
import { V4Model } from './v4/model.js';

export interface LoadModelOptions {
  /** `auto` (default: native if built, else tfjs, saying which once), `native`, `tfjs` */
  backend?: BackendName;
  /** where the one-line backend note goes (default stderr) */
  note?: (line: string) => void;
}

export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<V4Model> {
  const ckpt = await Checkpoint.open(dir);
  try {
    const backend = await createBackend(opts.backend ?? 'auto', opts.note);
    return await V4Model.load(ckpt, backend);
  } finally {
    await ckpt.close();
  }
}
