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

import { SafetensorsFile } from '../../src/model/safetensors.js';
import { relErr } from '../ref64.js';

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

/**
 * The fixture lora case's gradient check (README: per tensor max|Δ|/max|ref| ≤ 1e-3): the keys
 * must be exactly the reference's; returns `key: error` for every tensor over the bound.
 */
export function loraGradMismatches(grads: Map<string, Float32Array>, bound = 1e-3): string[] {
  const ref = readF32Tensors(join(FIXTURE, cases().lora.grads));
  const bad: string[] = [];
  const keys = [...grads.keys()].sort().join(',');
  if (keys !== [...ref.keys()].sort().join(',')) bad.push(`keys differ from the reference's (${grads.size} vs ${ref.size})`);
  for (const [k, r] of ref) {
    const g = grads.get(k);
    const e = g ? relErr(g, r.data) : Infinity;
    if (!(e <= bound)) bad.push(`${k}: ${e}`);
  }
  return bad;
}
