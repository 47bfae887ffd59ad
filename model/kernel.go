package model

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/kvflow/kvflow/tensor"
)

// The attention kernels.
const (
	// KernelDense reads every page of the cache.
	KernelDense = "dense"
	// KernelBlockSparse reads, for each decode token and KV head, the TopK
	// pages a Router scores highest, always with the first (sink) page and
	// the Recent most recent pages. Prefill stays dense.
	KernelBlockSparse = "block_sparse"
)

// DefaultRecent is the number of most recent pages block-sparse attention
// always reads when Options.Recent is 0: the page being written and the one
// before it, so a token always sees at least its last BlockTokens neighbours.
const DefaultRecent = 2

// ErrOptions is wrapped by the errors of NewKernel for bad Options.
var ErrOptions = errors.New("invalid attention options")

// Options choose how attention over the KV cache is computed. The zero
// value is the dense kernel on the calling goroutine, vectorized where the
// CPU allows.
type Options struct {
	// Kernel is KernelDense (or "") or KernelBlockSparse.
	Kernel string
	// Workers bounds the goroutines one Attend call uses, the caller
	// included. A decode token's pages are split along the KV length among
	// them and the partial softmax results merged exactly; a prefill splits
	// by query tiles. 0 or 1: the calling goroutine alone.
	Workers int
	// TopK is the number of pages block-sparse decode reads per KV head,
	// sink and recent pages included (so the density is TopK over the
	// pages of the context). Required for KernelBlockSparse.
	TopK int
	// Recent is the number of most recent pages block-sparse decode always
	// reads; 0 means DefaultRecent.
	Recent int
	// Router scores pages for block-sparse decode; nil means BoundRouter.
	Router Router
	// Scalar selects the pure-Go loops even where vector ones exist: the
	// reference the vector path is tested against.
	Scalar bool
}

func (o Options) validate() error {
	switch o.Kernel {
	case "", KernelDense:
	case KernelBlockSparse:
		if o.TopK < 1 {
			return fmt.Errorf("%w: block_sparse needs TopK >= 1, have %d", ErrOptions, o.TopK)
		}
	default:
		return fmt.Errorf("%w: kernel %q: want %q or %q", ErrOptions, o.Kernel, KernelDense, KernelBlockSparse)
	}
	if o.Workers < 0 || o.TopK < 0 || o.Recent < 0 {
		return fmt.Errorf("%w: Workers %d, TopK %d and Recent %d must be >= 0", ErrOptions, o.Workers, o.TopK, o.Recent)
	}
	return nil
}

// Query is one sequence's attention request to a Kernel: the queries of
// its new tokens and the paged cache they attend to.
type Query struct {
	// Q holds the queries of the new tokens, [tokens][NumHeads][HeadDim],
	// after q_norm and rotary.
	Q []float32
	// KV is the sequence's cache. Its pages must cover Start+tokens tokens
	// and already hold the new tokens' keys and values. Block-sparse decode
	// keeps KV.Summaries up to date.
	KV *PagedKV
	// Start is the sequence index of the first new token: new token i
	// attends to cache tokens [0, Start+i].
	Start int
	// Out receives the softmax-weighted values, [tokens][NumHeads][HeadDim]
	// (the input of o_proj).
	Out []float32
}

// Kernel computes causal grouped-query attention over paged K/V: the part
// of a layer whose cost is reading the cache. For each KV head it reads a
// page once for all the query heads of its group (and, in prefill, a tile
// of query tokens), with an online softmax across pages, so the cache is
// never gathered. It is safe for concurrent use.
type Kernel struct {
	heads, kvHeads, dim, group int
	scale                      float32
	opts                       Options
	sparse                     bool
	recent                     int
	router                     Router
	loops                      *kernels
	pool                       sync.Pool // of *kscratch

	// What decode tokens read, for Stats; updated once per Attend call.
	decodeTokens, contextPages, readPages atomic.Int64
}

// KernelStats counts what the decode tokens a Kernel attended read.
type KernelStats struct {
	// DecodeTokens is the number of single-token queries.
	DecodeTokens int64
	// ContextPages is the pages their contexts held, summed over KV heads;
	// ReadPages is the pages read, which block-sparse makes fewer.
	ContextPages, ReadPages int64
}

// Stats returns the kernel's counts so far.
func (k *Kernel) Stats() KernelStats {
	return KernelStats{DecodeTokens: k.decodeTokens.Load(), ContextPages: k.contextPages.Load(), ReadPages: k.readPages.Load()}
}

