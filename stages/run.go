package stages

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	// OnProgress, if set, is called every Progress interval (every second
	// if Progress is 0) with the run's progress, from one goroutine, and
	// replaces the progress log lines: a terminal draws a bar with it.
	OnProgress func(Progress)
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
	// The host tier's evictions go down to the ssd tier through the
	// manager, which exists once both tiers do.
	var mgr *storage.Manager
	demote := func(pg *storage.Page) { mgr.Demote(pg) }
	var mem storage.Tier
	var host *storage.HostTier // nil in a metadata run or with the host tier disabled
	var err error
	if p.Metadata || p.HostCapacity == 0 {
		mem, err = storage.NewMetaTier("host", p.HostCapacity, demote)
	} else {
		host, err = storage.NewHostTier(storage.HostOptions{Capacity: p.HostCapacity, MinBlock: minBlock, OnEvict: demote})
		mem = host
	}
	if err != nil {
		return nil, err
	}
	var ssd *storage.SSDTier
	var store storage.Store
	if p.SSD != nil && p.Metadata {
		if store, err = storage.NewMetaStore("ssd", p.SSD.Capacity); err != nil {
			return nil, err
		}
	} else if p.SSD != nil {
		t0 := time.Now()
		ssd, err = storage.OpenSSDTier(storage.SSDOptions{Dir: p.SSD.Path, Capacity: p.SSD.Capacity, Sync: p.SSD.Sync,
			MinFree: p.SSD.MinFree, Namespace: p.Namespace(), Log: log.Named("ssd")})
		if err != nil {
			return nil, fmt.Errorf("ssd tier: %w", err)
		}
		store = ssd
		if n := ssd.Stats().RestoredPages; n > 0 {
			log.Info("ssd tier restored", "path", p.SSD.Path, "pages", n, "elapsed", time.Since(t0).Round(time.Millisecond))
		}
	}
	closeSSD := func() error {
		if ssd == nil {
			return nil
		}
		return ssd.Close()
	}
	layers := p.Model.NumLayers
	if p.Metadata {
		layers = 1 // a page holds all of a block's layers
	}
	// The gpu tier (the `cuda` build) is the manager's L1; the host tier's
	// arena is registered with it, so pages go to the device by DMA from
	// where they are.
	var gpuAtt gpuAttention
	var device storage.DeviceCache
	if p.GPUCapacity > 0 {
		if gpuAtt, err = newGPUAttention(p); err != nil {
			return nil, errors.Join(err, closeSSD())
		}
		defer gpuAtt.close()
		if host != nil {
			if err := gpuAtt.register(host.Memory()); err != nil {
				log.Warn("host tier pages go to the gpu tier through staging buffers", "error", err)
			}
		}
		device = gpuAtt.device()
	}
	mgr, err = storage.NewManager(storage.ManagerOptions{Tier: mem, Store: store, Write: p.ssdWrite(), Layers: layers, Log: log, Device: device})
	if err != nil {
		return nil, errors.Join(err, closeSSD())
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var pf *storage.Prefetcher
	if store != nil {
		if pf, err = storage.NewPrefetcher(ctx, storage.PrefetchOptions{Workers: p.PrefetchWorkers, Load: mgr.Promote}); err != nil {
			return nil, errors.Join(err, closeSSD())
		}
	}
	closeStores := func() error {
		if pf != nil {
			pf.Close()
		}
		return closeSSD()
	}
	var pool *storage.Pool
	if !p.Metadata {
		arena, err := storage.NewArena(storage.ArenaOptions{Size: p.PoolBytes, MinBlock: minBlock})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("pool: %w", err), closeStores())
		}
		pool = storage.NewPool(arena)
		if gpuAtt != nil {
			if err := gpuAtt.register(pool.Memory()); err != nil {
				log.Warn("pool pages go to the gpu tier through staging buffers", "error", err)
			}
		}
	}
	t0 := time.Now()
	env, err := NewEnv(EnvOptions{Model: p.Model, DType: p.DType, BlockTokens: p.BlockTokens,
		PrefillChunk: p.PrefillChunk, Seed: p.Seed, Manager: mgr, Pool: pool, Prefetcher: pf, Log: log, Metadata: p.Metadata,
		Tuning: p.tuning()})
	if err != nil {
		return nil, errors.Join(err, closeStores())
	}
	log.Debug("model ready", "layers", p.Model.NumLayers, "elapsed", time.Since(t0).Round(time.Millisecond))

	env.gpu = gpuAtt
	env.inflight = make(chan struct{}, p.MaxActive)
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
			return nil, errors.Join(fmt.Errorf("stage %q: %w", ps.Name, err), closeStores())
		}
		node = pipeline.Then(node, st, ps.Options)
	}
	var done atomic.Int64
	var stallMu sync.Mutex
	var stalls []float64
	pipeline.Sink(node, "report", func(ctx context.Context, s *Step) error {
		if !s.Cached {
			stallMu.Lock()
			stalls = append(stalls, s.Stall.Seconds())
			stallMu.Unlock()
		}
		s.KV = nil
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
		<-env.inflight // its slot: the next request may start
		if s.Req.Done != nil {
			close(s.Req.Done)
		}
		done.Add(1)
		return nil
	})

	stopProgress := p.progress(log, o, &done, total, env)
	start := time.Now()
	runErr := pl.Run(ctx)
	wall := time.Since(start)
	stopProgress()
	if err := env.ReleaseAll(); err != nil && runErr == nil {
		runErr = err
	}
	var pfStats storage.PrefetchStats
	if pf != nil {
		pf.Close()
		pfStats = pf.Stats()
	}
	// Under write_back the host tier's pages reach the ssd tier only on
	// eviction: write the rest down, so the next run starts warm.
	if n, err := mgr.Flush(); err != nil && runErr == nil {
		runErr = err
	} else if n > 0 {
		log.Debug("flushed host pages to the ssd tier", "pages", n)
	}
	// The report describes the tiers as the run left them, before the ssd
	// tier closes.
	r := newReport(p, env, pl.Metrics(), mgr, pfStats, memoryReport(host, pool), wall)

	r.StepStalls = stalls
	if err := closeStores(); err != nil && runErr == nil {
		runErr = fmt.Errorf("ssd tier: %w", err)
	}
	return r, runErr
}

