package stages

import (
	"context"
	"fmt"

	"github.com/kvflow/kvflow/storage"
)

// Prefetch makes the cached pages a step reads resident before the step
// reaches attend. With the host tier alone every cached page is already in
// memory and pinned by fetch, so prefetch only hands them on and checks
// them; lower tiers make this stage a load.
type Prefetch struct{ env *Env }

// NewPrefetch returns the prefetch stage.
func NewPrefetch(env *Env) *Prefetch { return &Prefetch{env: env} }

// Name returns "prefetch".
func (p *Prefetch) Name() string { return "prefetch" }

// Process implements pipeline.Stage.
func (p *Prefetch) Process(ctx context.Context, s *Step) (*Step, error) {
	if s.Cached {
		return s, nil
	}
	seq := s.Seq
	b := p.env.BlockTokens
	// The cached blocks this step reads: those before its first token.
	n := min(seq.CachedTokens, s.Start) / b
	want := p.env.PageBytes()
	seq.mu.Lock()
	defer seq.mu.Unlock()
	if len(seq.pages[s.Layer]) < n {
		return nil, fmt.Errorf("layer %d: %d cached pages, want %d", s.Layer, len(seq.pages[s.Layer]), n)
	}
	s.Ready = make([]*storage.Page, n)
	for i, pg := range seq.pages[s.Layer][:n] {
		if pg == nil || len(pg.K) != want || len(pg.V) != want {
			return nil, fmt.Errorf("cached page %d of layer %d is not a %d-byte page", i, s.Layer, want)
		}
		s.Ready[i] = pg
	}
	return s, nil
}
