// Float64 reference implementations of the V4 ops, written independently of the backends, with
// the same shapes and conventions as src/backend/ops.ts. Used for forward checks and as the
// function whose finite differences check each backward.
export type A = Float64Array;

export const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** y [N, C] = x / sqrt(mean(x²) + eps) ⊙ w */
export function rmsnorm(x: A, w: A | null, N: number, C: number, eps: number): A {
  const y = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[n * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) y[n * C + c] = x[n * C + c] * r * (w ? w[c] : 1);
  }
  return y;
}

/** y [N, out] = x Wᵀ (+ s (x Aᵀ) Bᵀ) */
export function linear(x: A, W: A, N: number, inF: number, outF: number, lora?: { A: A; B: A; r: number; s: number }): A {
  const y = new Float64Array(N * outF);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < outF; o++) {
      let acc = 0;
      for (let i = 0; i < inF; i++) acc += x[n * inF + i] * W[o * inF + i];
      y[n * outF + o] = acc;
    }
    if (lora) {
      const u = new Float64Array(lora.r);
      for (let j = 0; j < lora.r; j++) for (let i = 0; i < inF; i++) u[j] += x[n * inF + i] * lora.A[j * inF + i];
      for (let o = 0; o < outF; o++) {
        let acc = 0;
        for (let j = 0; j < lora.r; j++) acc += u[j] * lora.B[o * lora.r + j];
        y[n * outF + o] += lora.s * acc;
      }
    }
  }
  return y;
}

/** grouped: x [N, G, inG], W [G·outG, inG] → [N, G·outG]; LoRA delta s·B A has W's shape */
export function groupedLinear(x: A, W: A, N: number, G: number, inG: number, outG: number, lora?: { A: A; B: A; r: number; s: number }): A {
  const Wd = W.slice();
  if (lora) {
    for (let o = 0; o < G * outG; o++) {
      for (let i = 0; i < inG; i++) {
        let acc = 0;
        for (let j = 0; j < lora.r; j++) acc += lora.B[o * lora.r + j] * lora.A[j * inG + i];
        Wd[o * inG + i] += lora.s * acc;
      }
    }
  }
  const y = new Float64Array(N * G * outG);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < G; g++) {
      for (let o = 0; o < outG; o++) {
        let acc = 0;
        for (let i = 0; i < inG; i++) acc += x[(n * G + g) * inG + i] * Wd[(g * outG + o) * inG + i];
        y[n * G * outG + g * outG + o] = acc;
      }
    }
  }
  return y;
}

/** mHC pre: y [N, d], post [N, hc], comb [N, hc, hc] */
export function mhcPre(X: A, fn: A, scale: A, base: A, N: number, hc: number, d: number, iters: number, hcEps: number, normEps: number): { y: A; post: A; comb: A } {
  const D = hc * d;
  const mix = (2 + hc) * hc;
  const y = new Float64Array(N * d);
  const post = new Float64Array(N * hc);
  const comb = new Float64Array(N * hc * hc);
  for (let n = 0; n < N; n++) {
    const x = X.subarray(n * D, (n + 1) * D);
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / D + normEps);
    const m = new Float64Array(mix);
    for (let k = 0; k < mix; k++) {
      let acc = 0;
      for (let i = 0; i < D; i++) acc += fn[k * D + i] * x[i];
      m[k] = acc * r;
    }
    const pre = new Float64Array(hc);
    for (let i = 0; i < hc; i++) {
      pre[i] = sigmoid(m[i] * scale[0] + base[i]) + hcEps;
      post[n * hc + i] = 2 * sigmoid(m[hc + i] * scale[1] + base[hc + i]);
    }
    const c = new Float64Array(hc * hc);
    for (let i = 0; i < hc; i++) {
      let mx = -Infinity;
      for (let j = 0; j < hc; j++) mx = Math.max(mx, m[2 * hc + i * hc + j] * scale[2] + base[2 * hc + i * hc + j]);
      let s = 0;
      for (let j = 0; j < hc; j++) s += (c[i * hc + j] = Math.exp(m[2 * hc + i * hc + j] * scale[2] + base[2 * hc + i * hc + j] - mx));
      for (let j = 0; j < hc; j++) c[i * hc + j] = c[i * hc + j] / s + hcEps;
    }
    const cols = (): void => {
      for (let j = 0; j < hc; j++) {
        let s = 0;
        for (let i = 0; i < hc; i++) s += c[i * hc + j];
        for (let i = 0; i < hc; i++) c[i * hc + j] /= s + hcEps;
      }
    };
    const rows = (): void => {
      for (let i = 0; i < hc; i++) {
        let s = 0;
        for (let j = 0; j < hc; j++) s += c[i * hc + j];
        for (let j = 0; j < hc; j++) c[i * hc + j] /= s + hcEps;
      }
    };
    cols();
    for (let it = 1; it < iters; it++) {
      rows();
      cols();
    }
    comb.set(c, n * hc * hc);
    for (let i = 0; i < hc; i++) for (let k = 0; k < d; k++) y[n * d + k] += pre[i] * x[i * d + k];
  }
  return { y, post, comb };
}