// NewKernel returns the kernel for the attention geometry of cfg.
func NewKernel(cfg Config, opts Options) (*Kernel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	k := &Kernel{
		heads: cfg.NumHeads, kvHeads: cfg.NumKVHeads, dim: cfg.HeadDim,
		group:  cfg.NumHeads / cfg.NumKVHeads,
		scale:  float32(1 / math.Sqrt(float64(cfg.HeadDim))),
		opts:   opts,
		sparse: opts.Kernel == KernelBlockSparse,
		recent: opts.Recent,
		router: opts.Router,
		loops:  defaultKernels(),
	}
	if k.recent == 0 {
		k.recent = DefaultRecent
	}
	if k.router == nil {
		k.router = BoundRouter{}
	}
	if opts.Scalar {
		k.loops = goKernels
	}
	k.pool.New = func() any { return new(kscratch) }
	return k, nil
}

// Options returns the kernel's options.
func (k *Kernel) Options() Options { return k.opts }

// Recent returns the number of most recent pages block-sparse decode
// always reads.
func (k *Kernel) Recent() int { return k.recent }

// Router returns the router that scores pages for block-sparse decode.
func (k *Kernel) Router() Router { return k.router }

// Loops names the inner loops in use: "avx2" or "go".
func (k *Kernel) Loops() string { return k.loops.name }

// kscratch is one worker's buffers.
type kscratch struct {
	q      []float32 // the item's query rows, [rows][d]
	acc    []float32 // [rows][d]
	m, l   []float32 // running max and denominator per row
	pm     []float32 // each row's max over the current page's scores
	s      []float32 // scores then weights, [rows][BlockTokens]
	kp, vp []float32 // decoded page rows when the page is not viewable in place
	route  []float32 // router scores, [pages]
}

// item is a unit of work: the rows of new tokens [t0, t1) of query q that
// belong to KV head g, over a set of pages: pages[p0:p1] of the plan's
// lists when list >= 0, else pages [p0, p1). It writes its rows to Out, or
// to partial slot part (>= 0) when its (q, g) is split among items.
type item struct {
	q, g, t0, t1 int
	list, p0, p1 int
	part         int
}

// split is a (q, g) whose pages were divided among items: their partial
// results in slots [first, first+n) are merged into Out.
type split struct{ q, g, first, n int }

// plan is one Attend call's work, pooled with its buffers.
type plan struct {
	k      *Kernel
	qs     []Query
	items  []item
	splits []split
	lists  [][]int   // block-sparse page lists per (q, g)
	pm, pl []float32 // partial max and denominator, [slot][group]
	pacc   []float32 // partial sums, [slot][group][d]
	next   atomic.Int64
	phase  int
}

// Attend computes attention for each query. Queries are independent; all
// of them share the call's workers. Two queries of one call must not share
// a PagedKV (block-sparse decode updates its Summaries). It returns an error, touching no
// output, when a query does not fit the kernel's geometry.
func (k *Kernel) Attend(qs ...Query) error {
	for i := range qs {
		if err := k.check(&qs[i]); err != nil {
			if len(qs) > 1 {
				return fmt.Errorf("query %d: %w", i, err)
			}
			return err
		}
	}
	p := planPool.Get().(*plan)
	p.k, p.qs = k, append(p.qs[:0], qs...) // a copy, so that qs does not escape
	defer func() {
		clear(p.qs)
		p.k = nil
		planPool.Put(p)
	}()
	if k.sparse {
		p.route()
	}
	p.build()
	p.run(len(p.items), phaseItems)
	for _, sp := range p.splits {
		p.merge(sp)
	}
	return nil
}

// planPool is shared by all kernels: a plan holds no kernel state between
// calls.
var planPool = sync.Pool{New: func() any { return new(plan) }}

func (k *Kernel) check(q *Query) error {
	hd := k.heads * k.dim
	if len(q.Q)%hd != 0 {
		return fmt.Errorf("attend: len(Q) = %d is not a multiple of NumHeads*HeadDim = %d", len(q.Q), hd)
	}
	n := len(q.Q) / hd
	if len(q.Out) < len(q.Q) {
		return fmt.Errorf("attend: len(Out) = %d, want at least %d", len(q.Out), len(q.Q))
	}
	if q.Start < 0 || q.Start > maxTokens {
		return fmt.Errorf("attend: start %d out of range", q.Start)
	}
	if err := q.KV.checkGeometry(); err != nil {
		return fmt.Errorf("attend: %w", err)
	}
	if q.KV.KVHeads != k.kvHeads || q.KV.HeadDim != k.dim {
		return fmt.Errorf("attend: PagedKV has %d KV heads of dim %d, kernel has %d of dim %d", q.KV.KVHeads, q.KV.HeadDim, k.kvHeads, k.dim)
	}
	if err := q.KV.checkPages(q.Start + n); err != nil {
		return fmt.Errorf("attend: %w", err)
	}
	return nil
}

