// A float64 V4 forward composed from the ops of ref64.ts, reading a checkpoint's weights (FP8,
// FP4, BF16 dequantised: every value is exact in float32, so each product is a float64 product of
// the shipped values). Written for short single-segment sequences at full width (the flash
// preset): the indexer's top-k is at least the number of visible compressed entries there, so
// every visible entry is attended and the indexer's choice need not be computed.
//
//   X = embed(ids) in hc streams; per layer: X ← hc_post(attn(attn_norm(hc_pre(X)))), then the
//   same around the MoE; loss over the counted positions of head(norm(hc_head(X))).
import type { Checkpoint } from '../../src/model/checkpoint.js';
import type { V4Config } from '../../src/model/config.js';
import { ropeFreqs, ropeParamsFor } from '../../src/model/v4/rope.js';
import * as R from '../ref64.js';

/** LoRA factors of one module (official module name), float64. */
export interface Lora64 {
  A: Float64Array;
  B: Float64Array;
  r: number;
  s: number;
}

/**
 * Weights are float32 arrays whose values are exact (dequantised FP8/FP4/BF16); ref64's ops read
 * them element by element as doubles, so they are passed without a float64 copy.
 */
const asA = (w: Float32Array): R.A => w as unknown as R.A;

/** The last result of one product, with what it was computed from. */
interface Memo {
  x: Float64Array;
  lora: readonly (Lora64 | undefined)[];
  y: Float64Array;
}

export class FlashRef64 {
  private readonly cache = new Map<string, Float32Array>();
  /**
   * Per module (a linear, or a whole expert): its last input, LoRA factor objects and output.
   * A finite difference moves one module family's factors (new objects) and keeps the others'
   * objects, so every product upstream of the moved family, and every expert it does not
   * touch, is taken from here instead of recomputed; a hit needs the same factor objects and an
   * equal input, so the result is the one recomputing would give.
   */
  private readonly memo = new Map<string, Memo>();
  constructor(private readonly ck: Checkpoint, private readonly c: V4Config) {}

  private remembered(key: string, x: Float64Array, lora: readonly (Lora64 | undefined)[], f: () => Float64Array): Float64Array {
    const m = this.memo.get(key);
    if (m && m.x.length === x.length && m.lora.every((l, i) => l === lora[i]) && m.x.every((v, i) => v === x[i])) return m.y;
    const y = f();
    this.memo.set(key, { x: x.slice(), lora, y });
    return y;
  }

  private async w(name: string): Promise<R.A> {
    let v = this.cache.get(name);
    if (!v) {
      v = await this.ck.f32(name);
      this.cache.set(name, v);
    }
    return asA(v);
  }

  /** rows `ids` of embed.weight, and the head applied to x [N, d] (both streamed from the bf16 bytes) */
  private async embed(ids: Int32Array): Promise<Float64Array> {
    const d = this.c.hidden_size;
    const raw = (await this.ck.raw('embed.weight')).data;
    const out = new Float64Array(ids.length * d);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    ids.forEach((id, t) => {
      for (let k = 0; k < d; k++) {
        const o = 2 * (id * d + k);
        u[0] = (raw[o]! | (raw[o + 1]! << 8)) << 16;
        out[t * d + k] = f[0]!;
      }
    });
    return out;
  }

  private async head(x: Float64Array, N: number): Promise<Float64Array> {
    const d = this.c.hidden_size;
    const V = this.c.vocab_size;
    const raw = (await this.ck.raw('head.weight')).data;
    const y = new Float64Array(N * V);
    const rows = 4096;
    const chunk = new Float32Array(rows * d);
    const cu = new Uint32Array(chunk.buffer);
    for (let v0 = 0; v0 < V; v0 += rows) {
      const nv = Math.min(rows, V - v0);
      for (let i = 0; i < nv * d; i++) {
        const o = 2 * (v0 * d + i);
        cu[i] = (raw[o]! | (raw[o + 1]! << 8)) << 16;
      }
      const part = R.linear(x, asA(chunk.subarray(0, nv * d)), N, d, nv);
      for (let n = 0; n < N; n++) y.set(part.subarray(n * nv, (n + 1) * nv), n * V + v0);
    }
    return y;
  }

  /** logits [T, V] of one sequence with the adapter's LoRA (module name → factors) */
  async logits(ids: Int32Array, lora: Map<string, Lora64>): Promise<Float64Array> {
    const x = await this.hidden(ids, lora);
    return this.head(x, ids.length);
  }

