package stages

import (
	"context"
	"fmt"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// Align assembles a step's paged K/V view in token order: the cached pages
// prefetch made ready, the pages of the request's earlier steps, and fresh
// pages for the blocks the step's new tokens start.
type Align struct{ env *Env }

// NewAlign returns the align stage.
func NewAlign(env *Env) *Align { return &Align{env: env} }

// Name returns "align".
func (a *Align) Name() string { return "align" }

// Process implements pipeline.Stage.
func (a *Align) Process(ctx context.Context, s *Step) (*Step, error) {
	if s.Cached {
		return s, nil
	}
	env, seq := a.env, s.Seq
	b := env.BlockTokens
	blocks := (s.End + b - 1) / b
	seq.mu.Lock()
	defer seq.mu.Unlock()
	pages := seq.pages[s.Layer]
	if first := s.Start / b; len(pages) < first {
		return nil, fmt.Errorf("layer %d: pages for %d blocks, the step starts in block %d: an earlier step is missing", s.Layer, len(pages), first)
	}
	for len(pages) < blocks {
		i := len(pages)
		var key storage.BlockKey
		if i < len(seq.Keys) {
			key = seq.Keys[i]
		}
		pages = append(pages, newPage(storage.PageKey{Block: key, Layer: s.Layer}, env.PageBytes()))
	}
	seq.pages[s.Layer] = pages
	kv := &model.PagedKV{
		DType: env.DType, BlockTokens: b, KVHeads: env.Model.NumKVHeads, HeadDim: env.Model.HeadDim,
		K: make([][]byte, blocks), V: make([][]byte, blocks),
	}
	for i, pg := range pages[:blocks] {
		if i < len(s.Ready) {
			pg = s.Ready[i]
		}
		kv.K[i], kv.V[i] = pg.K, pg.V
	}
	s.KV = kv
	return s, nil
}

// newPage allocates a page whose K and V share one 64-byte aligned buffer.
func newPage(key storage.PageKey, n int) *storage.Page {
	const align = 64
	buf := make([]byte, 2*n+align)
	off := 0
	if r := int(uintptrOf(buf) % align); r != 0 {
		off = align - r
	}
	buf = buf[off : off+2*n : off+2*n]
	return &storage.Page{Key: key, K: buf[:n:n], V: buf[n:]}
}