// tokens returns the number of new tokens of q.
func (k *Kernel) tokens(q *Query) int { return len(q.Q) / (k.heads * k.dim) }

// The phases a plan runs on its workers.
const (
	phaseSummaries = iota // bring each decode query's page summaries up to date
	phaseRoute            // choose the pages of each decode (q, g)
	phaseItems            // compute
)

// decodeSparse reports whether query q of the plan is read block-sparse:
// a single decode token. Its pages are then always chosen by list, even
// when TopK covers them all, so that this path is the one tested against
// dense.
func (p *plan) decodeSparse(q int) bool {
	return p.k.sparse && p.k.tokens(&p.qs[q]) == 1
}

// route fills p.lists with the pages each sparse (q, g) reads.
func (p *plan) route() {
	k := p.k
	n := len(p.qs) * k.kvHeads
	for len(p.lists) < n {
		p.lists = append(p.lists, nil)
	}
	for i := range n {
		p.lists[i] = p.lists[i][:0]
	}
	p.run(len(p.qs), phaseSummaries)
	p.run(n, phaseRoute)
}

// summaries brings the page summaries of query q up to date.
func (p *plan) summaries(q int) {
	if !p.decodeSparse(q) {
		return
	}
	kv := p.qs[q].KV
	total := p.qs[q].Start + 1
	pages := kv.Pages(total)
	if pages <= p.k.opts.TopK {
		return // every page is kept: the router has nothing to score
	}
	for len(kv.Summaries) < pages {
		kv.Summaries = append(kv.Summaries, nil)
	}
	bt := kv.BlockTokens
	for i := range pages {
		if kv.Summaries[i] == nil {
			kv.Summaries[i] = new(PageSummary)
		}
		if count := min(bt, total-i*bt); kv.Summaries[i].Tokens < count {
			kv.Summaries[i].Update(kv, i, count)
		}
	}
}

// routeOne chooses the pages of (q, g) = divmod(i, kvHeads).
func (p *plan) routeOne(i int, s *kscratch) {
	k := p.k
	q, g := i/k.kvHeads, i%k.kvHeads
	if !p.decodeSparse(q) {
		return
	}
	qq := &p.qs[q]
	pages := qq.KV.Pages(qq.Start + 1)
	s.route = resize(s.route, pages)
	if pages > k.opts.TopK { // else every page is kept: no need to score
		rows := qq.Q[g*k.group*k.dim : (g+1)*k.group*k.dim]
		k.router.Score(s.route, rows, k.group, g, qq.KV.Summaries[:pages])
	}
	p.lists[i] = SelectPages(p.lists[i], s.route, pages, k.opts.TopK, k.recent)
}

// build divides the work into items. A decode token's pages are split along
// the KV length into enough chunks to keep the workers busy; prefill tokens
// are tiled so that a tile's rows (tokens × group) share each page read.
func (p *plan) build() {
	k := p.k
	p.items, p.splits = p.items[:0], p.splits[:0]
	workers := max(1, k.opts.Workers)
	slots := 0
	decodeHeads := 0
	for i := range p.qs {
		if k.tokens(&p.qs[i]) == 1 {
			decodeHeads += k.kvHeads
		}
	}
	// Chunks per decode (q, g): about four items per worker overall.
	chunks := 1
	if workers > 1 && decodeHeads > 0 {
		chunks = max(1, (4*workers+decodeHeads-1)/decodeHeads)
	}
	tile := max(1, prefillRows/k.group)
	context, read := 0, 0
	for qi := range p.qs {
		qq := &p.qs[qi]
		n := k.tokens(qq)
		if n == 0 {
			continue
		}
		for g := range k.kvHeads {
			if n > 1 {
				for t0 := 0; t0 < n; t0 += tile {
					t1 := min(n, t0+tile)
					last := qq.KV.Pages(qq.Start + t1)
					p.items = append(p.items, item{q: qi, g: g, t0: t0, t1: t1, list: -1, p1: last, part: -1})
				}
				continue
			}
			list, total := -1, qq.KV.Pages(qq.Start+1)
			context += total
			if p.decodeSparse(qi) {
				list = qi*k.kvHeads + g
				total = len(p.lists[list])
			}
			read += total
			c := min(chunks, total, max(1, total/minChunkPages))
			if c <= 1 {
				p.items = append(p.items, item{q: qi, g: g, t1: 1, list: list, p1: total, part: -1})
				continue
			}
			p.splits = append(p.splits, split{q: qi, g: g, first: slots, n: c})
			for j := range c {
				p.items = append(p.items, item{q: qi, g: g, t1: 1, list: list, p0: j * total / c, p1: (j + 1) * total / c, part: slots})
				slots++
			}
		}
	}
	if decodeHeads > 0 {
		k.decodeTokens.Add(int64(decodeHeads / k.kvHeads))
		k.contextPages.Add(int64(context))
		k.readPages.Add(int64(read))
	}
	rows := slots * k.group
	p.pm = resize(p.pm, rows)
	p.pl = resize(p.pl, rows)
	p.pacc = resize(p.pacc, rows*k.dim)
}

