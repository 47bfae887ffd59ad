package stages

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// Env is what the stages of one run share: the model's layers, the KV cache
// manager, the page geometry and the run's counters. It is safe for
// concurrent use. Its exported fields are set by NewEnv and must not change
// afterwards: the layers and pages are built to them.
type Env struct {
	// Model is the attention geometry; Model.NumLayers layers run.
	Model model.Config
	// DType is the element type of K/V pages.
	DType model.DType
	// BlockTokens is the number of tokens per block (and page).
	BlockTokens int
	// PrefillChunk is the number of prompt tokens per prefill step, a
	// multiple of BlockTokens.
	PrefillChunk int
	// Manager is the KV cache manager.
	Manager *storage.Manager
	// Pool holds the pages requests compute until the tier copies them.
	Pool *storage.Pool
	// Prefetcher loads pages from the manager's store; nil without one.
	Prefetcher *storage.Prefetcher
	// Log receives the stages' messages.
	Log hclog.Logger
	// Metadata is set for payload = "metadata": pages are keys and sizes,
	// one page holds a block's every layer, each chunk is one step, and
	// attend computes nothing.
	Metadata bool
	// Tuning holds the hardware block's derived stage defaults.
	Tuning Tuning

	layers []*model.Attention

	// inflight holds a token per request admitted and not yet finished,
	// when Plan.Run bounds requests in flight (max_active); nil otherwise.
	inflight chan struct{}

	mu sync.Mutex
	// live holds the sequences whose pins are taken, so that a failed or
	// cancelled run can return them. Guarded by mu.
	live map[*Sequence]struct{}
	// kernel is the attend stage's attention kernel, for the report; nil
	// until the stage is built. Guarded by mu.
	kernel *model.Kernel

	// gpu runs decode steps' attention on the GPU over its device tier;
	// nil without a gpu tier. Set before the run starts.
	gpu gpuAttention

	requests       atomic.Int64
	promptTokens   atomic.Int64
	cachedTokens   atomic.Int64
	computedTokens atomic.Int64 // tokens attended, counted once (at layer 0)
	lookupPages    atomic.Int64 // prefix pages lookups asked for (usable blocks × layers)
	verifiedPages  atomic.Int64 // loaded pages of synthetic requests checked against FillPage
	decodeTokens   atomic.Int64
	committedPages atomic.Int64
	commitFailures atomic.Int64 // pages kept private: the tier had no room

	// Loads of stored pages as attend found them: finished (on time) or
	// not (late, waited for stallNanos in all); demandLoads were issued by
	// attend itself, not prefetch; recomputed pages failed their checksum.
	loadsOnTime, loadsLate, demandLoads, recomputed, stallNanos atomic.Int64
}

// EnvOptions configure NewEnv.
type EnvOptions struct {
	Model        model.Config
	DType        model.DType
	BlockTokens  int
	PrefillChunk int
	// Seed makes the random weights of every layer.
	Seed       uint64
	Manager    *storage.Manager
	Pool       *storage.Pool
	Prefetcher *storage.Prefetcher
	Log        hclog.Logger
	Metadata   bool
	// Tuning holds defaults the hardware block derived, for the stages
	// whose settings the file leaves unset.
	Tuning Tuning
}

// Tuning is what a pipeline's hardware block derived for the stages'
// settings; zero fields mean no derived value.
type Tuning struct {
	Lookahead     int // prefetch lookahead in layers
	AttendThreads int // goroutines per attention step
}