/** out[n, j] = post[n, j] f[n] + Σ_i comb[n, i, j] res[n, i] */
export function mhcPost(f: A, res: A, post: A, comb: A, N: number, hc: number, d: number): A {
  const out = new Float64Array(N * hc * d);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < hc; j++) {
      for (let k = 0; k < d; k++) {
        let acc = post[n * hc + j] * f[n * d + k];
        for (let i = 0; i < hc; i++) acc += comb[(n * hc + i) * hc + j] * res[(n * hc + i) * d + k];
        out[(n * hc + j) * d + k] = acc;
      }
    }
  }
  return out;
}

export function hcHead(X: A, fn: A, scale: A, base: A, N: number, hc: number, d: number, hcEps: number, normEps: number): A {
  const D = hc * d;
  const y = new Float64Array(N * d);
  for (let n = 0; n < N; n++) {
    const x = X.subarray(n * D, (n + 1) * D);
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / D + normEps);
    for (let i = 0; i < hc; i++) {
      let acc = 0;
      for (let k = 0; k < D; k++) acc += fn[i * D + k] * x[k];
      const pre = sigmoid(acc * r * scale[0] + base[i]) + hcEps;
      for (let k = 0; k < d; k++) y[n * d + k] += pre * x[i * d + k];
    }
  }
  return y;
}

/** interleaved RoPE on the last rd dims, angle pos·freq[k] computed in float64 */
export function rope(x: A, pos: Int32Array, freqs: ArrayLike<number>, N: number, nh: number, hd: number, rd: number, inverse: boolean): A {
  const y = x.slice();
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < nh; h++) {
      const o = (n * nh + h) * hd + hd - rd;
      for (let k = 0; k < rd / 2; k++) {
        const th = pos[n] * freqs[k] * (inverse ? -1 : 1);
        const a = x[o + 2 * k];
        const b = x[o + 2 * k + 1];
        y[o + 2 * k] = a * Math.cos(th) - b * Math.sin(th);
        y[o + 2 * k + 1] = a * Math.sin(th) + b * Math.cos(th);
      }
    }
  }
  return y;
}

/** compressor pooling per segment (see ops.ts) */
export function compressor(a: A, z: A, ape: A, segs: number[], m: number, hd: number, overlap: boolean): A {
  const cw = overlap ? 2 * hd : hd;
  const out: number[] = [];
  let s0 = 0;
  for (const len of segs) {
    for (let w = 0; w < Math.floor(len / m); w++) {
      for (let ch = 0; ch < hd; ch++) {
        const terms: [number, number][] = [];
        for (let r = 0; r < m; r++) {
          const t = s0 + w * m + r;
          const c = overlap ? hd + ch : ch;
          terms.push([z[t * cw + c] + ape[r * cw + c], a[t * cw + c]]);
          if (overlap && w > 0) {
            const tp = s0 + (w - 1) * m + r;
            terms.push([z[tp * cw + ch] + ape[r * cw + ch], a[tp * cw + ch]]);
          }
        }
        const mx = Math.max(...terms.map((t) => t[0]));
        let s = 0;
        let acc = 0;
        for (const [zz, aa] of terms) {
          const e = Math.exp(zz - mx);
          s += e;
          acc += e * aa;
        }
        out.push(acc / s);
      }
    }
    s0 += len;
  }
  return Float64Array.from(out);
}

/** sparse attention with sink: q [N, H, D], kv [M, D], idx [N, K] */
export function attention(q: A, kv: A, sink: A, idx: Int32Array, N: number, H: number, D: number, K: number, scale: number): A {
  const o = new Float64Array(N * H * D);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      const sc: [number, number][] = [];
      for (let j = 0; j < K; j++) {
        const r = idx[n * K + j];
        if (r < 0) continue;
        let acc = 0;
        for (let c = 0; c < D; c++) acc += q[(n * H + h) * D + c] * kv[r * D + c];
        sc.push([acc * scale, r]);
      }
      const mx = Math.max(sink[h], ...sc.map((s) => s[0]));
      let den = Math.exp(sink[h] - mx);
      for (const [s] of sc) den += Math.exp(s - mx);
      for (const [s, r] of sc) {
        const p = Math.exp(s - mx) / den;
        for (let c = 0; c < D; c++) o[(n * H + h) * D + c] += p * kv[r * D + c];
      }
    }
  }
  return o;
}

