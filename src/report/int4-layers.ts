// INT4 error per layer and kind of linear: the GPTQ output read back from its own files
// (GptqCheckpoint) against the checkpoint it was quantised from, ‖W − Ŵ‖ / ‖W‖ over the
// quantised linears of each (block, kind). One tensor of each in memory at a time.
import { Checkpoint } from '../model/checkpoint.js';
import { GptqCheckpoint } from '../model/gptq-source.js';

export interface LayerError {
  /** `layers.N` or `mtp.N` */
  block: string;
  kind: 'attention' | 'shared_expert' | 'routed_expert';
  tensors: number;
  relRmsError: number;
}

const NAME = /^((?:layers|mtp)\.\d+)\.(attn\.|ffn\.shared_experts\.|ffn\.experts\.)/;

export async function gptqLayerErrors(gptqDir: string, sourceDir: string): Promise<LayerError[]> {
  const g = await GptqCheckpoint.open(gptqDir);
  const src = await Checkpoint.open(sourceDir);
  try {
    const acc = new Map<string, { block: string; kind: LayerError['kind']; tensors: number; err: number; ref: number }>();
    for (const name of g.quantizedNames()) {
      const m = NAME.exec(name);
      if (!m || !src.has(name)) continue;
      const kind = m[2] === 'attn.' ? 'attention' : m[2] === 'ffn.shared_experts.' ? 'shared_expert' : 'routed_expert';
      const w = await src.f32(name);
      const q = await g.f32(name);
      const key = `${m[1]}\0${kind}`;
      const a = acc.get(key) ?? { block: m[1]!, kind, tensors: 0, err: 0, ref: 0 };
      for (let i = 0; i < w.length; i++) {
        const d = w[i]! - q[i]!;
        a.err += d * d;
        a.ref += w[i]! * w[i]!;
      }
      a.tensors++;
      acc.set(key, a);
    }
    const order = (b: string) => (b.startsWith('mtp.') ? 1e9 : 0) + Number(b.split('.')[1]);
    return [...acc.values()]
      .sort((x, y) => order(x.block) - order(y.block) || x.kind.localeCompare(y.kind))
      .map((a) => ({ block: a.block, kind: a.kind, tensors: a.tensors, relRmsError: a.ref > 0 ? Math.sqrt(a.err / a.ref) : 0 }));
  } finally {
    await g.close();
    await src.close();
  }
}
