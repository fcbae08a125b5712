// The KV compressor's softmax pooling over windows of `ratio` tokens (overlapping for ratio 4).
#pragma once

namespace v4 {

// a, z are (T, W): W = hd, or 2·hd when overlap (ratio 4); ape is (ratio, W)
// segs (nseg) are segment lengths; each segment gives floor(len/ratio) entries, in order; out is (S, hd)
// z' = z + ape[pos mod ratio] (pos counted from the segment start)
// plain:   out_i[c] = Σ_{t ∈ window i} softmax_t(z'_t[c]) · a_t[c]
// overlap: out_i[c] pools 2·ratio rows: window i−1 through channel c, window i through channel hd+c
//          (window 0 has no previous window)
void compressor_forward(float* out, const float* a, const float* z, const float* ape, const int* segs, long nseg,
                        long ratio, long hd, bool overlap);
// da, dz (T, W) accumulate.
void compressor_backward(float* da, float* dz, const float* dout, const float* a, const float* z, const float* ape,
                         const int* segs, long nseg, long ratio, long hd, bool overlap);

long compressor_entries(const int* segs, long nseg, long ratio);

}  // namespace v4