  /** mean next-token loss over positions t with mask[t+1] = 1 (one segment) */
  async loss(ids: Int32Array, mask: Uint8Array, lora: Map<string, Lora64>): Promise<number> {
    const T = ids.length;
    const d = this.c.hidden_size;
    const V = this.c.vocab_size;
    const x = await this.hidden(ids, lora);
    const rows: number[] = [];
    for (let t = 0; t + 1 < T; t++) if (mask[t + 1]) rows.push(t);
    const xs = new Float64Array(rows.length * d);
    rows.forEach((t, i) => xs.set(x.subarray(t * d, (t + 1) * d), i * d));
    const l = await this.head(xs, rows.length);
    let sum = 0;
    rows.forEach((t, i) => {
      const row = l.subarray(i * V, (i + 1) * V);
      let mx = -Infinity;
      for (const v of row) mx = Math.max(mx, v);
      let s = 0;
      for (const v of row) s += Math.exp(v - mx);
      sum += mx + Math.log(s) - row[ids[t + 1]!]!;
    });
    return sum / rows.length;
  }

  /** norm(hc_head(X)) after every layer: [T, d] */
  async hidden(ids: Int32Array, lora: Map<string, Lora64>): Promise<Float64Array> {
    const c = this.c;
    const T = ids.length;
    const d = c.hidden_size;
    const hc = c.hc_mult;
    const e = await this.embed(ids);
    let X: R.A = new Float64Array(T * hc * d);
    for (let t = 0; t < T; t++) for (let i = 0; i < hc; i++) X.set(e.subarray(t * d, (t + 1) * d), (t * hc + i) * d);
    for (let l = 0; l < c.num_hidden_layers; l++) {
      const p = `layers.${l}`;
      const a = await this.mhcPre(X, `${p}.hc_attn`, T);
      const ao = await this.attention(R.rmsnorm(a.y, await this.w(`${p}.attn_norm.weight`), T, d, c.rms_norm_eps), p, ids, lora, c.compress_ratios[l]!);
      const X1 = R.mhcPost(ao, X, a.post, a.comb, T, hc, d);
      const f = await this.mhcPre(X1, `${p}.hc_ffn`, T);
      const fo = await this.moe(R.rmsnorm(f.y, await this.w(`${p}.ffn_norm.weight`), T, d, c.rms_norm_eps), p, lora);
      X = R.mhcPost(fo, X1, f.post, f.comb, T, hc, d);
    }
    const h = R.hcHead(X, await this.w('hc_head_fn'), await this.w('hc_head_scale'), await this.w('hc_head_base'), T, hc, d, c.hc_eps, c.rms_norm_eps);
    return R.rmsnorm(h, await this.w('norm.weight'), T, d, c.rms_norm_eps);
  }

  private async mhcPre(X: Float64Array, p: string, T: number): Promise<{ y: Float64Array; post: Float64Array; comb: Float64Array }> {
    const c = this.c;
    return R.mhcPre(X, await this.w(`${p}_fn`), await this.w(`${p}_scale`), await this.w(`${p}_base`), T, c.hc_mult, c.hidden_size, c.hc_sinkhorn_iters, c.hc_eps, c.rms_norm_eps);
  }

  private async lin(x: Float64Array, mod: string, N: number, inF: number, outF: number, lora: Map<string, Lora64>): Promise<Float64Array> {
    const W = await this.w(`${mod}.weight`);
    return this.remembered(mod, x, [lora.get(mod)], () => R.linear(x, W, N, inF, outF, lora.get(mod)));
  }

  private async attention(x: Float64Array, p: string, ids: Int32Array, lora: Map<string, Lora64>, ratio: number): Promise<Float64Array> {
    const c = this.c;
    const T = ids.length;
    const d = c.hidden_size;
    const H = c.num_attention_heads;
    const hd = c.head_dim;
    const rd = c.qk_rope_head_dim;
    const eps = c.rms_norm_eps;
    const m = `${p}.attn`;
    const freqs = ropeFreqs(ropeParamsFor(c, ratio));
    const pos = Int32Array.from({ length: T }, (_, t) => t);
    const qr = R.rmsnorm(await this.lin(x, `${m}.wq_a`, T, d, c.q_lora_rank, lora), await this.w(`${m}.q_norm.weight`), T, c.q_lora_rank, eps);
    const q = R.rope(R.rmsnorm(await this.lin(qr, `${m}.wq_b`, T, c.q_lora_rank, H * hd, lora), null, T * H, hd, eps), pos, freqs, T, H, hd, rd, false);
    const kv = R.rope(R.rmsnorm(await this.lin(x, `${m}.wkv`, T, d, hd, lora), await this.w(`${m}.kv_norm.weight`), T, hd, eps), pos, freqs, T, 1, hd, rd, false);
    // compressed entries (whole windows only), RMSNorm then RoPE at the window start
    let keys = kv;
    const M = ratio > 0 ? Math.floor(T / ratio) : 0;
    if (M > 0) {
      const cm = `${m}.compressor`;
      const cw = ratio === 4 ? 2 * hd : hd;
      const a = await this.lin(x, `${cm}.wkv`, T, d, cw, lora);
      const z = await this.lin(x, `${cm}.wgate`, T, d, cw, lora);
      const pooled = R.compressor(a, z, await this.w(`${cm}.ape`), [T], ratio, hd, ratio === 4);
      const normed = R.rmsnorm(pooled, await this.w(`${cm}.norm.weight`), M, hd, eps);
      const ent = R.rope(normed, Int32Array.from({ length: M }, (_, i) => i * ratio), freqs, M, 1, hd, rd, false);
      if (ratio === 4 && c.index_topk < M) throw new Error('FlashRef64: the indexer would choose; use a shorter sequence');
      keys = new Float64Array((T + M) * hd);
      keys.set(kv);
      keys.set(ent, T * hd);
    }
    // query t: raw kv in the window, and every entry i with i < (t+1) div ratio
    const K = Math.min(c.sliding_window, T) + M;
    const idx = new Int32Array(T * K).fill(-1);
    for (let t = 0; t < T; t++) {
      let j = 0;
      for (let s = Math.max(0, t - c.sliding_window + 1); s <= t; s++) idx[t * K + j++] = s;
      if (ratio > 0) for (let i = 0; i < Math.floor((t + 1) / ratio); i++) idx[t * K + j++] = T + i;
    }
    const o = R.attention(q, keys, await this.w(`${m}.attn_sink`), idx, T, H, hd, K, Math.pow(hd, -0.5));
    const oc = R.rope(o, pos, freqs, T, H, hd, rd, true);
    const G = c.o_groups;
    const woa = lora.get(`${m}.wo_a`);
    const woaW = await this.w(`${m}.wo_a.weight`);
    const oa = this.remembered(`${m}.wo_a`, oc, [woa], () => R.groupedLinear(oc, woaW, T, G, (H * hd) / G, c.o_lora_rank, woa));
    return this.lin(oa, `${m}.wo_b`, T, G * c.o_lora_rank, d, lora);
  }

