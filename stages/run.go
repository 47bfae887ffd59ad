package stages

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kvflow/kvflow/pipeline"
	"github.com/kvflow/kvflow/storage"
)

// RunOptions configure Plan.Run.
type RunOptions struct {
	// Log receives progress and the stages' messages; nil discards them.
	Log hclog.Logger
	// Progress is the interval of progress log lines; 0 means none.
	Progress time.Duration
	// OnStep, if set, sees every step that reached the end of the chain, in
	// order per request (tests use it to inspect outputs). The step's KV
	// view and ready pages are gone by then (their memory may already be
	// reused); Out is valid during the call only.
	OnStep func(*Step)
}

// Run executes the plan: it builds the model's layers and the cache, runs the
// source through the chain, and returns the report. On failure the report
// still describes what ran and the error names the stage and the step.
func (p *Plan) Run(ctx context.Context, o RunOptions) (*Report, error) {
	log := o.Log
	if log == nil {
		log = hclog.NewNullLogger()
	}
	// Arenas are carved in blocks of one page where pages are small, and
	// of 4 KiB otherwise: the allocator's metadata is 4 bytes a block.
	minBlock := int64(64)
	for minBlock < 4096 && minBlock < 2*int64(p.pageBytes()) {
		minBlock <<= 1
	}
	host, err := storage.NewHostTier(storage.HostOptions{Capacity: p.HostCapacity, MinBlock: minBlock})
	if err != nil {
		return nil, err
	}
	mgr, err := storage.NewManager(storage.ManagerOptions{Tier: host, Layers: p.Model.NumLayers})
	if err != nil {
		return nil, err
	}
	arena, err := storage.NewArena(storage.ArenaOptions{Size: p.PoolBytes, MinBlock: minBlock})
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	pool := storage.NewPool(arena)
	t0 := time.Now()
	env, err := NewEnv(EnvOptions{Model: p.Model, DType: p.DType, BlockTokens: p.BlockTokens,
		PrefillChunk: p.PrefillChunk, Seed: p.Seed, Manager: mgr, Pool: pool, Log: log})
	if err != nil {
		return nil, err
	}
	log.Debug("model ready", "layers", p.Model.NumLayers, "elapsed", time.Since(t0).Round(time.Millisecond))

	pl := pipeline.New()
	total := 0
	if s, ok := p.Source.(Sized); ok {
		total = s.Total()
		if p.Limit > 0 {
			total = min(total, p.Limit)
		}
	}
	node := pipeline.Source(pl, "source", (*Step).Key, func(ctx context.Context, emit func(*Step) error) error {
		return interleave(ctx, p.Source, p.Limit, p.MaxActive, env, emit)
	})
	for _, ps := range p.Stages {
		st, err := ps.build(env)
		if err != nil {
			return nil, fmt.Errorf("stage %q: %w", ps.Name, err)
		}
		node = pipeline.Then(node, st, ps.Options)
	}
	var done atomic.Int64
	pipeline.Sink(node, "report", func(ctx context.Context, s *Step) error {
		s.KV, s.Ready = nil, nil
		if o.OnStep != nil {
			o.OnStep(s)
		}
		s.Out = nil
		if !s.Last {
			return nil
		}
		// The chain may end without evict: return the pins here too.
		if err := env.finish(s.Seq); err != nil {
			return err
		}
		if s.Req.Done != nil {
			close(s.Req.Done)
		}
		done.Add(1)
		return nil
	})

	stopProgress := p.progress(log, o.Progress, &done, total, env)
	start := time.Now()
	runErr := pl.Run(ctx)
	wall := time.Since(start)
	stopProgress()
	if err := env.ReleaseAll(); err != nil && runErr == nil {
		runErr = err
	}
	return newReport(p, env, pl.Metrics(), mgr.Stats(), memoryReport(host, pool), wall), runErr
}

// progress logs a line every interval until the returned function is called.
func (p *Plan) progress(log hclog.Logger, every time.Duration, done *atomic.Int64, total int, env *Env) func() {
	if every <= 0 {
		return func() {}
	}
	quit, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				c := env.Counters()
				args := []any{"requests", done.Load(), "elapsed", time.Since(start).Round(time.Second),
					"prefix_hit_ratio", fmt.Sprintf("%.3f", ratio(c.CachedTokens, c.PromptTokens))}
				if total > 0 {
					args = append(args, "total", total)
				}
				log.Info("progress", args...)
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
	}
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// pageBytes is the size of K (or V) of one page.
func (p *Plan) pageBytes() int {
	return p.Model.NumKVHeads * p.BlockTokens * p.Model.HeadDim * p.DType.Size()
}
