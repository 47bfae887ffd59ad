package stages

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// resolve takes the step's cached pages that were in the store: each from
// the memory tier when its load promoted it there, else the loaded copy,
// else, when the stored copy failed its checksum, recomputed; and fills
// them into the step's view (none in a metadata run). It waits only for
// loads that have not finished, and counts that wait as the step's stall.
func (e *Env) resolve(ctx context.Context, s *Step) error {
	seq := s.Seq
	blocks := (s.End + e.BlockTokens - 1) / e.BlockTokens
	var missing []int
	seq.mu.Lock()
	// A view built before an earlier step took a page still lacks it;
	// loadPage then finds the page in the sequence.
	for i, pg := range seq.pages[s.Layer][:min(blocks, len(seq.pages[s.Layer]))] {
		if pg == nil || (s.KV != nil && s.KV.K[i] == nil) {
			missing = append(missing, i)
		}
	}
	// Ask for every page the step lacks before waiting for any: a page
	// nobody has asked for yet (there is no prefetch stage, or it was
	// evicted) loads on demand, all of them at once.
	if e.Prefetcher != nil {
		for _, i := range missing {
			if i >= len(seq.Keys) || seq.pages[s.Layer][i] != nil {
				continue
			}
			key := storage.PageKey{Block: seq.Keys[i], Layer: s.Layer}
			if ld := seq.loads[key]; ld == nil {
				if e.Manager.ResidentHint(key) {
					continue // promoted already: nothing to load
				}
				e.demandLoads.Add(1)
				seq.loads[key] = e.Prefetcher.Fetch(key, storage.PriorityNow)
			} else if !ld.Ready() {
				e.Prefetcher.Fetch(key, storage.PriorityNow) // move it to the front
			}
		}
	}
	seq.mu.Unlock()
	for _, i := range missing {
		pg, err := e.loadPage(ctx, s, i)
		if err != nil {
			return err
		}
		if s.KV != nil {
			s.KV.K[i], s.KV.V[i] = pg.K, pg.V
		}
	}
	return nil
}

// loadPage returns page i of the step's layer, loading it if need be, and
// records it in the sequence so later steps find it.
func (e *Env) loadPage(ctx context.Context, s *Step, i int) (*storage.Page, error) {
	seq, layer := s.Seq, s.Layer
	seq.mu.Lock()
	if pg := seq.pages[layer][i]; pg != nil {
		seq.mu.Unlock()
		return pg, nil
	}
	if i >= len(seq.Keys) {
		seq.mu.Unlock()
		return nil, fmt.Errorf("layer %d: block %d has no page and no key", layer, i)
	}
	key := storage.PageKey{Block: seq.Keys[i], Layer: layer}
	ld := seq.loads[key]
	seq.mu.Unlock()

	// Another request's load, or this one's, may have promoted it already.
	pg, ok, err := seq.Lease.PinResident(key)
	if err != nil {
		return nil, err
	}
	if ok {
		if ld != nil {
			e.loadsOnTime.Add(1)
		}
		if err := e.verify(s, pg); err != nil {
			return nil, err
		}
		return e.settle(seq, key, i, pg), nil
	}
	pf := e.Prefetcher
	if pf == nil {
		return nil, fmt.Errorf("cached page %s is in no tier a load can reach", key)
	}
	if ld == nil {
		// Promoted by another request's load and evicted since.
		e.demandLoads.Add(1)
		ld = pf.Fetch(key, storage.PriorityNow)
	}
	if ld.Ready() {
		e.loadsOnTime.Add(1)
		pg, err = ld.Result()
	} else {
		t0 := time.Now()
		pg, err = ld.Wait(ctx)
		stall := time.Since(t0)
		s.Stall += stall
		e.stallNanos.Add(int64(stall))
		e.loadsLate.Add(1)
	}
	switch {
	case errors.Is(err, storage.ErrChecksum) || errors.Is(err, storage.ErrNotFound):
		// The stored copy was bad (and is dropped), or another request found
		// it bad first: never hand it on, compute it again.
		return e.recompute(s, i, key)
	case err != nil:
		return nil, fmt.Errorf("load %s: %w", key, err)
	}
	// Prefer the memory tier's copy, which other requests share.
	if rp, ok, err := seq.Lease.PinResident(key); err != nil {
		return nil, err
	} else if ok {
		pg = rp
	}
	if err := e.verify(s, pg); err != nil {
		return nil, err
	}
	return e.settle(seq, key, i, pg), nil
}

// verify checks a page of a replayed request that came back from a tier
// against the bytes FillPage gave it.
func (e *Env) verify(s *Step, pg *storage.Page) error {
	if !s.Req.Synthetic || e.Metadata {
		return nil
	}
	if err := VerifyPage(pg, e.DType); err != nil {
		return err
	}
	e.verifiedPages.Add(1)
	return nil
}

// settle records page i of key's layer as resolved.
func (e *Env) settle(seq *Sequence, key storage.PageKey, i int, pg *storage.Page) *storage.Page {
	seq.mu.Lock()
	defer seq.mu.Unlock()
	seq.pages[key.Layer][i] = pg
	delete(seq.loads, key)
	return pg
}

// recompute computes the K/V of block i of the step's layer into a page of
// the request's own and offers it to the cache again, in place of a stored
// copy that failed its checksum.
func (e *Env) recompute(s *Step, i int, key storage.PageKey) (*storage.Page, error) {
	seq, b, hidden := s.Seq, e.BlockTokens, e.Model.HiddenSize
	seq.mu.Lock()
	pg, err := e.newPage(seq, key)
	seq.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if s.Req.Synthetic {
		// A replayed page's contents are its key's, not attention's.
		FillPage(pg, e.DType)
		e.recomputed.Add(1)
		return e.commitRecomputed(s, i, key, pg)
	}
	lo, hi := i*b, (i+1)*b
	x := make([]float32, b*hidden)
	for t := lo; t < hi; t++ {
		Embed(x[(t-lo)*hidden:(t-lo+1)*hidden], s.Req, t, s.Layer)
	}
	var pos [3][]int64
	for r := range pos {
		pos[r] = s.Req.Positions[r][lo:hi]
	}
	kv := model.NewPagedKV(e.Model, e.DType, b)
	kv.K, kv.V = make([][]byte, i+1), make([][]byte, i+1)
	kv.K[i], kv.V[i] = pg.K, pg.V
	if err := e.Layer(s.Layer).StoreKV(x, pos, kv, lo); err != nil {
		return nil, fmt.Errorf("recompute %s: %w", key, err)
	}
	e.recomputed.Add(1)
	return e.commitRecomputed(s, i, key, pg)
}

// commitRecomputed offers a recomputed page to the cache again and records
// it as the sequence's page i.
func (e *Env) commitRecomputed(s *Step, i int, key storage.PageKey, pg *storage.Page) (*storage.Page, error) {
	seq := s.Seq
	stored, err := seq.Lease.Commit(pg)
	switch {
	case err == nil:
		pg = stored
	case errors.Is(err, storage.ErrNoSpace) || errors.Is(err, storage.ErrTooLarge):
		// No room in memory: the request keeps its own copy.
	default:
		return nil, err
	}
	return e.settle(seq, key, i, pg), nil
}
