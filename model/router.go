package model

import (
	"fmt"
	"math"
	"slices"
	"sync"
)

// Block-sparse decode attention in the style of Quest (Tang et al. 2024):
// every page keeps a PageSummary of its keys, a Router scores the pages of a
// KV head for the query heads that read it, and SelectPages keeps the
// attention sink (page 0), the most recent pages and the best-scoring others.

// Router scores the pages of one KV head for a group of query heads.
type Router interface {
	// Score sets scores[i] for each i < len(sums): an estimate of how much
	// attention the query rows q ([rows][HeadDim], after norm and rotary)
	// give to the keys of KV head g in the page summarised by sums[i];
	// larger is more.
	//
	// q must hold exactly rows*HeadDim elements (the routers here take
	// HeadDim from it, or check it against their own). An empty page
	// (Tokens == 0, or a nil summary) scores -Inf, and so does every page
	// when rows == 0. Score panics, like an out-of-range index, when the
	// arguments are inconsistent: scores shorter than sums, len(q) not
	// rows*HeadDim, or a summary too small for KV head g. The routers here
	// do not allocate in steady state (their scratch is pooled) and are
	// safe for concurrent use.
	Score(scores, q []float32, rows, g int, sums []*PageSummary)
	Name() string
}

var (
	_ Router = BoundRouter{}
	_ Router = LearnedRouter{}
)

// checkScore validates the arguments common to all routers and returns
// HeadDim; d, when > 0, is the HeadDim the router itself requires.
func checkScore(name string, scores, q []float32, rows, g int, sums []*PageSummary, d int) int {
	if len(scores) < len(sums) {
		panic(fmt.Sprintf("%s.Score: %d scores for %d pages", name, len(scores), len(sums)))
	}
	if rows < 0 || g < 0 {
		panic(fmt.Sprintf("%s.Score: rows %d, KV head %d", name, rows, g))
	}
	if rows == 0 {
		if len(q) != 0 {
			panic(fmt.Sprintf("%s.Score: %d query elements for 0 rows", name, len(q)))
		}
		return d
	}
	if d <= 0 {
		d = len(q) / rows
	}
	if d <= 0 || len(q) != rows*d {
		panic(fmt.Sprintf("%s.Score: %d query elements are not %d rows of HeadDim %d", name, len(q), rows, d))
	}
	for i, s := range sums {
		if s == nil || s.Tokens == 0 {
			continue
		}
		if s.headDim != 0 && s.headDim != d {
			panic(fmt.Sprintf("%s.Score: page %d was summarised with HeadDim %d, queries have %d", name, i, s.headDim, d))
		}
		if len(s.Min) < (g+1)*d || len(s.Max) < (g+1)*d {
			panic(fmt.Sprintf("%s.Score: page %d summary of %d/%d channels has no KV head %d of HeadDim %d", name, i, len(s.Min), len(s.Max), g, d))
		}
	}
	return d
}

// BoundRouter scores a page by Quest's upper bound on q·k over the page:
// for each row, Σ_c max(q_c*Min_c, q_c*Max_c); the page's score is the max
// over rows. It never underestimates the largest raw (unscaled) score a
// query row gives a key of the page, up to float32 rounding, and is exact
// for a page of one token.
type BoundRouter struct{}

// Name returns "bound".
func (BoundRouter) Name() string { return "bound" }

// Score implements Router. Σ_c max(q_c*Min_c, q_c*Max_c) is the dot
// product of [max(q,0), min(q,0)] with [Max, Min], so the bound of every
// page is one vector matrix product over the gathered summaries.
func (BoundRouter) Score(scores, q []float32, rows, g int, sums []*PageSummary) {
	d := checkScore("BoundRouter", scores, q, rows, g, sums, 0)
	b := routePool.Get().(*routeScratch)
	defer routePool.Put(b)
	b.q = resize(b.q, rows*2*d)
	for r := range rows {
		qr, split := q[r*d:(r+1)*d], b.q[r*2*d:(r+1)*2*d]
		for c, x := range qr {
			split[c], split[d+c] = max(x, 0), min(x, 0)
		}
	}
	b.maxDots(scores, rows, 2*d, sums, func(dst []float32, s *PageSummary) {
		copy(dst[:d], s.Max[g*d:(g+1)*d])
		copy(dst[d:], s.Min[g*d:(g+1)*d])
	})
}

