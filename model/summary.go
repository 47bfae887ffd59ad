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
}

// summaryChunk is the number of key elements Update decodes at a time, into
// a buffer on the stack (a multiple of KeyTile).
const summaryChunk = 256

// widen sets lo[c] = min(lo[c], k[c]) and hi[c] = max(hi[c], k[c]).
func widen(lo, hi, k []float32) {
	lo, hi = lo[:len(k)], hi[:len(k)]
	for c, x := range k {
		lo[c] = min(lo[c], x)
		hi[c] = max(hi[c], x)
	}
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
	d, bt, size, tile := kv.HeadDim, kv.BlockTokens, kv.DType.Size(), kv.KeyTileTokens()
	var buf [summaryChunk]float32
	for g := range kv.KVHeads {
		mn, mx := s.Min[g*d:(g+1)*d], s.Max[g*d:(g+1)*d]
		head := page[g*bt*d*size : (g+1)*bt*d*size]
		if tile == 1 {
			for t := s.Tokens; t < tokens; t++ {
				row := head[t*d*size : (t+1)*d*size]
				for c0 := 0; c0 < d; c0 += summaryChunk {
					k := buf[:min(summaryChunk, d-c0)]
					kv.DType.Decode(k, row[c0*size:])
					widen(mn[c0:c0+len(k)], mx[c0:c0+len(k)], k)
				}
			}
			continue
		}
		// A tile's keys lie channel by channel: decoded a few channels
		// (of every slot of the tile) at a time, each channel's slots
		// [t0+j0, t0+j1) widen its bounds.
		per := summaryChunk / tile
		for t0 := s.Tokens - s.Tokens%tile; t0 < tokens; t0 += tile {
			j0, j1 := max(s.Tokens-t0, 0), min(tokens-t0, tile)
			for c0 := 0; c0 < d; c0 += per {
				n := min(per, d-c0)
				at := (t0*d + c0*tile) * size
				k := buf[:n*tile]
				kv.DType.Decode(k, head[at:at+n*tile*size])
				for c := range n {
					lo, hi := mn[c0+c], mx[c0+c]
					for _, x := range k[c*tile+j0 : c*tile+j1] {
						lo, hi = min(lo, x), max(hi, x)
					}
					mn[c0+c], mx[c0+c] = lo, hi
				}
			}
		}
	}
	s.Tokens = tokens
}

// Reset empties s (keeps the buffers).
func (s *PageSummary) Reset() { s.Tokens = 0 }