/** router weights for a given selection: s = sqrt(softplus(x Wᵀ)); w = s[idx]/Σ·scale */
export function routerWeights(x: A, W: A, idx: Int32Array, N: number, d: number, E: number, k: number, scale: number): { weights: A; scores: A } {
  const s = new Float64Array(N * E);
  for (let n = 0; n < N; n++) {
    for (let e = 0; e < E; e++) {
      let acc = 0;
      for (let c = 0; c < d; c++) acc += x[n * d + c] * W[e * d + c];
      s[n * E + e] = Math.sqrt(Math.log1p(Math.exp(acc)));
    }
  }
  const weights = new Float64Array(N * k);
  for (let n = 0; n < N; n++) {
    let sum = 0;
    for (let j = 0; j < k; j++) sum += s[n * E + idx[n * k + j]];
    for (let j = 0; j < k; j++) weights[n * k + j] = (s[n * E + idx[n * k + j]] / sum) * scale;
  }
  return { weights, scores: s };
}

export interface Expert64 {
  w1: A;
  w2: A;
  w3: A;
  lora?: { w1?: { A: A; B: A; r: number; s: number }; w2?: { A: A; B: A; r: number; s: number }; w3?: { A: A; B: A; r: number; s: number } };
}

export const silu = (x: number): number => x * sigmoid(x);

/** clamped SwiGLU on every row: x [N, d] → [N, d] */
export function swiglu(x: A, e: Expert64, N: number, d: number, I: number, L: number): A {
  const g = linear(x, e.w1, N, d, I, e.lora?.w1);
  const u = linear(x, e.w3, N, d, I, e.lora?.w3);
  const h = new Float64Array(N * I);
  for (let i = 0; i < h.length; i++) {
    const gg = L > 0 ? Math.min(g[i], L) : g[i];
    const uu = L > 0 ? Math.min(Math.max(u[i], -L), L) : u[i];
    h[i] = silu(gg) * uu;
  }
  return linear(h, e.w2, N, I, d, e.lora?.w2);
}

/** routed experts: y[n] = Σ_j weights[n, j] · expert_{idx[n, j]}(x[n]) */
export function moe(x: A, idx: Int32Array, weights: A, experts: Expert64[], N: number, d: number, I: number, k: number, L: number): A {
  const y = new Float64Array(N * d);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < k; j++) {
      const out = swiglu(x.subarray(n * d, (n + 1) * d), experts[idx[n * k + j]], 1, d, I, L);
      for (let c = 0; c < d; c++) y[n * d + c] += weights[n * k + j] * out[c];
    }
  }
  return y;
}

/** Σ_counted logsumexp(x Wᵀ) − x·W[target] */
export function lmHeadLoss(x: A, W: A, targets: Int32Array, N: number, d: number, V: number): number {
  let loss = 0;
  for (let n = 0; n < N; n++) {
    if (targets[n] < 0) continue;
    const l = linear(x.subarray(n * d, (n + 1) * d), W, 1, d, V);
    const mx = Math.max(...l);
    let s = 0;
    for (const v of l) s += Math.exp(v - mx);
    loss += mx + Math.log(s) - l[targets[n]];
  }
  return loss;
}

/** deterministic pseudo-random numbers in [−1, 1) (mulberry32) */
export function rand(n: number, seed: number, scale = 1): Float64Array {
  let a = seed >>> 0;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

/** max |a − b| / max |b| */
export function rel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den === 0 ? num : num / den;
}

/**
 * Central finite differences of ⟨dy, f(x)⟩ with respect to every element of x (float64):
 * the reference for a backward's dx.
 */
export function fdGrad(f: (x: A) => A | number, x: A, dy: A | null, h = 1e-6): A {
  const g = new Float64Array(x.length);
  const dot = (y: A | number): number => {
    if (typeof y === 'number') return y;
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * (dy as A)[i];
    return s;
  };
  for (let i = 0; i < x.length; i++) {
    const xp = x.slice();
    const xm = x.slice();
    xp[i] += h;
    xm[i] -= h;
    g[i] = (dot(f(xp)) - dot(f(xm))) / (2 * h);
  }
  return g;
}