// routeScratch holds one router call's query rows and gathered summaries.
type routeScratch struct{ q, s, out []float32 }

// routePool recycles router scratch: routers are values shared by all the
// kernel's workers.
var routePool = sync.Pool{New: func() any { return new(routeScratch) }}

// maxDots sets scores[i] to the largest dot product of a row of b.q
// ([rows][w]) with the vector gather writes for page i, or -Inf for an
// empty page. The gathered vectors are scored all at once by the vector
// kernels.
func (b *routeScratch) maxDots(scores []float32, rows, w int, sums []*PageSummary, gather func(dst []float32, s *PageSummary)) {
	n := len(sums)
	if rows == 0 {
		for i := range sums {
			scores[i] = float32(math.Inf(-1))
		}
		return
	}
	b.s = resize(b.s, n*w)
	b.out = resize(b.out, rows*n)
	for i, s := range sums {
		dst := b.s[i*w : (i+1)*w]
		if s == nil || s.Tokens == 0 {
			clear(dst)
			continue
		}
		gather(dst, s)
	}
	defaultKernels().scoresF32(b.out, b.q, b.s, rows, n, w, n, 1)
	for i, s := range sums {
		if s == nil || s.Tokens == 0 {
			scores[i] = float32(math.Inf(-1))
			continue
		}
		best := b.out[i]
		for r := 1; r < rows; r++ {
			best = max(best, b.out[r*n+i])
		}
		scores[i] = best
	}
}

// LearnedRouter scores a page by max over rows of (W q_row) · center, where
// center = (Min+Max)/2 of KV head g and W is a [HeadDim][HeadDim] row-major
// matrix loaded from a safetensors file: (W q)_i = Σ_j W[i*Dim+j] q_j.
type LearnedRouter struct {
	W   []float32
	Dim int
}

// Name returns "learned".
func (LearnedRouter) Name() string { return "learned" }

// Score implements Router. It projects each row once (rows*Dim² work) and
// then costs rows*Dim per page.
func (r LearnedRouter) Score(scores, q []float32, rows, g int, sums []*PageSummary) {
	if r.Dim <= 0 || len(r.W) != r.Dim*r.Dim {
		panic(fmt.Sprintf("LearnedRouter.Score: %d weights for Dim %d", len(r.W), r.Dim))
	}
	d := checkScore("LearnedRouter", scores, q, rows, g, sums, r.Dim)
	b := routePool.Get().(*routeScratch)
	defer routePool.Put(b)
	b.q = resize(b.q, rows*d)
	for row := range rows {
		qr, wq := q[row*d:(row+1)*d], b.q[row*d:(row+1)*d]
		for o := range wq {
			wq[o] = dot(r.W[o*d:(o+1)*d], qr)
		}
	}
	// The centers are gathered as Min+Max and the scores halved after:
	// exact, so this is (W q)·center.
	b.maxDots(scores, rows, d, sums, func(dst []float32, s *PageSummary) {
		mn, mx := s.Min[g*d:(g+1)*d], s.Max[g*d:(g+1)*d]
		for c := range dst {
			dst[c] = mn[c] + mx[c]
		}
	})
	for i := range sums {
		scores[i] *= 0.5
	}
}

// RouterTensor is the name of the weight tensor LoadRouter reads.
const RouterTensor = "router.weight"