const (
	// prefillRows is the number of query rows (tokens × query heads of a
	// group) a prefill tile aims for: enough to reuse each page read many
	// times, few enough that the tile's accumulators stay in L1/L2.
	prefillRows = 32
	// minChunkPages keeps a split decode chunk large enough that the merge
	// and scheduling cost little against reading it.
	minChunkPages = 4
)

// run executes phase on items [0, n) with up to Workers goroutines, the
// caller included, and returns when all are done.
func (p *plan) run(n, phase int) {
	if n == 0 {
		return
	}
	p.phase = phase
	p.next.Store(0)
	w := min(max(1, p.k.opts.Workers), n)
	if w == 1 {
		p.work()
		return
	}
	var wg sync.WaitGroup
	wg.Add(w - 1)
	for range w - 1 {
		go func() {
			defer wg.Done()
			p.work()
		}()
	}
	p.work()
	wg.Wait()
}

// work takes indices of the current phase until none is left.
func (p *plan) work() {
	k := p.k
	s := k.pool.Get().(*kscratch)
	defer k.pool.Put(s)
	n := p.count()
	for {
		i := int(p.next.Add(1) - 1)
		if i >= n {
			return
		}
		switch p.phase {
		case phaseSummaries:
			p.summaries(i)
		case phaseRoute:
			p.routeOne(i, s)
		default:
			p.runItem(&p.items[i], s)
		}
	}
}

func (p *plan) count() int {
	switch p.phase {
	case phaseSummaries:
		return len(p.qs)
	case phaseRoute:
		return len(p.qs) * p.k.kvHeads
	}
	return len(p.items)
}

// runItem computes one item: the online softmax of its rows over its pages.
func (p *plan) runItem(it *item, s *kscratch) {
	k := p.k
	qq := &p.qs[it.q]
	kv := qq.KV
	d, group, bt := k.dim, k.group, kv.BlockTokens
	rows := (it.t1 - it.t0) * group
	s.q = resize(s.q, rows*d)
	for i := it.t0; i < it.t1; i++ {
		src := (i*k.heads + it.g*group) * d
		copy(s.q[(i-it.t0)*group*d:], qq.Q[src:src+group*d])
	}
	s.acc = resize(s.acc, rows*d)
	clear(s.acc)
	s.m = resize(s.m, rows)
	s.pm = resize(s.pm, rows)
	s.l = resize(s.l, rows)
	clear(s.l)
	for r := range s.m {
		s.m[r] = float32(math.Inf(-1))
	}
	s.s = resize(s.s, rows*bt)
	last := qq.Start + it.t1 - 1 // the last cache token any row sees
	headBytes := bt * d * kv.DType.Size()
	pageAt := func(j int) int {
		if it.list >= 0 {
			return p.lists[it.list][j]
		}
		return j
	}
	for j := it.p0; j < it.p1; j++ {
		pg := pageAt(j)
		first := pg * bt
		if first > last {
			break
		}
		// Pages of one KV head are scattered: the next one's keys are
		// asked for while this one is computed.
		var next []byte
		if j+1 < it.p1 {
			if nx := pageAt(j + 1); nx*bt <= last {
				off := it.g * headBytes
				next = kv.K[nx][off : off+headBytes]
			}
		}
		p.page(it, s, kv, pg, min(bt, last+1-first), rows, next)
	}
	if it.part >= 0 {
		copy(p.pm[it.part*group:], s.m[:group])
		copy(p.pl[it.part*group:], s.l[:group])
		copy(p.pacc[it.part*group*d:], s.acc[:group*d])
		return
	}
	for r := range rows {
		i, h := it.t0+r/group, it.g*group+r%group
		out := qq.Out[(i*k.heads+h)*d:][:d]
		inv := 1 / s.l[r]
		for c, v := range s.acc[r*d : (r+1)*d] {
			out[c] = v * inv
		}
	}
}