  private async expert(mod: string, lora: Map<string, Lora64>): Promise<R.Expert64> {
    return {
      w1: await this.w(`${mod}.w1.weight`),
      w2: await this.w(`${mod}.w2.weight`),
      w3: await this.w(`${mod}.w3.weight`),
      lora: { w1: lora.get(`${mod}.w1`), w2: lora.get(`${mod}.w2`), w3: lora.get(`${mod}.w3`) },
    };
  }

  /** one expert's clamped SwiGLU on N rows */
  private async swiglu(x: Float64Array, mod: string, lora: Map<string, Lora64>, N: number): Promise<Float64Array> {
    const e = await this.expert(mod, lora);
    const c = this.c;
    return this.remembered(mod, x, [e.lora?.w1, e.lora?.w2, e.lora?.w3], () => R.swiglu(x, e, N, c.hidden_size, c.moe_intermediate_size, c.swiglu_limit));
  }

  private async moe(x: Float64Array, p: string, lora: Map<string, Lora64>): Promise<Float64Array> {
    const c = this.c;
    const T = x.length / c.hidden_size;
    const d = c.hidden_size;
    const E = c.n_routed_experts;
    const k = c.num_experts_per_tok;
    const I = c.moe_intermediate_size;
    const layer = Number(p.split('.')[1]);
    if (layer < c.num_hash_layers) throw new Error('FlashRef64: hash-routed layers are not modelled');
    const gate = await this.w(`${p}.ffn.gate.weight`);
    const bias = await this.w(`${p}.ffn.gate.bias`);
    // selection: top-k of s + bias, ties to the lower index
    const s = R.routerWeights(x, gate, new Int32Array(T * k), T, d, E, k, 1).scores;
    const idx = new Int32Array(T * k);
    for (let t = 0; t < T; t++) {
      const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => s[t * E + b]! + bias[b]! - (s[t * E + a]! + bias[a]!) || a - b);
      idx.set(order.slice(0, k), t * k);
    }
    const { weights } = R.routerWeights(x, gate, idx, T, d, E, k, c.routed_scaling_factor);
    // each expert on the rows routed to it (R.moe's sum, grouped by expert)
    const routed = new Float64Array(T * d);
    for (let e = 0; e < E; e++) {
      const rows: number[] = [];
      for (let j = 0; j < T * k; j++) if (idx[j] === e) rows.push(j);
      if (rows.length === 0) continue;
      const xe = new Float64Array(rows.length * d);
      rows.forEach((j, r) => xe.set(x.subarray(Math.floor(j / k) * d, (Math.floor(j / k) + 1) * d), r * d));
      const ye = await this.swiglu(xe, `${p}.ffn.experts.${e}`, lora, rows.length);
      rows.forEach((j, r) => {
        const t = Math.floor(j / k);
        for (let cc = 0; cc < d; cc++) routed[t * d + cc]! += weights[j]! * ye[r * d + cc]!;
      });
    }
    const shared = await this.swiglu(x, `${p}.ffn.shared_experts`, lora, T);
    for (let i = 0; i < routed.length; i++) routed[i]! += shared[i]!;
    return routed;
  }
}
