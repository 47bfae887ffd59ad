package model

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/kvflow/kvflow/tensor"
)

// ErrShortKV is wrapped by the errors of Forward (and PagedKV methods) when
// the cache has too few pages for the tokens; PagedKV.Grow fixes it.
var ErrShortKV = errors.New("KV cache pages do not cover the tokens")

// maxTokens bounds sequence indices so that index arithmetic cannot overflow.
const maxTokens = 1 << 40

// Attention is one Qwen3-VL text-attention layer. It is immutable after
// NewAttention, so Forward calls on distinct PagedKVs may run in parallel.
type Attention struct {
	cfg     Config
	w       *LayerWeights
	rope    rope
	scaling float32
	pool    sync.Pool // of *scratch
}

// scratch holds Forward's temporary buffers; pooled so that steady-state
// calls do not allocate.
type scratch struct {
	q, k, v  []float32 // projections: [n][H*D], [n][KH*D], [n][KH*D]
	ctx      []float32 // attention output per token and query head, [n][H*D]
	cos, sin []float32 // rotary tables, [n][D/2]
	m, l     []float32 // running max and softmax denominator per (token, head), [n][H]
	kp, vp   []float32 // one page of one KV head, [BlockTokens][D]
	scores   []float32 // [BlockTokens]
}

// resize returns s with length n, reallocating only if it is too small.
func resize(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	return s[:n]
}

// NewAttention returns the layer with geometry cfg and weights w. The weights
// are used in place, not copied: they must not change while the Attention is
// in use.
func NewAttention(cfg Config, w *LayerWeights) (*Attention, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := w.check(cfg); err != nil {
		return nil, fmt.Errorf("layer weights: %w", err)
	}
	a := &Attention{
		cfg:     cfg,
		w:       w,
		rope:    newRope(cfg),
		scaling: float32(1 / math.Sqrt(float64(cfg.HeadDim))),
	}
	a.pool.New = func() any { return new(scratch) }
	return a, nil
}

// Config returns the layer's geometry.
func (a *Attention) Config() Config { return a.cfg }

// Forward runs the layer for n = len(x)/HiddenSize new tokens that occupy
// sequence indices start..start+n-1; pos holds their three MRoPE position
// rows (temporal, height, width), each of length n.
//
// Forward writes the new tokens' keys (after k_norm and rotary) and values
// into kv, whose pages must already cover start+n tokens, then computes
// causal attention: new token i attends to cache tokens [0, start+i]. The
// cache is read page by page with an online softmax, never gathered. out
// receives n*HiddenSize floats, the output after o_proj.
//
// Forward returns an error, and leaves kv untouched, if the arguments do not
// fit together. It allocates nothing in steady state and starts no
// goroutines.
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
	a.attend(s, kv, start, n)
	linear(out, s.ctx, a.w.O, n, c.QueryDim(), c.HiddenSize)
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
	linear(s.q, x, a.w.Q, n, c.HiddenSize, qd)
	linear(s.k, x, a.w.K, n, c.HiddenSize, kd)
	linear(s.v, x, a.w.V, n, c.HiddenSize, kd)
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

// store writes the new tokens' keys and values into their pages.
func (a *Attention) store(s *scratch, kv *PagedKV, start, n int) {
	kh, d, bt, size := a.cfg.NumKVHeads, a.cfg.HeadDim, kv.BlockTokens, kv.DType.Size()
	for t := range n {
		idx := start + t
		page, slot := idx/bt, idx%bt
		for g := range kh {
			off := (g*bt + slot) * d * size
			src := (t*kh + g) * d
			kv.DType.Encode(kv.K[page][off:off+d*size], s.k[src:src+d])
			kv.DType.Encode(kv.V[page][off:off+d*size], s.v[src:src+d])
		}
	}
}

// attend computes s.ctx, the softmax-weighted values for every new token and
// query head. For each KV head it walks the pages in order, decodes one page
// of that head to float32 once, and folds it into the running (online)
// softmax of every query head of the group and every new token that may see
// it: the running max m and denominator l are corrected once per page, as in
// FlashAttention.
func (a *Attention) attend(s *scratch, kv *PagedKV, start, n int) {
	c := a.cfg
	h, kh, d, bt := c.NumHeads, c.NumKVHeads, c.HeadDim, kv.BlockTokens
	group := h / kh
	total := start + n
	s.ctx = resize(s.ctx, n*h*d)
	s.m = resize(s.m, n*h)
	s.l = resize(s.l, n*h)
	s.kp = resize(s.kp, bt*d)
	s.vp = resize(s.vp, bt*d)
	s.scores = resize(s.scores, bt)
	clear(s.ctx)
	clear(s.l)
	for i := range s.m {
		s.m[i] = float32(math.Inf(-1))
	}
	size := kv.DType.Size()
	for g := range kh {
		off := g * bt * d * size
		for p := range kv.Pages(total) {
			first := p * bt
			count := min(bt, total-first) // tokens of this page in the cache
			kp := pageHead(kv.DType, kv.K[p][off:], s.kp[:count*d])
			vp := pageHead(kv.DType, kv.V[p][off:], s.vp[:count*d])
			// New token i sees cache tokens [0, start+i].
			for i := max(0, first-start); i < n; i++ {
				visible := min(count, start+i+1-first)
				for hq := g * group; hq < (g+1)*group; hq++ {
					st := i*h + hq
					a.fold(s.q[st*d:(st+1)*d], kp, vp, s.scores[:visible], s.ctx[st*d:(st+1)*d], &s.m[st], &s.l[st])
				}
			}
		}
	}
	for st := range n * h {
		scale(1/s.l[st], s.ctx[st*d:(st+1)*d])
	}
}

// fold adds len(scores) keys and values (rows of kp, vp) to the online
// softmax of query q: acc and l are rescaled to the new running max m, then
// accumulate exp(score-m) and exp(score-m)*v.
func (a *Attention) fold(q, kp, vp, scores, acc []float32, m, l *float32) {
	d := len(q)
	pageMax := float32(math.Inf(-1))
	for t := range scores {
		sc := dot(q, kp[t*d:]) * a.scaling
		scores[t] = sc
		pageMax = max(pageMax, sc)
	}
	mx := *m
	if pageMax > mx {
		if *l != 0 {
			corr := float32(math.Exp(float64(mx - pageMax)))
			*l *= corr
			scale(corr, acc)
		}
		mx = pageMax
		*m = mx
	}
	// Turn scores into weights, then add the weighted values four at a
	// time so that acc is loaded and stored once per four tokens.
	var sum float32
	for t, sc := range scores {
		p := float32(math.Exp(float64(sc - mx)))
		scores[t] = p
		sum += p
	}
	*l += sum
	t := 0
	for ; t+4 <= len(scores); t += 4 {
		w := scores[t : t+4 : t+4]
		axpy4(w[0], w[1], w[2], w[3], vp[t*d:], vp[(t+1)*d:], vp[(t+2)*d:], vp[(t+3)*d:], acc)
	}
	for ; t < len(scores); t++ {
		axpy(scores[t], vp[t*d:], acc)
	}
}

// pageHead returns the float32 values of one KV head's rows in a page: src
// itself for f32 pages when it can be viewed in place, otherwise a decoding
// into buf.
func pageHead(dt DType, src []byte, buf []float32) []float32 {
	if dt == F32 {
		if v, ok := tensor.ViewF32(src, len(buf)); ok {
			return v
		}
	}
	dt.Decode(buf, src)
	return buf
}
