package stages

import (
	"context"
	"fmt"
	"time"

	"github.com/kvflow/kvflow/model"
)

// AttendSettings are the attend stage's HCL settings.
type AttendSettings struct {
	// Kernel selects the attention kernel: "dense" or "block_sparse".
	Kernel string `hcl:"kernel,optional"`
	// TopK is the number of pages block-sparse decode reads per KV head,
	// sink and recent pages included.
	TopK *int `hcl:"top_k,optional"`
	// Recent is the number of most recent pages block-sparse decode always
	// reads (model.DefaultRecent when unset).
	Recent *int `hcl:"recent,optional"`
	// Router is a safetensors file with a learned page-scoring matrix
	// ("router.weight", [head_dim, head_dim]); without it pages are scored
	// by the bound their key summaries put on q·k.
	Router string `hcl:"router,optional"`
	// Threads is the number of goroutines one step's attention may use: a
	// decode token's pages are split among them. The stage's workers
	// already run different requests in parallel, so the default is 1.
	Threads *int `hcl:"threads,optional"`
	// Linger is how long the kernel's helper goroutines (threads > 1) wait,
	// spinning, for the next step's call before they exit: a Go duration
	// up to 1s ("500us", "2ms"); "0s" makes them exit after each call, and
	// unset is model.DefaultLinger. Steps in quick succession find lingering helpers
	// running; one started afresh begins tens of µs later.
	Linger string `hcl:"linger,optional"`

	router *model.LearnedRouter // loaded by Validate
	linger time.Duration        // parsed by Validate; < 0: exit at once
}

// Validate implements Validator. It loads the router file, so that a bad
// one is a diagnostic, not a failed run.
func (s *AttendSettings) Validate() error {
	switch s.Kernel {
	case model.KernelDense:
		for _, a := range []struct {
			attr string
			set  bool
		}{{"top_k", s.TopK != nil}, {"recent", s.Recent != nil}, {"router", s.Router != ""}} {
			if a.set {
				return SettingErrorf(a.attr, "only the block_sparse kernel reads %s", a.attr)
			}
		}
	case model.KernelBlockSparse:
		if s.TopK == nil {
			return SettingErrorf("kernel", "block_sparse needs top_k, the number of pages each decode token reads per KV head")
		}
		if *s.TopK < 1 {
			return SettingErrorf("top_k", "%d: must be at least 1", *s.TopK)
		}
		if s.Recent != nil && *s.Recent < 1 {
			return SettingErrorf("recent", "%d: must be at least 1 (the page being written)", *s.Recent)
		}
		if s.Router != "" {
			r, err := model.LoadRouter(s.Router, 0)
			if err != nil {
				return SettingErrorf("router", "%v", err)
			}
			s.router = r
		}
	default:
		return SettingErrorf("kernel", "%q: want %q or %q", s.Kernel, model.KernelDense, model.KernelBlockSparse)
	}
	if s.Threads != nil && *s.Threads < 1 {
		return SettingErrorf("threads", "%d: must be at least 1", *s.Threads)
	}
	if s.Linger != "" {
		d, err := time.ParseDuration(s.Linger)
		switch {
		case err != nil:
			return SettingErrorf("linger", "%q: want a duration such as \"1ms\"", s.Linger)
		case d < 0 || d > time.Second:
			return SettingErrorf("linger", "%s: must be from 0s (helpers exit after each call) to 1s", s.Linger)
		case d == 0:
			s.linger = -1
		default:
			s.linger = d
		}
	}
	return nil
}

// options returns the kernel options of the settings for a model with
// head dimension headDim; threads is the hardware block's derived default
// (0: none).
func (s *AttendSettings) options(headDim, threads int) (model.Options, error) {
	o := model.Options{Kernel: s.Kernel, Workers: max(1, threads), Linger: s.linger}
	if s.Threads != nil {
		o.Workers = *s.Threads
	}
	if s.Kernel == model.KernelBlockSparse {
		o.TopK = *s.TopK
		if s.Recent != nil {
			o.Recent = *s.Recent
		}
		if s.router != nil {
			if s.router.Dim != headDim {
				return o, fmt.Errorf("router %s: its matrix is %d×%d, the model's head_dim is %d", s.Router, s.router.Dim, s.router.Dim, headDim)
			}
			o.Router = s.router
		}
	}
	return o, nil
}

// Attend runs the layer's attention for the step's new tokens over its paged
// K/V view, writing their K/V into the view's pages. It first takes the
// cached pages that were loading from the store; the time it waits for them
// is the step's stall.
type Attend struct {
	env    *Env
	kernel *model.Kernel      // the stage's CPU kernel
	layers []*model.Attention // env's layers with it
}

// NewAttend returns the attend stage with the dense kernel on one thread.
func NewAttend(env *Env) *Attend {
	a, err := NewAttendWith(env, model.Options{})
	if err != nil {
		panic(err) // the zero Options are valid
	}
	return a
}

// NewAttendWith returns the attend stage with the kernel opts choose.
func NewAttendWith(env *Env, opts model.Options) (*Attend, error) {
	a := &Attend{env: env}
	if env.Metadata {
		return a, nil
	}
	k, err := model.NewKernel(env.Model, opts)
	if err != nil {
		return nil, err
	}
	a.kernel = k
	for l := range env.layers {
		a.layers = append(a.layers, env.Layer(l).WithKernel(k))
	}
	env.setKernel(k)
	return a, nil
}

// Name returns "attend".
func (a *Attend) Name() string { return "attend" }

// Process implements pipeline.Stage.
func (a *Attend) Process(ctx context.Context, s *Step) (*Step, error) {
	if s.Cached {
		return s, nil
	}
	env := a.env
	if s.KV == nil && !env.Metadata {
		return nil, fmt.Errorf("no K/V view: is align before attend in the chain?")
	}
	if err := env.resolve(ctx, s); err != nil {
		return nil, err
	}
	if env.Metadata || (s.Req.Synthetic && !s.Decode) {
		// Nothing to compute: a metadata run has no bytes, and a replayed
		// prompt's pages are filled, not computed.
		if !env.Metadata {
			env.fill(s)
		}
		s.Seq.wrote(s.Layer, s.End)
		if s.Layer == 0 {
			env.computedTokens.Add(int64(s.End - s.Start))
			if s.Decode {
				env.decodeTokens.Add(int64(s.End - s.Start))
			}
		}
		return s, nil
	}
	r, hidden := s.Req, a.env.Model.HiddenSize
	n := s.End - s.Start
	x := make([]float32, n*hidden)
	for i := range n {
		Embed(x[i*hidden:(i+1)*hidden], r, s.Start+i, s.Layer)
	}
	var pos [3][]int64
	for i := range pos {
		pos[i] = r.Positions[i][s.Start:s.End]
	}
	s.Out = make([]float32, n*hidden)
	layer := a.layers[s.Layer]
	if env.gpu != nil {
		if at := env.gpu.attender(s, a.kernel); at != nil {
			layer = layer.WithAttender(at)
		}
	}
	if err := layer.Forward(x, pos, s.KV, s.Start, s.Out); err != nil {
		return nil, err
	}
	s.Seq.wrote(s.Layer, s.End)
	if s.Layer == 0 {
		a.env.computedTokens.Add(int64(n))
		if s.Decode {
			a.env.decodeTokens.Add(int64(n))
		}
	}
	return s, nil
}
