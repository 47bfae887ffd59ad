package stages

import (
	"context"
	"fmt"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// Align assembles a step's paged K/V view in token order: the cached pages,
// the pages of the request's earlier steps, and fresh pages for the blocks
// the step's new tokens start. Cached pages still loading from the store are
// left empty in the view; attend fills them in.
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
	s, written, err := a.view(s)
	if err != nil || a.env.gpu == nil || s.KV == nil {
		return s, err
	}
	// Start the device copies of the step's full blocks now, with the
	// sequence unlocked, so they run while earlier steps attend; only
	// blocks whose K/V are written (an earlier step of this layer may
	// still be in attend).
	a.env.gpu.ahead(s, written)
	return s, nil
}

// view assembles s's paged K/V view under the sequence's lock, and returns
// how many of the layer's leading tokens are written.
func (a *Align) view(s *Step) (*Step, int, error) {
	env, seq := a.env, s.Seq
	b := env.BlockTokens
	blocks := (s.End + b - 1) / b
	seq.mu.Lock()
	defer seq.mu.Unlock()
	pages := seq.pages[s.Layer]
	if first := s.Start / b; len(pages) < first {
		return nil, 0, fmt.Errorf("layer %d: pages for %d blocks, the step starts in block %d: an earlier step is missing", s.Layer, len(pages), first)
	}
	for len(pages) < blocks {
		i := len(pages)
		var key storage.BlockKey
		if i < len(seq.Keys) {
			key = seq.Keys[i]
		}
		pk := storage.PageKey{Block: key, Layer: s.Layer}
		if env.Metadata {
			pages = append(pages, &storage.Page{Key: pk, Meta: env.MetaPageBytes()})
			continue
		}
		pg, err := env.newPage(seq, pk)
		if err != nil {
			return nil, 0, err
		}
		pages = append(pages, pg)
	}
	seq.pages[s.Layer] = pages
	if env.Metadata {
		return s, 0, nil // no bytes, no view
	}
	kv := model.NewPagedKV(env.Model, env.DType, b)
	kv.K, kv.V = make([][]byte, blocks), make([][]byte, blocks)
	for i, pg := range pages[:blocks] {
		if pg != nil {
			kv.K[i], kv.V[i] = pg.K, pg.V
		}
	}
	sums := seq.sums[s.Layer]
	for len(sums) < blocks {
		sums = append(sums, new(model.PageSummary))
	}
	seq.sums[s.Layer] = sums
	kv.Summaries = sums[:blocks:blocks]
	s.KV = kv
	return s, seq.written[s.Layer], nil
}

// newPage allocates a page of the request's own from the pool: one tensor
// [2][kv_heads][block_tokens][head_dim] whose halves are K and V (the K half
// laid out as model.PagedKV says: rows or tiles). The
// sequence owns it and frees it on release. Called with seq.mu held.
func (e *Env) newPage(seq *Sequence, key storage.PageKey) (*storage.Page, error) {
	m := e.Model
	t, err := e.Pool.Alloc([]int{2, m.NumKVHeads, e.BlockTokens, m.HeadDim}, e.DType)
	if err != nil {
		return nil, fmt.Errorf("page for %s: %w (raise the cache's pool size or lower max_active)", key, err)
	}
	seq.owned = append(seq.owned, t)
	n := len(t.Data) / 2
	return &storage.Page{Key: key, K: t.Data[:n:n], V: t.Data[n:]}, nil
}
