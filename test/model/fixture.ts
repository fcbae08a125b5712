// Helpers for the reference fixture ../shared/fixtures/v4-tiny-ref.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const FIXTURE = join(__dirname, '..', '..', '..', 'shared', 'fixtures', 'v4-tiny-ref');

export interface FixtureCase {
  name: string;
  tokens: number;
  segments: number[] | null;
  ids: string;
  logits: string;
  logits_shape: [number, number];
}

export interface FixtureCases {
  cases: FixtureCase[];
  lora: { adapter: string; ids: string; loss_mask: string; segments: number[]; loss: number; grads: string; logits: string; logits_shape: [number, number] };
}

export const cases = (): FixtureCases => JSON.parse(readFileSync(join(FIXTURE, 'cases.json'), 'utf8')) as FixtureCases;

const bytes = (f: string): Buffer => readFileSync(join(FIXTURE, f));
export const readI32 = (f: string): Int32Array => {
  const b = bytes(f);
  return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
export const readF32 = (f: string): Float32Array => {
  const b = bytes(f);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
export const readU8 = (f: string): Uint8Array => new Uint8Array(bytes(f));

/** max |a − b| / max |b| */
export function relMaxErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

import { SafetensorsFile } from '../../src/model/safetensors.js';
import type { LoraFactors } from '../../src/backend/ops.js';
import type { ModelAdapter } from '../../src/model/v4/model.js';

/** Every F32 tensor of a safetensors file. */
export function readF32Tensors(path: string): Map<string, { shape: number[]; data: Float32Array }> {
  const f = SafetensorsFile.open(path);
  try {
    const out = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [name, e] of f.entries) {
      if (e.dtype !== 'F32') throw new Error(`${path}: ${name} is ${e.dtype}, expected F32`);
      const b = f.read(name);
      out.set(name, { shape: e.shape, data: new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)) });
    }
    return out;
  } finally {
    f.close();
  }
}

/** The fixture's PEFT adapter as the model applies it (scaling = alpha / r). */
export function fixtureAdapter(): ModelAdapter {
  const cfg = JSON.parse(readFileSync(join(FIXTURE, 'adapter', 'adapter_config.json'), 'utf8')) as { r: number; lora_alpha: number };
  const t = readF32Tensors(join(FIXTURE, 'adapter', 'adapter_model.safetensors'));
  const mods = new Map<string, LoraFactors>();
  for (const [key, a] of t) {
    const m = /^base_model\.model\.(.+)\.lora_A\.weight$/.exec(key);
    if (!m) continue;
    const b = t.get(`base_model.model.${m[1]}.lora_B.weight`);
    if (!b) throw new Error(`no lora_B for ${m[1]}`);
    mods.set(m[1], { A: a.data, B: b.data, r: a.shape[0], scaling: cfg.lora_alpha / cfg.r });
  }
  return { factors: (name) => mods.get(name), modules: () => mods.keys() };
}
