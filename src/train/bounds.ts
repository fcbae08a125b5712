// What a training run may ask of the model and the machine, checked before anything is loaded:
// the sequence length against the model's positions, kernel threads against the cores, and the
// activation memory of one micro-batch against the machine's memory. Each refusal names the
// recipe field and the limit.
import { availableParallelism, totalmem } from 'node:os';
import { InputError } from '../errors.js';
import type { V4Config } from '../model/config.js';

/** Kernel threads beyond this many per core only add contention (and the pool's stacks). */
export const THREADS_PER_CORE = 8;

/** The longest sequence the model is made for: max_position_embeddings, else the YaRN-extended context. */
export function maxPositions(c: V4Config): number | null {
  if (c.max_position_embeddings !== null) return c.max_position_embeddings;
  return c.rope_scaling ? c.rope_scaling.original_max_position_embeddings * c.rope_scaling.factor : null;
}

/**
 * Bytes of activations one token keeps for the backward (fp32), over every block. An estimate
 * that counts the tensors the forward saves per block — the mHC streams and mixes, the attention
 * projections and their scores over the window and the selected compressed entries, the
 * indexer, the routed and shared experts' SwiGLU inputs and outputs, the router — and, with
 * activation checkpointing, only each block's input streams plus one block recomputed.
 * `queryChunked`: attention's per-query path (q, the probabilities, the attention output) runs
 * in chunks (train.attention_chunk), so its share is per chunk row (queryPathBytesPerRow), not here.
 */
export function activationBytesPerToken(c: V4Config, checkpointing: boolean, queryChunked = false): number {
  const d = c.hidden_size;
  const hc = c.hc_mult;
  const block =
    8 * hc * d // mHC: input streams, pre/post mixes, normed inputs
    + c.q_lora_rank + 2 * c.head_dim // q_a, kv
    + c.o_groups * c.o_lora_rank + d // grouped output projection
    + (queryChunked ? 0 : queryPathBytesPerRow(c) / 4)
    + c.index_n_heads * (c.index_head_dim + c.sliding_window + Math.max(c.index_topk, 1)) // indexer queries and scores
    + (c.num_experts_per_tok + c.n_shared_experts) * 3 * c.moe_intermediate_size // SwiGLU gate, up, product
    + c.n_routed_experts; // router scores
  const blocks = c.num_hidden_layers + c.num_nextn_predict_layers;
  // checkpointed with a chunked query path, each block also keeps that path's output (d floats a
  // token) for its recompute
  const perToken = checkpointing ? blocks * (hc * d + (queryChunked ? d : 0)) + block : blocks * block;
  return 4 * (perToken + 4 * hc * d); // + embedding, head norm and the head's chunked logits per token
}

/** Bytes one query row of attention's per-query path keeps: q before and after RoPE, the output, the probabilities. */
export function queryPathBytesPerRow(c: V4Config): number {
  const attended = c.sliding_window + Math.max(c.index_topk, 1);
  return 4 * (3 * c.num_attention_heads * c.head_dim + c.num_attention_heads * attended);
}

export interface TrainBoundsInput {
  /** the recipe file (named in every refusal) */
  file: string;
  seqLen: number;
  batchRows: number;
  threads: number;
  checkpointing: boolean;
  /** train.attention_chunk (0: none) */
  attentionChunk?: number;
}

/** Refuse a run the model or this machine cannot hold (InputError naming the field and the limit). */
export function checkTrainBounds(c: V4Config, o: TrainBoundsInput): void {
  const maxPos = maxPositions(c);
  if (maxPos !== null && o.seqLen > maxPos) {
    throw new InputError(`${o.file}: data.seq_len is ${o.seqLen}, longer than the model's ${maxPos} positions (max_position_embeddings)`);
  }
  const cores = availableParallelism();
  if (o.threads > THREADS_PER_CORE * cores) {
    throw new InputError(`${o.file}: train.threads is ${o.threads}; at most ${THREADS_PER_CORE * cores} (${THREADS_PER_CORE} per core on this ${cores}-core machine; 0 uses every core)`);
  }
  const chunk = o.attentionChunk ?? 0;
  const chunked = chunk > 0 && chunk < o.seqLen;
  // one row of the micro-batch; a chunked query path holds one chunk of rows at a time
  const perRow = o.seqLen * activationBytesPerToken(c, o.checkpointing, chunked) + (chunked ? chunk * queryPathBytesPerRow(c) : 0);
  const bytes = o.batchRows * perRow;
  const mem = totalmem();
  if (bytes > mem) {
    const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
    const rowsFit = Math.max(0, Math.floor(mem / perRow));
    const hints = [
      ...(o.checkpointing ? [] : ['set train.activation_checkpointing: true']),
      ...(chunked ? [] : ['set train.attention_chunk (e.g. 1024)']),
    ];
    throw new InputError(`${o.file}: train.batch_rows ${o.batchRows} × data.seq_len ${o.seqLen} needs about ${gib(bytes)} of activations${o.checkpointing ? '' : ' (without activation checkpointing)'}, more than this machine's ${gib(mem)}; at most ${rowsFit} rows per micro-batch fit${hints.length ? `, or ${hints.join(' and ')}` : ''} (raise train.grad_accum for a larger batch)`);
  }
}
