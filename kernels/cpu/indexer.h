// The lightning indexer's top-k selection (discrete: no backward).
#pragma once

namespace v4 {

// q is (T, nh, hd), k is (M, hd), w is (T, nh); query t sees entries kStart[t] … kStart[t]+kCount[t]−1
// score[t][s] = Σ_h w[t,h]·ReLU(q[t,h]·k[s]); idx is (T, K): the top min(K, kCount[t]) entries,
// ties toward the lower index (ordered by score, then index; in index order when all are kept),
// −1 padded.
void indexer_topk(int* idx, const float* q, const float* k, const float* w, const int* kStart, const int* kCount,
                  long T, long M, long nh, long hd, long K);

}  // namespace v4