// NewEnv builds the model's layers with seeded random weights and returns the
// environment for one run.
func NewEnv(o EnvOptions) (*Env, error) {
	if err := o.Model.Validate(); err != nil {
		return nil, err
	}
	if o.BlockTokens < 1 {
		return nil, fmt.Errorf("block_tokens %d: must be positive", o.BlockTokens)
	}
	if o.PrefillChunk < o.BlockTokens || o.PrefillChunk%o.BlockTokens != 0 {
		return nil, fmt.Errorf("prefill_chunk %d: must be a positive multiple of block_tokens (%d)", o.PrefillChunk, o.BlockTokens)
	}
	if o.Manager == nil || (o.Pool == nil && !o.Metadata) {
		return nil, fmt.Errorf("no KV manager or memory pool")
	}
	layers := o.Model.NumLayers
	if o.Metadata {
		layers = 1
	}
	if o.Manager.Layers() != layers {
		return nil, fmt.Errorf("KV manager has %d layers, the run %d", o.Manager.Layers(), layers)
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	e := &Env{
		Model: o.Model, DType: o.DType, BlockTokens: o.BlockTokens, PrefillChunk: o.PrefillChunk,
		Manager: o.Manager, Pool: o.Pool, Prefetcher: o.Prefetcher, Log: o.Log, Metadata: o.Metadata, Tuning: o.Tuning,
	}
	if o.Metadata {
		return e, nil // no weights: nothing is computed
	}
	for l := range o.Model.NumLayers {
		a, err := model.NewAttention(o.Model, model.RandomWeights(o.Model, l, o.Seed))
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", l, err)
		}
		e.layers = append(e.layers, a)
	}
	return e, nil
}

// track registers a sequence whose lease holds pins.
func (e *Env) track(seq *Sequence) {
	e.mu.Lock()
	if e.live == nil {
		e.live = map[*Sequence]struct{}{}
	}
	e.live[seq] = struct{}{}
	e.mu.Unlock()
}

// finish releases a sequence's pins and forgets it.
func (e *Env) finish(seq *Sequence) error {
	e.mu.Lock()
	delete(e.live, seq)
	e.mu.Unlock()
	return seq.release()
}

// ReleaseAll returns the pins of every sequence still holding some: after a
// failed or cancelled run, the requests in flight never reached their last
// step.
func (e *Env) ReleaseAll() error {
	e.mu.Lock()
	live := e.live
	e.live = nil
	e.mu.Unlock()
	var errs []error
	for seq := range live {
		errs = append(errs, seq.release())
	}
	return errors.Join(errs...)
}

// Layers returns the number of layers a request's steps run: the model's,
// or 1 in a metadata run, where a page holds all of a block's layers.
func (e *Env) Layers() int {
	if e.Metadata {
		return 1
	}
	return e.Model.NumLayers
}

// MetaPageBytes is the size of a page in a metadata run: K and V of every
// layer of a block.
func (e *Env) MetaPageBytes() int64 { return 2 * int64(e.PageBytes()) * int64(e.Model.NumLayers) }

// Layer returns the attention of layer l.
func (e *Env) Layer(l int) *model.Attention { return e.layers[l] }

// PageBytes is the size of K (or V) of one page.
func (e *Env) PageBytes() int {
	return e.Model.NumKVHeads * e.BlockTokens * e.Model.HeadDim * e.DType.Size()
}

// Counters is a snapshot of a run's token and request counts.
type Counters struct {
	Requests       int64
	PromptTokens   int64
	CachedTokens   int64
	ComputedTokens int64
	DecodeTokens   int64
	CommittedPages int64
	CommitFailures int64
	LoadsOnTime    int64
	LoadsLate      int64
	DemandLoads    int64
	Recomputed     int64
	Stall          time.Duration
	LookupPages    int64
	VerifiedPages  int64
}

// Counters returns a snapshot of the run's counters.
func (e *Env) Counters() Counters {
	return Counters{
		Requests:       e.requests.Load(),
		PromptTokens:   e.promptTokens.Load(),
		CachedTokens:   e.cachedTokens.Load(),
		ComputedTokens: e.computedTokens.Load(),
		DecodeTokens:   e.decodeTokens.Load(),
		CommittedPages: e.committedPages.Load(),
		CommitFailures: e.commitFailures.Load(),
		LoadsOnTime:    e.loadsOnTime.Load(),
		LoadsLate:      e.loadsLate.Load(),
		DemandLoads:    e.demandLoads.Load(),
		Recomputed:     e.recomputed.Load(),
		Stall:          time.Duration(e.stallNanos.Load()),
		LookupPages:    e.lookupPages.Load(),
		VerifiedPages:  e.verifiedPages.Load(),
	}
}

// setKernel records the attention kernel the attend stage runs.
func (e *Env) setKernel(k *model.Kernel) {
	e.mu.Lock()
	e.kernel = k
	e.mu.Unlock()
}

// Kernel returns the attention kernel the attend stage runs, or nil.
func (e *Env) Kernel() *model.Kernel {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.kernel
}
