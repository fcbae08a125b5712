// loadModel: open a checkpoint folder and prepare its weights on a backend. A folder whose
// config.json declares a GPTQ quantization_config (what `quantize --format gptq` writes) is read
// back through GptqCheckpoint, its INT4 linears dequantised.
import { createBackend } from '../backend/index.js';
import type { BackendName } from '../backend/ops.js';
import { Checkpoint } from './checkpoint.js';
import { GptqCheckpoint, isGptqFolder } from './gptq-source.js';
import { V4Model } from './v4/model.js';
import type { ModelSource } from './v4/weights.js';

export interface LoadModelOptions {
  /** `auto` (default: native if built, else tfjs, saying which once), `native`, `tfjs` */
  backend?: BackendName;
  /** where the one-line backend note goes (default stderr) */
  note?: (line: string) => void;
}

/** The weights of a model folder as the graph reads them: a GPTQ folder or a checkpoint as shipped. */
export async function openModelSource(dir: string): Promise<ModelSource & { close(): Promise<void> }> {
  return isGptqFolder(dir) ? GptqCheckpoint.open(dir) : Checkpoint.open(dir);
}

export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<V4Model> {
  const src = await openModelSource(dir);
  try {
    const backend = await createBackend(opts.backend ?? 'auto', opts.note);
    return await V4Model.load(src, backend);
  } finally {
    await src.close();
  }
}
