package stages

import (
	"context"
	"fmt"

	"github.com/kvflow/kvflow/storage"
)

// Fetch is the first stage: on a request's first step it computes the
// chained keys of the sequence's full blocks and pins the longest prefix the
// cache holds in every layer, in memory or in the store; on every step it
// skips what that prefix covers.
type Fetch struct{ env *Env }

// NewFetch returns the fetch stage.
func NewFetch(env *Env) *Fetch { return &Fetch{env: env} }

// Name returns "fetch".
func (f *Fetch) Name() string { return "fetch" }

// Process implements pipeline.Stage.
func (f *Fetch) Process(ctx context.Context, s *Step) (*Step, error) {
	seq := s.Seq
	if s.Index == 0 {
		if err := s.Req.Validate(); err != nil {
			return nil, err
		}
		if err := f.lookup(s.Req, seq); err != nil {
			return nil, err
		}
	}
	if seq.Lease == nil {
		return nil, fmt.Errorf("fetch: step %d before the request's first step", s.Index)
	}
	if s.End <= seq.CachedTokens {
		s.Cached = true
	} else if s.Start < seq.CachedTokens {
		s.Start = seq.CachedTokens
	}
	return s, nil
}

func (f *Fetch) lookup(r *Request, seq *Sequence) error {
	b := f.env.BlockTokens
	seq.Keys = r.Keys
	if seq.Keys == nil {
		seq.Keys = BlockKeys(r, b)
	} else if max := len(r.Tokens) / b; len(seq.Keys) > max {
		return fmt.Errorf("request %s: %d block keys for %d full blocks", r.ID, len(seq.Keys), max)
	}
	seq.mu.Lock()
	seq.Lease = f.env.Manager.NewLease()
	seq.pool = f.env.Pool
	seq.mu.Unlock()
	// Reuse at most the blocks before the last prompt token: that token must
	// be computed to produce the first output.
	usable := min(len(seq.Keys), (r.PromptLen-1)/b)
	f.env.lookupPages.Add(int64(max(usable, 0) * f.env.Layers()))
	prefix, err := seq.Lease.AcquirePrefix(seq.Keys[:max(usable, 0)])
	if err != nil {
		return fmt.Errorf("prefix lookup: %w", err)
	}
	seq.mu.Lock()
	for _, row := range prefix {
		for l, slot := range row {
			// A page in the store is nil until attend has its load.
			seq.pages[l] = append(seq.pages[l], slot.Page)
		}
	}
	for l := range seq.committed {
		seq.committed[l] = len(prefix)
		seq.written[l] = len(prefix) * b
	}
	seq.mu.Unlock()
	seq.CachedTokens = len(prefix) * b
	f.env.track(seq)
	f.env.requests.Add(1)
	f.env.promptTokens.Add(int64(r.PromptLen))
	f.env.cachedTokens.Add(int64(seq.CachedTokens))
	return nil
}

// BlockKeys returns the chained keys of r's full blocks of b tokens: each
// key hashes its parent's key, the block's token ids and the content hash and
// grid of every image whose tokens fall in the block.
func BlockKeys(r *Request, b int) []storage.BlockKey {
	n := len(r.Tokens) / b
	keys := make([]storage.BlockKey, n)
	parent := storage.RootKey
	var extra []uint64
	for i := range n {
		lo, hi := i*b, (i+1)*b
		extra = extra[:0]
		for _, im := range r.Images {
			if im.Start < hi && im.Start+im.Len > lo {
				extra = append(extra, im.Hash, uint64(im.Grid[0])<<42|uint64(im.Grid[1])<<21|uint64(im.Grid[2]))
			}
		}
		parent = storage.ChainKey(parent, r.Tokens[lo:hi], extra)
		keys[i] = parent
	}
	return keys
}
