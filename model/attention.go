package model

import (
	"errors"
	"fmt"
	"math"
	"sync"
)

// ErrShortKV is wrapped by the errors of Forward (and PagedKV methods) when
// the cache has too few pages for the tokens; PagedKV.Grow fixes it.
var ErrShortKV = errors.New("KV cache pages do not cover the tokens")

// maxTokens bounds sequence indices so that index arithmetic (tokens ×
// hidden size) cannot overflow an int: 2^40 where ints have 64 bits, 2^18
// where they have 32.
const maxTokens = 1 << (18 + 22*(^uint(0)>>63))

// Attention is one Qwen3-VL text-attention layer. It is immutable after
// NewAttention, so Forward calls on distinct PagedKVs may run in parallel.
type Attention struct {
	cfg    Config
	w      *LayerWeights
	rope   rope
	kernel Attender
	// linear computes the projections: the vector loops unless
	// Options.Scalar (given to NewAttentionWith, or to the Kernel given to
	// WithKernel).
	linear func(y, x, w []float32, n, in, out int)
	pool   sync.Pool // of *scratch
}

// scratch holds Forward's temporary buffers; pooled so that steady-state
// calls do not allocate.
type scratch struct {
	q, k, v  []float32 // projections: [n][H*D], [n][KH*D], [n][KH*D]
	ctx      []float32 // attention output per token and query head, [n][H*D]
	cos, sin []float32 // rotary tables, [n][D/2]
}

// resize returns s with length n, reallocating only if it is too small.
func resize[E any](s []E, n int) []E {
	if cap(s) < n {
		return make([]E, n)
	}
	return s[:n]
}

// NewAttention returns the layer with geometry cfg and weights w, and the
// dense kernel on the calling goroutine. The weights are used in place, not
// copied: they must not change while the Attention is in use.
func NewAttention(cfg Config, w *LayerWeights) (*Attention, error) {
	return NewAttentionWith(cfg, w, Options{})
}

// NewAttentionWith is NewAttention with the attention kernel chosen by opts.
func NewAttentionWith(cfg Config, w *LayerWeights, opts Options) (*Attention, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := w.check(cfg); err != nil {
		return nil, fmt.Errorf("layer weights: %w", err)
	}
	kernel, err := NewKernel(cfg, opts)
	if err != nil {
		return nil, err
	}
	a := &Attention{
		cfg:    cfg,
		w:      w,
		rope:   newRope(cfg),
		kernel: kernel,
		linear: selectKernels(!opts.Scalar).linear,
	}
	a.pool.New = func() any { return new(scratch) }
	return a, nil
}

// Config returns the layer's geometry.
func (a *Attention) Config() Config { return a.cfg }

// Attender computes attention over paged K/V for a batch of queries: what
// Kernel does on the CPU, and what a GPU implementation does on a device.
type Attender interface {
	Attend(qs ...Query) error
}

// Kernel returns the layer's attention kernel, or nil when it attends
// through another Attender (WithAttender).
func (a *Attention) Kernel() *Kernel {
	k, _ := a.kernel.(*Kernel)
	return k
}

// WithKernel returns the layer with its attention computed by k, sharing
// a's weights, and its projections by the same set of loops as k (the Go
// ones under Options.Scalar). k must have the layer's geometry.
func (a *Attention) WithKernel(k *Kernel) *Attention {
	b := a.WithAttender(k)
	b.linear = k.loops.linear
	return b
}

// WithAttender returns the layer with its attention computed by at (a GPU
// kernel, say), sharing a's weights. Queries given to at follow Kernel's
// contract.
func (a *Attention) WithAttender(at Attender) *Attention {
	b := &Attention{cfg: a.cfg, w: a.w, rope: a.rope, kernel: at, linear: a.linear}
	b.pool.New = func() any { return new(scratch) }
	return b
}

