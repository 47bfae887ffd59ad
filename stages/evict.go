package stages

import (
	"context"
	"errors"
	"fmt"

	"github.com/kvflow/kvflow/storage"
)

// EvictSettings are the evict stage's HCL settings.
type EvictSettings struct {
	// Policy names the eviction policy of the host tier; "lru" is the one
	// there is.
	Policy string `hcl:"policy,optional"`
}

// Validate implements Validator.
func (s EvictSettings) Validate() error {
	if s.Policy != "lru" {
		return SettingErrorf("policy", "%q: the available policy is \"lru\"", s.Policy)
	}
	return nil
}

// Evict commits the pages a step completed to the cache, where other requests
// can reuse them, and returns the request's pins after its last step. The
// tier evicts its coldest unpinned pages to make room.
type Evict struct{ env *Env }

// NewEvict returns the evict stage.
func NewEvict(env *Env) *Evict { return &Evict{env: env} }

// Name returns "evict".
func (e *Evict) Name() string { return "evict" }

// Process implements pipeline.Stage.
func (e *Evict) Process(ctx context.Context, s *Step) (*Step, error) {
	if !s.Cached {
		if err := e.commit(s); err != nil {
			return nil, err
		}
	}
	if s.Last {
		if err := e.env.finish(s.Seq); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// commit offers to the cache every full block of the step's layer that the
// request computed and has not offered yet.
func (e *Evict) commit(s *Step) error {
	seq, b := s.Seq, e.env.BlockTokens
	seq.mu.Lock()
	defer seq.mu.Unlock()
	// Only blocks whose every token attend has written: a page is never
	// written after it is stored.
	full := min(seq.written[s.Layer]/b, len(seq.Keys), len(seq.pages[s.Layer]))
	for i := seq.committed[s.Layer]; i < full; i++ {
		pg := seq.pages[s.Layer][i]
		if pg.Key != (storage.PageKey{Block: seq.Keys[i], Layer: s.Layer}) {
			return fmt.Errorf("page %d of layer %d has key %s, want block %s", i, s.Layer, pg.Key, seq.Keys[i])
		}
		if _, err := seq.Lease.Commit(pg); err != nil {
			if errors.Is(err, storage.ErrNoSpace) || errors.Is(err, storage.ErrTooLarge) {
				// Everything else is pinned, or the store's disk is nearly
				// full: the page stays private to this request, which
				// still has it. Nothing is lost.
				e.env.commitFailures.Add(1)
				continue
			}
			return err
		}
		e.env.committedPages.Add(1)
	}
	seq.committed[s.Layer] = max(seq.committed[s.Layer], full)
	return nil
}

// wrote records that attend has written the K/V of the first end tokens of
// layer.
func (seq *Sequence) wrote(layer, end int) {
	seq.mu.Lock()
	seq.written[layer] = max(seq.written[layer], end)
	seq.mu.Unlock()
}

// release returns the sequence's pins; it is idempotent.
func (seq *Sequence) release() error {
	seq.mu.Lock()
	defer seq.mu.Unlock()
	if seq.released || seq.Lease == nil {
		return nil
	}
	seq.released = true
	errs := []error{seq.Lease.Release()}
	for _, t := range seq.owned {
		errs = append(errs, seq.pool.Free(t))
	}
	seq.owned = nil
	return errors.Join(errs...)
}
