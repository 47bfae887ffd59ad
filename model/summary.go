package model

import (
	"fmt"
	"math"
)

// PageSummary is the per-channel range of the keys in one page, per KV head:
// Min[g*HeadDim+c] and Max[g*HeadDim+c] over the page's first Tokens rows of
// KV head g. Tokens == 0 means empty (Min and Max are then meaningless). It
// is owned by one sequence (not safe for concurrent use).
//
// Summaries are what block-sparse decode attention (in the style of Quest,
// Tang et al. 2024) routes on: a Router scores each page from its summary
// and SelectPages picks the pages to attend.
//
// A key channel that is NaN makes that channel's Min and Max NaN (the
// builtin min and max propagate NaN), so a corrupt page scores NaN rather
// than silently looking harmless; SelectPages ranks NaN scores lowest.
type PageSummary struct {
	Tokens   int
	Min, Max []float32 // [KVHeads][HeadDim]

	// The geometry the summary was folded with; Update resets the summary
	// when the cache's differs.
	dtype                         DType
	blockTokens, kvHeads, headDim int
	row                           []float32 // one key, decoded
}

// Update folds rows [s.Tokens, tokens) of page p of kv into s (tokens <=
// BlockTokens); it allocates Min/Max on first use and resets s if its
// geometry changed. Rows below s.Tokens are assumed unchanged since they
// were folded (KV rows are written once).
//
// If tokens < s.Tokens the page was evidently rewritten (reused for other
// tokens), so s is reset and rows [0, tokens) are folded afresh. Update does
// not allocate once Min and Max have the capacity for the geometry.
//
// Update panics, like an out-of-range index, if kv's geometry is invalid, if
// tokens is outside [0, BlockTokens], if page p is missing, or if it has the
// wrong size.
func (s *PageSummary) Update(kv *PagedKV, p, tokens int) {
	if err := kv.checkGeometry(); err != nil {
		panic("PageSummary.Update: " + err.Error())
	}
	if tokens < 0 || tokens > kv.BlockTokens {
		panic(fmt.Sprintf("PageSummary.Update: %d tokens outside [0, %d]", tokens, kv.BlockTokens))
	}
	if p < 0 || p >= len(kv.K) {
		panic(fmt.Sprintf("PageSummary.Update: page %d of %d K pages", p, len(kv.K)))
	}
	page := kv.K[p]
	if len(page) != kv.PageBytes() {
		panic(fmt.Sprintf("PageSummary.Update: K page %d has %d bytes, want %d", p, len(page), kv.PageBytes()))
	}
	n := kv.KVHeads * kv.HeadDim
	if s.dtype != kv.DType || s.blockTokens != kv.BlockTokens || s.kvHeads != kv.KVHeads || s.headDim != kv.HeadDim ||
		len(s.Min) != n || len(s.Max) != n {
		s.dtype, s.blockTokens, s.kvHeads, s.headDim = kv.DType, kv.BlockTokens, kv.KVHeads, kv.HeadDim
		s.Min = resize(s.Min, n)
		s.Max = resize(s.Max, n)
		s.Tokens = 0
	}
	if tokens < s.Tokens {
		s.Tokens = 0
	}
	if tokens == s.Tokens {
		return
	}
	if s.Tokens == 0 {
		for i := range s.Min {
			s.Min[i] = float32(math.Inf(1))
			s.Max[i] = float32(math.Inf(-1))
		}
	}
	d := kv.HeadDim
	s.row = resize(s.row, d)
	for g := range kv.KVHeads {
		mn, mx := s.Min[g*d:(g+1)*d], s.Max[g*d:(g+1)*d]
		for t := s.Tokens; t < tokens; t++ {
			kv.Key(s.row, page, g, t)
			for c, x := range s.row {
				mn[c] = min(mn[c], x)
				mx[c] = max(mx[c], x)
			}
		}
	}
	s.Tokens = tokens
}

// Reset empties s (keeps the buffers).
func (s *PageSummary) Reset() { s.Tokens = 0 }