// Forward runs the layer for n = len(x)/HiddenSize new tokens that occupy
// sequence indices start..start+n-1; pos holds their three MRoPE position
// rows (temporal, height, width), each of length n.
//
// Forward writes the new tokens' keys (after k_norm and rotary) and values
// into kv, whose pages must already cover start+n tokens, then computes
// causal attention with the layer's Kernel: new token i attends to cache
// tokens [0, start+i]. The cache is read page by page with an online
// softmax, never gathered. out receives n*HiddenSize floats, the output
// after o_proj.
//
// Forward returns an error, and leaves kv untouched, if the arguments do not
// fit together. With one kernel worker it allocates nothing in steady state
// and starts no goroutines.
func (a *Attention) Forward(x []float32, pos [3][]int64, kv *PagedKV, start int, out []float32) error {
	c := a.cfg
	if len(x)%c.HiddenSize != 0 {
		return fmt.Errorf("Forward: len(x) = %d is not a multiple of HiddenSize %d", len(x), c.HiddenSize)
	}
	n := len(x) / c.HiddenSize
	for r, name := range [3]string{"temporal", "height", "width"} {
		if len(pos[r]) != n {
			return fmt.Errorf("Forward: %s position row has %d entries, want %d tokens", name, len(pos[r]), n)
		}
	}
	if start < 0 || start > maxTokens || n > maxTokens {
		return fmt.Errorf("Forward: start %d out of range", start)
	}
	if len(out) < n*c.HiddenSize {
		return fmt.Errorf("Forward: len(out) = %d, want at least %d", len(out), n*c.HiddenSize)
	}
	if err := kv.checkGeometry(); err != nil {
		return fmt.Errorf("Forward: %w", err)
	}
	if kv.KVHeads != c.NumKVHeads || kv.HeadDim != c.HeadDim {
		return fmt.Errorf("Forward: PagedKV has %d KV heads of dim %d, layer has %d of dim %d", kv.KVHeads, kv.HeadDim, c.NumKVHeads, c.HeadDim)
	}
	if err := kv.checkPages(start + n); err != nil {
		return fmt.Errorf("Forward: %w", err)
	}
	if n == 0 {
		return nil
	}

	s := a.pool.Get().(*scratch)
	defer a.pool.Put(s)
	a.project(s, x, pos, n)
	a.store(s, kv, start, n)
	s.ctx = resize(s.ctx, n*c.QueryDim())
	q := Query{Q: s.q, KV: kv, Start: start, Out: s.ctx}
	var err error
	if k, ok := a.kernel.(*Kernel); ok {
		err = k.Attend(q) // a direct call: its argument stays on the stack
	} else {
		err = a.kernel.Attend(q)
	}
	if err != nil {
		return fmt.Errorf("Forward: %w", err)
	}
	a.linear(out, s.ctx, a.w.O, n, c.QueryDim(), c.HiddenSize)
	return nil
}

// StoreKV computes the keys (after k_norm and rotary) and values of n =
// len(x)/HiddenSize tokens at sequence indices start..start+n-1 and writes
// them into kv, exactly as Forward does, without attending. It rebuilds a
// page whose stored copy was lost; only the pages covering [start, start+n)
// need to be present.
func (a *Attention) StoreKV(x []float32, pos [3][]int64, kv *PagedKV, start int) error {
	c := a.cfg
	if len(x)%c.HiddenSize != 0 {
		return fmt.Errorf("StoreKV: len(x) = %d is not a multiple of HiddenSize %d", len(x), c.HiddenSize)
	}
	n := len(x) / c.HiddenSize
	for r, name := range [3]string{"temporal", "height", "width"} {
		if len(pos[r]) != n {
			return fmt.Errorf("StoreKV: %s position row has %d entries, want %d tokens", name, len(pos[r]), n)
		}
	}
	if start < 0 || start > maxTokens || n > maxTokens {
		return fmt.Errorf("StoreKV: start %d out of range", start)
	}
	if err := kv.checkGeometry(); err != nil {
		return fmt.Errorf("StoreKV: %w", err)
	}
	if kv.KVHeads != c.NumKVHeads || kv.HeadDim != c.HeadDim {
		return fmt.Errorf("StoreKV: PagedKV has %d KV heads of dim %d, layer has %d of dim %d", kv.KVHeads, kv.HeadDim, c.NumKVHeads, c.HeadDim)
	}
	if n == 0 {
		return nil
	}
	want := kv.PageBytes()
	for p := start / kv.BlockTokens; p <= (start+n-1)/kv.BlockTokens; p++ {
		if p >= len(kv.K) || p >= len(kv.V) || len(kv.K[p]) != want || len(kv.V[p]) != want {
			return fmt.Errorf("StoreKV: page %d missing or not %d bytes", p, want)
		}
	}
	s := a.pool.Get().(*scratch)
	defer a.pool.Put(s)
	a.project(s, x, pos, n)
	a.store(s, kv, start, n)
	return nil
}