// page folds count keys and values of page pg, KV head it.g, into the
// item's rows. Row r (token it.t0 + r/group) sees the page's first
// Start+token+1-first keys.
func (p *plan) page(it *item, s *kscratch, kv *PagedKV, pg, count, rows int, next []byte) {
	k := p.k
	qq := &p.qs[it.q]
	d, group, bt, size := k.dim, k.group, kv.BlockTokens, kv.DType.Size()
	off := it.g * bt * d * size
	kb := kv.K[pg][off : off+count*d*size]
	vb := kv.V[pg][off : off+count*d*size]
	if it.t1-it.t0 == 1 && kv.DType == BF16 && k.loops.decodePage != nil &&
		k.loops.decodePage(s.q, kb, vb, rows, count, d, k.scale, s.s, s.m, s.l, s.acc, vb, next) {
		return // a decode token sees every key of the page
	}
	var vf []float32
	var mx []float32 // each row's max over the page's count scores, if known
	switch kv.DType {
	case BF16:
		// One call for the page's scores. V is read after them and the next
		// page's K after that: the kernel asks for both a few rows at a
		// time, along with the key rows it is scoring, so that they arrive
		// in the background (a whole page asked for at once stalls the
		// core).
		mx = s.pm[:rows]
		k.loops.scoresBF16(s.s, s.q, kb, rows, count, d, bt, k.scale, mx, vb, next)
	default:
		s.kp = resize(s.kp, count*d)
		s.vp = resize(s.vp, count*d)
		kf := pageRows(kv.DType, kb, s.kp)
		vf = pageRows(kv.DType, vb, s.vp)
		k.loops.scoresF32(s.s, s.q, kf, rows, count, d, bt, k.scale)
	}
	first := pg * bt
	for r := range rows {
		row := s.s[r*bt : r*bt+count]
		vis := min(count, qq.Start+it.t0+r/group+1-first)
		if vis <= 0 {
			clear(row)
			continue
		}
		sc := row[:vis]
		var pm float32
		if mx != nil && vis == count {
			pm = mx[r]
		} else {
			pm = k.loops.maxF32(sc)
		}
		if m := s.m[r]; pm > m {
			if s.l[r] != 0 {
				corr := float32(math.Exp(float64(m - pm)))
				s.l[r] *= corr
				scale(corr, s.acc[r*d:(r+1)*d])
			}
			s.m[r] = pm
		}
		s.l[r] += k.loops.expSum(sc, s.m[r])
		clear(row[vis:])
	}
	if kv.DType == BF16 {
		k.loops.accumBF16(s.acc, s.s, vb, rows, count, d, bt)
	} else {
		k.loops.accumF32(s.acc, s.s, vf, rows, count, d, bt)
	}
}

// merge combines the partial results of a split (q, g) into Out: with M
// the largest partial max, l = Σ l_j·e^(m_j−M) and out = Σ acc_j·e^(m_j−M)/l,
// which is exactly the softmax over the union of the chunks.
func (p *plan) merge(sp split) {
	k := p.k
	d, group := k.dim, k.group
	qq := &p.qs[sp.q]
	for r := range group {
		out := qq.Out[(sp.g*group+r)*d:][:d]
		mx := float32(math.Inf(-1))
		for j := range sp.n {
			mx = max(mx, p.pm[(sp.first+j)*group+r])
		}
		clear(out)
		var l float32
		for j := range sp.n {
			slot := (sp.first+j)*group + r
			if p.pl[slot] == 0 {
				continue
			}
			w := float32(math.Exp(float64(p.pm[slot] - mx)))
			l += p.pl[slot] * w
			axpy(w, p.pacc[slot*d:(slot+1)*d], out)
		}
		if l > 0 { // every chunk holds a visible token, so always
			scale(1/l, out)
		}
	}
}

// pageRows returns the float32 values of the rows in src: src itself for
// f32 pages when it can be viewed in place, otherwise a decoding into buf.
func pageRows(dt DType, src []byte, buf []float32) []float32 {
	if dt == F32 {
		if v, ok := tensor.ViewF32(src, len(buf)); ok {
			return v
		}
	}
	dt.Decode(buf, src)
	return buf
}
