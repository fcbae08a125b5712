// The LM head fused with cross-entropy, in vocabulary chunks (never T × V logits at once).
#pragma once
#include "weights.h"

namespace v4 {

// h is (T, d), W is (V, d); targets (T), weights (T) (0: position not counted)
// loss (T): loss_t = lse_t − h_t·W[target_t], lse_t = log Σ_v e^{h_t·W_v}  (0 where weight is 0)
// dh (T, d, may be null) accumulates weight_t · (Σ_v p_tv W_v − W[target_t]), p = softmax.
// One pass over the vocabulary: a running max per row rescales the running sum and Σ p W.
// chunk: vocabulary rows per step, at most; capped so a step holds at most 512K logits.
// top1 (T, may be null): every row's first index of its largest logit (ties to the lower id; a
// row whose logits are all NaN gets 0), counted or not; the loss, dh and the chunk sizes of the
// counted rows are the same bits with or without it.
void lmhead_ce(float* loss, float* dh, const float* h, const WeightRef& W, const int* targets, const float* weights,
               long T, long chunk, int* top1 = nullptr);

}  // namespace v4
