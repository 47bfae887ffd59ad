// Package model implements one Qwen3-VL text-attention layer in Go,
// numerically faithful to Hugging Face transformers' Qwen3VLTextAttention.
//
// The package is the arithmetic heart of kvflow: given a layer's weights
// (LayerWeights), the hidden states of some new tokens and their multimodal
// rotary positions, Attention.Forward projects the tokens to queries, keys and
// values, appends the keys and values to a paged KV cache (PagedKV) and
// attends causally over everything cached so far. The cache is kept in pages
// of a fixed number of tokens so that storage, eviction and transfer can work
// on pages without knowing anything about attention.
//
// # Semantics
//
// The layer follows transformers exactly:
//
//   - q, k, v = x·Wqᵀ, x·Wkᵀ, x·Wvᵀ (nn.Linear layout [out][in], no bias).
//   - RMSNorm over head_dim on every query and key head:
//     w * x / sqrt(mean(x²) + eps), before the rotary embedding.
//   - Interleaved multimodal rotary embedding (MRoPE): inverse frequencies
//     inv[i] = theta^(-2i/D); frequency i is taken from the temporal position
//     row, except i = 1, 4, 7, … < 3·section[1] (height row) and
//     i = 2, 5, 8, … < 3·section[2] (width row). The angles are computed in
//     float32 exactly as transformers does, then
//     x·cos + rotate_half(x)·sin with rotate_half(x) = (-x[D/2:], x[:D/2]).
//   - Grouped-query attention: query head h reads KV head h / (H/KH).
//   - Scores are scaled by head_dim^-0.5; the softmax is computed in float32
//     with a streaming (online) maximum, page by page, so the cache is never
//     gathered into one contiguous buffer.
//   - The keys stored in the cache are the keys after k_norm and rotary, as in
//     transformers' DynamicCache.
//
// # Kernels
//
// The part of a layer that reads the cache is a Kernel (Attend): dense, or
// block-sparse for decode tokens (page key summaries, a Router, SelectPages:
// the top_k pages with the sink and the recent ones). Its inner loops are
// AVX2+FMA assembly generated with avo where the CPU has them
// (kernels_amd64.s, from internal/asm/attn), pure Go elsewhere. A decode
// token over bf16 pages folds each page into its online softmax in one
// assembly call (scores, max, rescale, exponentials, value sums); its pages
// can be split over goroutines and the partial softmax results merged
// exactly. Any Attender (a GPU kernel, say) can stand in for
// it through Attention.WithAttender.
//
// All arithmetic is float32 like the reference; KV pages may hold bf16, f16
// or f32 elements. The fixtures in testdata (produced by transformers) are
// reproduced to a relative error below 1e-4 with f32 pages; see
// Fixture.Verify.
package model