// LoadRouter reads tensor "router.weight" of shape [d, d] (F32, F16, BF16 or
// F64) from a safetensors file and returns a LearnedRouter with Dim d ==
// headDim, or with the file's d when headDim is 0 (a configuration checked
// before the model is known); errors name the file and the problem
// (missing tensor, wrong shape, unreadable file, non-finite weight) and
// never panic.
func LoadRouter(path string, headDim int) (*LearnedRouter, error) {
	if headDim < 0 {
		return nil, fmt.Errorf("%s: router for head_dim %d, want > 0", path, headDim)
	}
	f, err := readSafetensors(path)
	if err != nil {
		// os errors and parse errors both name the file already.
		return nil, fmt.Errorf("router: %w", err)
	}
	if headDim == 0 {
		t, ok := f.Tensors[RouterTensor]
		if !ok || len(t.Shape) != 2 || t.Shape[0] != t.Shape[1] || t.Shape[0] < 1 {
			shape := []int(nil)
			if ok {
				shape = t.Shape
			}
			return nil, fmt.Errorf("router: %s: want tensor %q of a square shape [d, d], have %v", path, RouterTensor, shape)
		}
		headDim = t.Shape[0]
	}
	w, err := f.floats(RouterTensor, headDim, headDim)
	if err != nil {
		return nil, fmt.Errorf("router: %s: %w", path, err)
	}
	if i := slices.IndexFunc(w, func(x float32) bool { return math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) }); i >= 0 {
		return nil, fmt.Errorf("router: %s: tensor %q: element [%d, %d] is %v, not finite", path, RouterTensor, i/headDim, i%headDim, w[i])
	}
	return &LearnedRouter{W: w, Dim: headDim}, nil
}

// SelectPages returns dst[:0] appended with the pages to attend, in
// ascending order, no duplicates: page 0 (the sink), the last recent pages
// (npages-recent .. npages-1), and then the highest-scoring other pages
// (ties broken by lower index) until topK pages are selected in total (or
// all npages). If topK < 1+recent the sink and recent pages are still all
// kept, so the result has min(npages, max(topK, 1+recent)) pages; a
// negative recent counts as 0. Only scores[:npages] is read, and only for
// the pages that are neither the sink nor recent; a NaN score ranks below
// every other score, -Inf included.
//
// The selection runs in place in dst, as a heap of the chosen pages
// (O(npages log topK)), so it needs no scratch and does not allocate when
// cap(dst) is at least the result's length (in particular when cap(dst) >=
// topK and topK >= 1+recent). It panics if len(scores) < npages.
func SelectPages(dst []int, scores []float32, npages, topK, recent int) []int {
	dst = dst[:0]
	if npages <= 0 {
		return dst
	}
	if len(scores) < npages {
		panic(fmt.Sprintf("SelectPages: %d scores for %d pages", len(scores), npages))
	}
	// Candidates are pages [1, lo); pages lo.. are recent.
	lo := max(npages-min(max(recent, 0), npages), 1)
	ncand := lo - 1
	must := npages - ncand
	extra := min(max(topK-must, 0), ncand)
	dst = slices.Grow(dst, must+extra)
	if extra == ncand {
		for i := range npages {
			dst = append(dst, i)
		}
		return dst
	}
	dst = dst[:1+extra]
	dst[0] = 0
	h := dst[1:]
	if extra > 0 {
		// h is a min-heap under worse: its root is the worst page chosen
		// so far, which a better candidate replaces.
		for i := range h {
			h[i] = 1 + i
		}
		for i := len(h)/2 - 1; i >= 0; i-- {
			siftDown(h, i, scores)
		}
		for c := 1 + extra; c < lo; c++ {
			if worse(scores, h[0], c) {
				h[0] = c
				siftDown(h, 0, scores)
			}
		}
		slices.Sort(h)
	}
	for i := lo; i < npages; i++ {
		dst = append(dst, i)
	}
	return dst
}

// worse reports whether page a ranks below page b: a lower score, or an
// equal one and a higher index. NaN scores rank below all others.
func worse(scores []float32, a, b int) bool {
	sa, sb := scores[a], scores[b]
	if sa != sb {
		an, bn := sa != sa, sb != sb
		switch {
		case an && bn:
			return a > b
		case an || bn:
			return an
		}
		return sa < sb
	}
	return a > b
}

// siftDown restores the heap property of h below i.
func siftDown(h []int, i int, scores []float32) {
	for {
		j := 2*i + 1
		if j >= len(h) {
			return
		}
		if r := j + 1; r < len(h) && worse(scores, h[r], h[j]) {
			j = r
		}
		if !worse(scores, h[j], h[i]) {
			return
		}
		h[i], h[j] = h[j], h[i]
		i = j
	}
}
