package stages

import (
	"context"

	"github.com/kvflow/kvflow/storage"
)

// PrefetchSettings are the prefetch stage's HCL settings.
type PrefetchSettings struct {
	// Lookahead is how many of a request's next layers prefetch loads
	// ahead of the step it sees: their steps come next, and the loads run
	// while this one computes. Unset, it is what the hardware block
	// derived, or DefaultLookahead.
	Lookahead *int `hcl:"lookahead,optional"`
}

// DefaultLookahead is the prefetch stage's lookahead when a file sets none.
const DefaultLookahead = 2

// MaxLookahead bounds lookahead: a request has at most this many layers.
const MaxLookahead = 1 << 10

// Validate implements Validator.
func (s PrefetchSettings) Validate() error {
	if s.Lookahead != nil && (*s.Lookahead < 0 || *s.Lookahead > MaxLookahead) {
		return SettingErrorf("lookahead", "%d: must be between 0 and %d", *s.Lookahead, MaxLookahead)
	}
	return nil
}

// Prefetch issues the loads of the cached pages that are in the store, so
// that they arrive in memory while the steps ahead of them compute: the
// pages of the step it sees (PriorityNext: the step is queued before
// attend), and those of the request's next Lookahead layers
// (PriorityLookahead). The first step of a request that just arrived thus
// starts the loads of its prefix. Prefetch does not wait: attend takes the
// pages, waiting only for loads that are late. Without this stage, attend
// loads every stored page on demand.
type Prefetch struct {
	env       *Env
	lookahead int
}

// NewPrefetch returns the prefetch stage.
func NewPrefetch(env *Env, s PrefetchSettings) *Prefetch {
	lookahead := DefaultLookahead
	switch {
	case s.Lookahead != nil:
		lookahead = *s.Lookahead
	case env.Tuning.Lookahead > 0:
		lookahead = env.Tuning.Lookahead
	}
	return &Prefetch{env: env, lookahead: lookahead}
}

// Name returns "prefetch".
func (p *Prefetch) Name() string { return "prefetch" }

// Process implements pipeline.Stage.
func (p *Prefetch) Process(ctx context.Context, s *Step) (*Step, error) {
	pf := p.env.Prefetcher
	if pf == nil {
		return s, nil // no store: every cached page is in memory
	}
	seq := s.Seq
	seq.mu.Lock()
	defer seq.mu.Unlock()
	last := min(s.Layer+p.lookahead, len(seq.pages)-1)
	for l := s.Layer; l <= last; l++ {
		prio := storage.PriorityLookahead
		if l == s.Layer {
			prio = storage.PriorityNext
		}
		if seq.issued[l] {
			if l == s.Layer {
				// Issued as lookahead: the step is queued now.
				for key, ld := range seq.loads {
					if key.Layer == l && !ld.Ready() {
						pf.Fetch(key, prio)
					}
				}
			}
			continue
		}
		seq.issued[l] = true
		for i, pg := range seq.pages[l] {
			if pg != nil || i >= len(seq.Keys) {
				continue
			}
			key := storage.PageKey{Block: seq.Keys[i], Layer: l}
			seq.loads[key] = pf.Fetch(key, prio)
		}
	}
	return s, nil
}