// project computes the queries, keys and values of the n new tokens, with
// RMSNorm and rotary applied to queries and keys.
func (a *Attention) project(s *scratch, x []float32, pos [3][]int64, n int) {
	c := a.cfg
	qd, kd, d, half := c.QueryDim(), c.KVDim(), c.HeadDim, c.HeadDim/2
	s.q = resize(s.q, n*qd)
	s.k = resize(s.k, n*kd)
	s.v = resize(s.v, n*kd)
	s.cos = resize(s.cos, n*half)
	s.sin = resize(s.sin, n*half)
	a.linear(s.q, x, a.w.Q, n, c.HiddenSize, qd)
	a.linear(s.k, x, a.w.K, n, c.HiddenSize, kd)
	a.linear(s.v, x, a.w.V, n, c.HiddenSize, kd)
	a.rope.cosSin(pos, n, s.cos, s.sin)
	eps := float32(c.RMSNormEps)
	for t := range n {
		cos, sin := s.cos[t*half:(t+1)*half], s.sin[t*half:(t+1)*half]
		for h := range c.NumHeads {
			v := s.q[(t*c.NumHeads+h)*d:][:d]
			rmsNorm(v, a.w.QNorm, eps)
			a.rope.apply(v, cos, sin)
		}
		for g := range c.NumKVHeads {
			v := s.k[(t*c.NumKVHeads+g)*d:][:d]
			rmsNorm(v, a.w.KNorm, eps)
			a.rope.apply(v, cos, sin)
		}
	}
}

// rmsNorm computes x = w * x / sqrt(mean(x²) + eps) in place, rounding as
// transformers' float32 RMSNorm does (the mean itself is accumulated in
// float64, which is only more exact).
func rmsNorm(x, w []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	variance := float32(ss / float64(len(x)))
	r := float32(1 / math.Sqrt(float64(variance+eps)))
	w = w[:len(x)]
	for i, v := range x {
		x[i] = w[i] * (v * r)
	}
}

// store writes the new tokens' keys and values into their pages. A page
// summary that already covers a rewritten slot is reset: it no longer
// bounds the page's keys.
func (a *Attention) store(s *scratch, kv *PagedKV, start, n int) {
	kh, d, bt, size := a.cfg.NumKVHeads, a.cfg.HeadDim, kv.BlockTokens, kv.DType.Size()
	for t := range n {
		idx := start + t
		page, slot := idx/bt, idx%bt
		if page < len(kv.Summaries) && kv.Summaries[page] != nil && kv.Summaries[page].Tokens > slot {
			kv.Summaries[page].Reset()
		}
		for g := range kh {
			off := (g*bt + slot) * d * size
			src := (t*kh + g) * d
			kv.PutKey(kv.K[page], g, slot, s.k[src:src+d])
			kv.DType.Encode(kv.V[page][off:off+d*size], s.v[src:src+d])
		}
	}
}