// ssdWrite is the write policy of the ssd tier, if any.
func (p *Plan) ssdWrite() storage.WritePolicy {
	if p.SSD == nil {
		return storage.WriteBack
	}
	return p.SSD.Write
}

// Progress is a snapshot of a run's progress.
type Progress struct {
	// Done counts requests finished; Total is how many the source will
	// emit (0 when it cannot tell).
	Done, Total int64
	Elapsed     time.Duration
	// PrefixHitRatio is cached over prompt tokens so far.
	PrefixHitRatio float64
}

// progress reports the run's progress every interval, to o.OnProgress or
// as a log line, until the returned function is called.
func (p *Plan) progress(log hclog.Logger, o RunOptions, done *atomic.Int64, total int, env *Env) func() {
	every := o.Progress
	if o.OnProgress != nil && every <= 0 {
		every = time.Second
	}
	if every <= 0 {
		return func() {}
	}
	quit, exited := make(chan struct{}), make(chan struct{})
	start := time.Now()
	snapshot := func() Progress {
		c := env.Counters()
		return Progress{Done: done.Load(), Total: int64(total), Elapsed: time.Since(start),
			PrefixHitRatio: ratio(c.CachedTokens, c.PromptTokens)}
	}
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				pr := snapshot()
				if o.OnProgress != nil {
					o.OnProgress(pr)
					continue
				}
				args := []any{"requests", pr.Done, "elapsed", pr.Elapsed.Round(time.Second),
					"prefix_hit_ratio", fmt.Sprintf("%.3f", pr.PrefixHitRatio)}
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
		if o.OnProgress != nil {
			o.OnProgress(snapshot()) // the final state
		}
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

// tuning returns the derived stage defaults the environment carries.
func (p *Plan) tuning() Tuning {
	if p.Derived == nil {
		return Tuning{}
	}
	return Tuning{Lookahead: p.Derived.Lookahead, AttendThreads: p.Derived.AttendThreads}
}
