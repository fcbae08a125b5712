// The float64 reference of every op, written independently of the backends, with the same
// shapes and conventions as src/backend/ops.ts, and the one error measure and finite-difference
// gradient the tests use: the tfjs backend's tests (test/backend/tfjs), the native kernels'
// (test/backend/native), the whole-model tests at flash width (test/model/flash-ref64.ts) and the
// LoRA dropout tests all check against these. A forward is compared with relErr; a backward with
// relErr against fdGrad of its reference.
export type A = Float64Array;
/** an input: float64 or float32 values */
export type Arr = ArrayLike<number>;

/** a copy in float64 */
export const f64 = (a: ArrayLike<number>): Float64Array => Float64Array.from(a);

export const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** y [N, C] = x / sqrt(mean(x²) + eps) ⊙ w */
export function rmsnorm(x: Arr, w: Arr | null, N: number, C: number, eps: number): A {
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
export function linear(x: Arr, W: Arr, N: number, inF: number, outF: number, lora?: { A: Arr; B: Arr; r: number; s: number }): A {
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
export function groupedLinear(x: Arr, W: Arr, N: number, G: number, inG: number, outG: number, lora?: { A: Arr; B: Arr; r: number; s: number }): A {
  const Wd = f64(W);
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

/** Sinkhorn of L [n, n]: row softmax + eps, columns / (sum + eps), then iters − 1 × (rows, columns) */
export function sinkhorn(L: ArrayLike<number>, n: number, iters: number, eps: number): A {
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    let mx = -Infinity;
    for (let j = 0; j < n; j++) mx = Math.max(mx, L[i * n + j]);
    let s = 0;
    for (let j = 0; j < n; j++) s += (c[i * n + j] = Math.exp(L[i * n + j] - mx));
    for (let j = 0; j < n; j++) c[i * n + j] = c[i * n + j] / s + eps;
  }
  const norm = (cols: boolean): void => {
    for (let a = 0; a < n; a++) {
      let s = 0;
      for (let b = 0; b < n; b++) s += cols ? c[b * n + a] : c[a * n + b];
      for (let b = 0; b < n; b++) (cols ? (c[b * n + a] /= s + eps) : (c[a * n + b] /= s + eps));
    }
  };
  norm(true);
  for (let it = 1; it < iters; it++) {
    norm(false);
    norm(true);
  }
  return c;
}

/** mHC pre: y [N, d], post [N, hc], comb [N, hc, hc] */
export function mhcPre(Xin: Arr, fn: Arr, scale: Arr, base: Arr, N: number, hc: number, d: number, iters: number, hcEps: number, normEps: number): { y: A; post: A; comb: A } {
  const X = f64(Xin);
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
    const L = new Float64Array(hc * hc);
    for (let k = 0; k < hc * hc; k++) L[k] = m[2 * hc + k] * scale[2] + base[2 * hc + k];
    comb.set(sinkhorn(L, hc, iters, hcEps), n * hc * hc);
    for (let i = 0; i < hc; i++) for (let k = 0; k < d; k++) y[n * d + k] += pre[i] * x[i * d + k];
  }
  return { y, post, comb };
}

/** out[n, j] = post[n, j] f[n] + Σ_i comb[n, i, j] res[n, i] */
export function mhcPost(f: Arr, res: Arr, post: Arr, comb: Arr, N: number, hc: number, d: number): A {
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

export function hcHead(Xin: Arr, fn: Arr, scale: Arr, base: Arr, N: number, hc: number, d: number, hcEps: number, normEps: number): A {
  const X = f64(Xin);
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
export function compressor(a: Arr, z: Arr, ape: Arr, segs: number[], m: number, hd: number, overlap: boolean): A {
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
export function attention(q: Arr, kv: Arr, sink: Arr, idx: Int32Array, N: number, H: number, D: number, K: number, scale: number): A {
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
export function swiglu(x: Arr, e: Expert64, N: number, d: number, I: number, L: number): A {
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

/** per position: logsumexp(x Wᵀ) − x·W[target] (0 where target < 0) */
export function crossEntropyRows(x: ArrayLike<number>, W: ArrayLike<number>, targets: Int32Array, N: number, d: number, V: number): A {
  const loss = new Float64Array(N);
  const l = new Float64Array(V);
  for (let n = 0; n < N; n++) {
    if (targets[n] < 0) continue;
    let mx = -Infinity;
    for (let v = 0; v < V; v++) {
      let acc = 0;
      for (let c = 0; c < d; c++) acc += x[n * d + c] * W[v * d + c];
      mx = Math.max(mx, (l[v] = acc));
    }
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(l[v] - mx);
    loss[n] = mx + Math.log(s) - l[targets[n]];
  }
  return loss;
}

/** Σ_counted logsumexp(x Wᵀ) − x·W[target] */
export function lmHeadLoss(x: A, W: A, targets: Int32Array, N: number, d: number, V: number): number {
  return crossEntropyRows(x, W, targets, N, d, V).reduce((a, b) => a + b, 0);
}

/** C [M, N] = beta·C + alpha·A·B with A(m, k) = a[m·sam + k·sak] and B(k, n) = W[n, k] (transB) or W[k, n] */
export function gemm(M: number, N: number, K: number, alpha: number, a: ArrayLike<number>, sam: number, sak: number, W: ArrayLike<number>, transB: boolean, beta: number, c: ArrayLike<number>): A {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[m * sam + k * sak] * (transB ? W[n * K + k] : W[k * N + n]);
      out[m * N + n] = beta * c[m * N + n] + alpha * s;
    }
  }
  return out;
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

/** max |a − b| / max |b| (b the reference; max |a − b| where b is all zero): the one error measure */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den === 0 ? num : num / den;
}

/** relErr of each row of `cols` values (logits: one row per position), the worst row's */
export function relErrRows(a: ArrayLike<number>, b: ArrayLike<number>, cols: number): number {
  if (a.length !== b.length || b.length % cols !== 0) throw new Error(`length ${a.length} vs ${b.length} (rows of ${cols})`);
  let worst = 0;
  for (let r = 0; r < b.length / cols; r++) {
    let num = 0;
    let den = 0;
    for (let c = r * cols; c < (r + 1) * cols; c++) {
      num = Math.max(num, Math.abs(a[c] - b[c]));
      den = Math.max(den, Math.abs(b[c]));
    }
    worst = Math.max(worst, den === 0 ? num : num / den);
  }
  return worst;
}

/** Σ out·g: the scalar whose gradient a backward with upstream gradient g computes */
export function contract(out: ArrayLike<number>, g: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i] * g[i];
  return s;
}

/**
 * Central finite differences (float64, h = 1e-6: about 1e-9 relative for smooth f) of f at x —
 * f a scalar, or an array contracted with `dy` (⟨dy, f(x)⟩): the reference for every backward.
 */
export function fdGrad(f: (x: A) => A | number, x: ArrayLike<number>, dy: ArrayLike<number> | null = null, h = 1e-6): A {
  const xx = f64(x);
  const g = new Float64Array(xx.length);
  const scalar = (y: A | number): number => {
    if (typeof y === 'number') return y;
    if (!dy) throw new Error('fdGrad: f returns an array, so dy is needed');
    return contract(y, dy);
  };
  // f gets a fresh array each time (a reference may cache products by the identity of its input)
  for (let i = 0; i < xx.length; i++) {
    const xp = xx.slice();
    const xm = xx.slice();
    xp[i] += h;
    xm[i] -= h;
    g[i] = (scalar(f(xp)) - scalar(f(xm))) / (2 * h);
  }
  return g;
}
