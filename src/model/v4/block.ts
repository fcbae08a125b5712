// One V4 block: mHC around attention, then mHC around the MoE.
//   (y, post, comb) = hc_pre(X); X ← hc_post(attn(attn_norm(y)), X, post, comb)
//   (y, post, comb) = hc_pre(X); X ← hc_post(moe(ffn_norm(y)), X, post, comb)
import type { F32, RopeTable } from '../../backend/ops.js';
import type { V4Config } from '../config.js';
import { attention } from './attention.js';
import { ChoiceLog, type Graph } from './graph.js';
import { hcPost, hcPre } from './mhc.js';
import { moe, moeRoute } from './moe.js';
import type { Seq } from './seq.js';
import type { BlockWeights } from './weights.js';

export async function block(g: Graph, B: BlockWeights, X: F32, seq: Seq, c: V4Config, table: RopeTable): Promise<F32> {
  const m = await moeInput(g, B, X, seq, c, table);
  const fo = await moe(g, B.ffn, B.prefix, m.fx, seq, c);
  return hcPost(g, fo, m.X1, m.f.post, m.f.comb, seq.T, c);
}

/**
 * `block` up to the MoE's routing: every linear's input is told to `g.linearInput` and every
 * routing to `g.routing`, but the experts' outputs and the block's output are not computed (a
 * calibration pass that stays at this block's input, export/calibrate.ts). Returns the MoE's
 * input fx [T, d] and its routing idx [T, k], from which moe.ts `observeExpertInputs` tells the
 * MoE's linears again.
 */
export async function blockObserved(g: Graph, B: BlockWeights, X: F32, seq: Seq, c: V4Config, table: RopeTable): Promise<{ fx: F32; idx: Int32Array }> {
  const m = await moeInput(g, B, X, seq, c, table);
  const { idx } = await moeRoute(g, B.ffn, B.prefix, m.fx, seq, c);
  return { fx: m.fx, idx };
}

// the block through attention and the second hc_pre: X1 (streams after attention), the MoE's
// hc_pre f and its normed input fx
async function moeInput(g: Graph, B: BlockWeights, X: F32, seq: Seq, c: V4Config, table: RopeTable): Promise<{ X1: F32; f: { y: F32; post: F32; comb: F32 }; fx: F32 }> {
  const T = seq.T;
  const d = c.hidden_size;
  const eps = c.rms_norm_eps;
  const a = await hcPre(g, B.hcAttn, X, T, c);
  const ax = await g.rmsnorm(a.y, B.attnNorm, T, d, eps);
  const ao = await attention(g, B.attn, B.prefix, ax, seq, c, B.ratio, table);
  const X1 = await hcPost(g, ao, X, a.post, a.comb, T, c);
  const f = await hcPre(g, B.hcFfn, X1, T, c);
  const fx = await g.rmsnorm(f.y, B.ffnNorm, T, d, eps);
  return { X1, f, fx };
}

/**
 * `block` under activation checkpointing. The forward runs untaped and the tape keeps one record
 * for the whole block: its input X [T, hc, d], its output and the discrete choices the block made
 * (routing indices, indexer selections). That record's backward runs the block's forward again on
 * a fresh tape (same accountant), replaying the recorded choices, and replays that tape backward
 * right away: the same ops on the same inputs in the same order, so the gradients are the ones
 * the fully taped block gives. Only one block's saved contexts are alive at a time.
 */
export async function checkpointedBlock(g: Graph, B: BlockWeights, X: F32, seq: Seq, c: V4Config, table: RopeTable): Promise<F32> {
  const tape = g.tape;
  if (!tape) return block(g, B, X, seq, c, table);
  const choices = new ChoiceLog();
  const Y = await block(g.with(null, choices), B, X, seq, c, table);
  tape.record([X], [Y], async ([dY]) => {
    choices.replay();
    const sub = tape.child();
    const Y2 = await block(g.with(sub, choices), B, X, seq, c, table);
    const grads = await sub.backward([[Y2, dY]]);
    return [grads.get(X) ?? null];
  }, [choices]);
  return Y;
}
