package model

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
	// Scalar selects the pure-Go loops even where vector ones exist (the
	// attention kernel's, and the projections' of a layer built by
	// NewAttentionWith or given the kernel by WithKernel): the reference
	// the vector path is tested against.
	Scalar bool
	// Linger is how long the helper goroutines of a kernel with Workers > 1
	// wait, spinning, for the next call before they exit: calls closer
	// together than that do not pay for starting them on an idle core.
	// 0 means DefaultLinger; negative, they exit as soon as a call is done.
	Linger time.Duration
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
	pairQ                      bool      // decode tokens over bf16 pages take loops.decodePage
	pool                       sync.Pool // of *kscratch
	plans                      sync.Pool // of *plan
	team                       team

	// What decode tokens read, for Stats; updated once per Attend call.
	decodeTokens, contextPages, readPages atomic.Int64
	// How the workers of calls split among several spent the compute
	// phase, for Stats; updated once per such call.
	workNs, idleNs atomic.Int64
}

// KernelStats counts what the decode tokens a Kernel attended read, and
// how well its calls kept their workers busy.
type KernelStats struct {
	// DecodeTokens is the number of single-token queries.
	DecodeTokens int64
	// ContextPages is the pages their contexts held, summed over KV heads;
	// ReadPages is the pages read, which block-sparse makes fewer.
	ContextPages, ReadPages int64
	// WorkNs is the time the workers of calls run by more than one spent
	// in the compute phase, summed over the workers, each from when it
	// joined; IdleNs is the part of it they spent done, waiting for the
	// phase's last item. IdleNs/WorkNs is the share of those cores the
	// split of the work left unused.
	WorkNs, IdleNs int64
}

// Stats returns the kernel's counts so far.
func (k *Kernel) Stats() KernelStats {
	return KernelStats{DecodeTokens: k.decodeTokens.Load(), ContextPages: k.contextPages.Load(), ReadPages: k.readPages.Load(),
		WorkNs: k.workNs.Load(), IdleNs: k.idleNs.Load()}
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
	}
	if k.recent == 0 {
		k.recent = DefaultRecent
	}
	if k.router == nil {
		k.router = BoundRouter{}
	}
	if opts.Scalar {
		k.setLoops(goKernels)
	} else {
		k.setLoops(defaultKernels())
	}
	k.pool.New = func() any { return new(kscratch) }
	k.plans.New = func() any { return new(plan) }
	k.team.linger = opts.Linger
	if opts.Linger == 0 {
		k.team.linger = DefaultLinger
	}
	return k, nil
}

// setLoops makes l the kernel's inner loops.
func (k *Kernel) setLoops(l *kernels) {
	k.loops = l
	k.pairQ = false
	if l.decodeQ != nil && l.decodePage != nil {
		// Whether the routine takes a group's rows of this head_dim.
		k.pairQ = l.decodeQ(make([]float32, decodeQLen(k.group)), make([]float32, k.group*k.dim), k.group, k.dim, 1, 1)
	}
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
	q      []float32  // the item's query rows, [heads][rows][d]
	qp     []float32  // q prepared for loops.decodePage, [heads][decodeQLen(rows)]
	acc    []float32  // [heads][rows][d]
	m, l   []float32  // running max and denominator, [heads][rows]
	pm     []float32  // each row's max over the current page's scores
	s      []float32  // scores then weights, [rows][BlockTokens]
	kp, vp []float32  // decoded page rows when the page is not viewable in place
	kr     []byte     // a page's keys put back in rows (f16/f32 pages given tiles)
	route  []float32  // router scores, [pages]
	seq    []visit    // the item's (head, page) pairs in order
	states []rowState // the item's softmax state per head
	runs   [][2]int   // the item's pages (or page list indices) per head
}

// item is a unit of work: the rows of new tokens [t0, t1) of query q that
// belong to KV heads [g, g+heads), over a set of pages for each head (see
// span). It writes its rows to Out, or, when its (q, g) is split among
// items, to partial slots part (>= 0) for head g, part+pstride for head
// g+1, and so on. Decode items take every KV head of a query; prefill
// items one.
type item struct {
	q, g, t0, t1  int
	heads         int
	list          int // the first head's page list in the plan's lists, or -1: every page
	p0, p1        int // the pages; for decode (of > 0), see span
	of            int // decode: the length of the query's longest page list
	part, pstride int
	qp            int // decode split among items: its q for loops.decodePage at p.qp[qp:], one decodeQLen(rows) a head; else -1
}

// visit is one (head, page) of an item, in the order it reads them, with
// the head's keys and values in the page, looked up once as the visits are
// listed.
type visit struct {
	hi, pg int
	k, v   []byte
}

// rowState is the online softmax of the rows of one KV head of an item.
type rowState struct {
	q    []float32 // the query rows, [rows][d]
	qp   []float32 // q as loops.decodeQ prepared it, or nil: the separate loops
	acc  []float32 // [rows][d]; in pair order when qp is not nil
	m, l []float32 // running max and denominator per row
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
	decode []int     // the decode queries, longest first
	cuts   []int     // the bounds of one decode query's runs
	pm, pl []float32 // partial max and denominator, [slot][group]
	pacc   []float32 // partial sums, [slot][group][d]
	qp     []float32 // the q of split decode queries, prepared once for their items
	next   atomic.Int64
	phase  int
	// While timed (the compute phase of a call with helpers), its workers
	// count themselves for KernelStats: how many, and the sums of when
	// each joined and left, in ns from t0.
	timed              bool
	t0                 time.Time
	joined, began, end atomic.Int64
	// Helpers of the kernel's team enter by the gate while a phase runs;
	// the fields above are written only while it is closed.
	gate
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
	p := k.plans.Get().(*plan)
	p.k, p.qs = k, append(p.qs[:0], qs...) // a copy, so that qs does not escape
	defer func() {
		clear(p.qs)
		p.k = nil
		// Helpers stop looking at the plan; it is this kernel's alone
		// (its own pool), so they never join another kernel's call.
		k.team.job.CompareAndSwap(p, nil)
		k.plans.Put(p)
	}()
	if k.sparse {
		p.route()
	}
	p.build()
	p.run(len(p.items), phaseItems)
	p.run(len(p.splits), phaseMerge)
	return nil
}

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
	phaseMerge            // merge the partial results of split (q, g)s
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
// the KV length into chunks that keep the workers busy to the end; prefill
// tokens are tiled so that a tile's rows (tokens × group) share each page
// read.
func (p *plan) build() {
	k := p.k
	p.items, p.splits, p.decode, p.qp = p.items[:0], p.splits[:0], p.decode[:0], p.qp[:0]
	workers := max(1, k.opts.Workers)
	tile := max(1, prefillRows/k.group)
	left := 0 // decode pages not yet cut into items, in units of each query's longest list
	for qi := range p.qs {
		qq := &p.qs[qi]
		n := k.tokens(qq)
		switch {
		case n == 1:
			p.decode = append(p.decode, qi)
			_, most := p.decodePages(qi)
			left += most
		case n > 1:
			for g := range k.kvHeads {
				for t0 := 0; t0 < n; t0 += tile {
					t1 := min(n, t0+tile)
					last := qq.KV.Pages(qq.Start + t1)
					p.items = append(p.items, item{q: qi, g: g, t0: t0, t1: t1, heads: 1, list: -1, p1: last, part: -1, qp: -1})
				}
			}
		}
	}
	// Decode items come after the prefill tiles, each taking every KV head
	// of its query over a run of its pages (see runItem), longest contexts
	// first. A run is about the decode pages left over the workers plus
	// one (guided scheduling), at least minChunkPages: the first items are
	// large, the last small enough that the workers finish together. Each
	// run costs its copy to the partial slots and a slot per KV head to
	// merge: over twice the workers, one sequence over 32K took 18 runs on
	// two workers, and with 13 it read 2-3% more (over 8K, 13 runs or 10,
	// no change shown; benchmarks/README.md); over the workers alone its
	// first run was half its pages, and at 32K the other worker then
	// often waited for it.
	slices.SortStableFunc(p.decode, func(a, b int) int {
		_, ma := p.decodePages(a)
		_, mb := p.decodePages(b)
		return cmp.Compare(mb, ma)
	})
	slots, context, read := 0, 0, 0
	for _, qi := range p.decode {
		qq := &p.qs[qi]
		total := qq.KV.Pages(qq.Start + 1)
		list, most := p.decodePages(qi)
		for g := range k.kvHeads {
			context += total
			if list < 0 {
				read += total
			} else {
				read += len(p.lists[list+g])
			}
		}
		// Block-sparse cuts each head's list the way dense cuts the
		// pages (see span), so that a list of every page is read exactly
		// as dense reads it.
		p.cuts = append(p.cuts[:0], 0)
		for off := 0; off < most; {
			run := most - off
			if workers > 1 {
				run = min(run, max(minChunkPages, (left+workers)/(workers+1)))
				if most-off-run < minChunkPages {
					run = most - off // no piece shorter than minChunkPages
				}
			}
			off += run
			left -= run
			p.cuts = append(p.cuts, off)
		}
		c := len(p.cuts) - 1
		if c <= 1 {
			p.items = append(p.items, item{q: qi, t1: 1, heads: k.kvHeads, list: list, p1: most, of: most, part: -1, qp: -1})
			continue
		}
		// The items of a split query share its q, prepared here once
		// rather than by each of them: for one sequence over 8K, 13 items
		// each preparing 8 heads took about 2% of the page routine's
		// cycles (perf).
		qp := -1
		if p.pairs(qi) {
			qp = len(p.qp)
			p.qp = slices.Grow(p.qp, k.kvHeads*decodeQLen(k.group))[:qp+k.kvHeads*decodeQLen(k.group)]
			p.prepareQ(p.qp[qp:], qq.Q, k.kvHeads, qq.KV.KeyTileTokens())
		}
		for g := range k.kvHeads {
			p.splits = append(p.splits, split{q: qi, g: g, first: slots + g*c, n: c})
		}
		for j := range c {
			p.items = append(p.items, item{q: qi, t1: 1, heads: k.kvHeads, list: list, p0: p.cuts[j], p1: p.cuts[j+1], of: most, part: slots + j, pstride: c, qp: qp})
		}
		slots += k.kvHeads * c
	}
	decodeHeads := len(p.decode) * k.kvHeads
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
	// and scheduling cost little against reading it. The last chunks run
	// while the other workers finish theirs: one token over 8K of the 8B
	// shape on two workers left one idle 60-70 µs a call at the end with
	// 4 (KernelStats.IdleNs), 20-25 µs with 2, and each chunk adds a
	// slot per KV head to the merge.
	minChunkPages = 2
)

// run executes phase on items [0, n) with the caller and up to Workers-1
// helpers of the kernel's team, and returns when all are done.
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
	p.timed = phase == phaseItems
	if p.timed {
		p.t0 = time.Now()
		p.joined.Store(0)
		p.began.Store(0)
		p.end.Store(0)
	}
	p.open()
	// Closed even if the caller's work panics (a Router's, say), so that
	// no helper is inside when the plan is reused.
	defer func() {
		p.close()
		if p.timed { // every worker is out: the phase is over
			over := int64(time.Since(p.t0))
			workers := p.joined.Load()
			p.k.workNs.Add(workers*over - p.began.Load())
			p.k.idleNs.Add(workers*over - p.end.Load())
			p.timed = false
		}
	}()
	p.k.team.call(p, w-1)
	p.work()
}

// work takes indices of the current phase until none is left.
func (p *plan) work() {
	k := p.k
	if p.timed {
		p.joined.Add(1)
		p.began.Add(int64(time.Since(p.t0)))
		defer func() { p.end.Add(int64(time.Since(p.t0))) }()
	}
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
		case phaseMerge:
			p.merge(p.splits[i])
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
	case phaseMerge:
		return len(p.splits)
	}
	return len(p.items)
}

// runItem computes one item: the online softmax of its rows over its
// pages, for each of its KV heads. An item of several heads goes page by
// page, the page's heads in turn: the heads of a page lie next to each
// other, so its keys and values are read as two sequential streams, which
// the hardware prefetchers follow; one head's 16 KiB runs, a page apart,
// they do not (about 10% slower from memory).
func (p *plan) runItem(it *item, s *kscratch) {
	k := p.k
	qq := &p.qs[it.q]
	kv := qq.KV
	d, group, bt, tile := k.dim, k.group, kv.BlockTokens, kv.KeyTileTokens()
	heads := it.heads
	rows := (it.t1 - it.t0) * group // per head
	var q []float32                 // the rows of each head in turn, [heads][rows][d]
	if it.t1-it.t0 == 1 {
		// One token's rows of consecutive query heads lie together.
		first := (it.t0*k.heads + it.g*group) * d
		q = qq.Q[first : first+heads*rows*d]
	} else {
		s.q = resize(s.q, heads*rows*d)
		for hi := range heads {
			for i := it.t0; i < it.t1; i++ {
				src := (i*k.heads + (it.g+hi)*group) * d
				copy(s.q[(hi*rows+(i-it.t0)*group)*d:], qq.Q[src:src+group*d])
			}
		}
		q = s.q
	}
	// The softmax state lives in the worker's scratch while the item
	// runs; a split item copies it to its partial slots (part +
	// hi*pstride for head hi; rows == group) at the end, where the merge
	// reads it. Updating the slots in place made the workers write each
	// other's cache lines at every page: neighbouring runs, which they
	// take at the same time, have neighbouring slots, 16 bytes of max and
	// of denominator each. That cost one sequence's decode about 9% of
	// its rate with the memory quiet (benchmarks/README.md).
	s.acc = resize(s.acc, heads*rows*d)
	s.m = resize(s.m, heads*rows)
	s.l = resize(s.l, heads*rows)
	acc, m, l := s.acc, s.m, s.l
	s.pm = resize(s.pm, rows)
	s.s = resize(s.s, rows*bt)
	// A decode token over bf16 pages goes through the one-call page
	// routine where it takes the shape: q prepared once for all pages.
	ql := 0
	qp := s.qp
	if p.pairs(it.q) {
		ql = decodeQLen(rows)
		if it.qp >= 0 {
			qp = p.qp[it.qp : it.qp+heads*ql]
		} else {
			s.qp = resize(s.qp, heads*ql)
			qp = s.qp
			p.prepareQ(qp, q, heads, tile)
		}
	}
	state := func(hi int) rowState {
		st := rowState{
			q:   q[hi*rows*d : (hi+1)*rows*d],
			acc: acc[hi*rows*d : (hi+1)*rows*d],
			m:   m[hi*rows : (hi+1)*rows],
			l:   l[hi*rows : (hi+1)*rows],
		}
		if ql > 0 {
			st.qp = qp[hi*ql : (hi+1)*ql]
		}
		return st
	}
	s.states, s.runs = s.states[:0], s.runs[:0]
	longest := 0
	for hi := range heads {
		st := state(hi)
		clear(st.acc)
		clear(st.l)
		for r := range st.m {
			st.m[r] = float32(math.Inf(-1))
		}
		s.states = append(s.states, st)
		p0, p1 := p.span(it, hi)
		s.runs = append(s.runs, [2]int{p0, p1})
		longest = max(longest, p1-p0)
	}
	last := qq.Start + it.t1 - 1 // the last cache token any row sees
	headBytes := bt * d * kv.DType.Size()
	s.seq = s.seq[:0]
	for j := range longest {
		for hi, r := range s.runs {
			if r[0]+j >= r[1] {
				continue
			}
			pg := r[0] + j
			if it.list >= 0 {
				pg = p.lists[it.list+hi][pg]
			}
			if pg*bt <= last {
				off := (it.g + hi) * headBytes
				s.seq = append(s.seq, visit{hi, pg, kv.K[pg][off : off+headBytes], kv.V[pg][off : off+headBytes]})
			}
		}
	}
	// A block of 4 query heads (the 8B shape's GQA) goes straight to the
	// page routine, decodePage's checks made here once for the item's
	// pages: its states are 4 rows (rows*d and rows floats a head, as
	// sized above) and s.s holds 4*bt scores.
	var page4 func(qp *float32, k, v *byte, n, d int, s, m, l, acc *float32, pfA, pfB *byte)
	if ql > 0 && rows == 4 && k.loops.decodePage4 != nil && decodeShape(rows, d) &&
		len(s.s) >= 4*bt && headBytes >= keyBytes(bt, d, 2, tile) {
		page4 = k.loops.decodePage4(tile)
	}
	fullKeys := keyBytes(bt, d, 2, tile)
	for i, v := range s.seq {
		// The next keys this item reads are asked for while this page
		// is computed.
		var next []byte
		if i+1 < len(s.seq) {
			next = s.seq[i+1].k
		} else {
			next = p.upcoming()
		}
		st := &s.states[v.hi]
		count := min(bt, last+1-v.pg*bt)
		if page4 != nil {
			kn := fullKeys // whole tiles of keys; the values ask for as many bytes
			if count < bt {
				kn = keyBytes(count, d, 2, tile)
			}
			pfB := &v.k[0] // when there is no next page: this one's keys again
			if len(next) >= 2*count*d {
				pfB = &next[0]
			}
			_, _ = v.k[kn-1], v.v[max(kn, 2*count*d)-1]
			qa := alignedQ(st.qp)[:4*pairSlot]
			page4(&qa[0], &v.k[0], &v.v[0], count, d, &s.s[0], &st.m[0], &st.l[0], &st.acc[0], &v.v[0], pfB)
			continue
		}
		if st.qp != nil {
			// A decode token sees every key of the page: one call. Its
			// keys are whole tiles.
			kn := keyBytes(count, d, 2, tile)
			kb, vb := v.k[:kn], v.v[:count*d*2]
			k.loops.decodePage(st.qp, kb, vb, rows, count, d, tile, s.s, st.m, st.l, st.acc, v.v[:kn], next)
			continue
		}
		p.page(it, s, st, it.g+v.hi, kv, v.pg, count, rows, next)
	}
	// The pooled scratch must not keep the caller's pages alive.
	defer clear(s.states)
	clear(s.seq)
	if it.part >= 0 {
		for hi := range heads { // the merge finishes the rows
			st, sl := &s.states[hi], it.part+hi*it.pstride
			copy(p.pacc[sl*rows*d:(sl+1)*rows*d], st.acc)
			copy(p.pm[sl*rows:(sl+1)*rows], st.m)
			copy(p.pl[sl*rows:(sl+1)*rows], st.l)
		}
		return
	}
	for hi := range heads {
		st := &s.states[hi]
		for r := range rows {
			i, h := it.t0+r/group, (it.g+hi)*group+r%group
			out := qq.Out[(i*k.heads+h)*d:][:d]
			inv := 1 / st.l[r]
			for c, v := range st.acc[r*d : (r+1)*d] {
				out[c] = v * inv
			}
			if ql > 0 {
				fromPairOrder(out)
			}
		}
	}
}

// prepareQ sets qp to the q of a decode token's heads, [heads][group][d],
// as loops.decodeQ prepares it for loops.decodePage, one decodeQLen(group)
// a head.
func (p *plan) prepareQ(qp, q []float32, heads, tile int) {
	k := p.k
	d, group, ql := k.dim, k.group, decodeQLen(k.group)
	for hi := range heads {
		if !k.loops.decodeQ(qp[hi*ql:(hi+1)*ql], q[hi*group*d:(hi+1)*group*d], group, d, tile, k.scale) {
			panic("model: decodeQ refused the shape it took in NewKernel")
		}
	}
}

// upcoming returns the keys a worker's next item would read first, if
// the next claim takes a decode item, for its last page to ask for while it
// is computed: an item's first page otherwise comes from memory cold, with
// the core waiting. Another worker may claim that item first; then
// 16 KiB were read into this core's caches for nothing.
func (p *plan) upcoming() []byte {
	j := int(p.next.Load())
	if p.phase != phaseItems || j >= len(p.items) {
		return nil
	}
	it := &p.items[j]
	if it.of == 0 {
		return nil
	}
	qq := &p.qs[it.q]
	kv := qq.KV
	pg, _ := p.span(it, 0)
	if it.list >= 0 {
		list := p.lists[it.list]
		if pg >= len(list) {
			return nil
		}
		pg = list[pg]
	}
	if pg >= len(kv.K) || pg*kv.BlockTokens > qq.Start {
		return nil
	}
	return kv.K[pg][:kv.BlockTokens*p.k.dim*kv.DType.Size()]
}

// pairs reports whether query q's item go through the one-call decode
// page routine, and so keep their weighted sums in pair order.
func (p *plan) pairs(q int) bool {
	return p.k.pairQ && p.qs[q].KV.DType == BF16 && p.k.tokens(&p.qs[q]) == 1
}

// decodePages returns the page lists of decode query q (the first head's
// index in p.lists, or -1: every page) and the most pages a head reads.
func (p *plan) decodePages(q int) (list, most int) {
	qq := &p.qs[q]
	if !p.decodeSparse(q) {
		return -1, qq.KV.Pages(qq.Start + 1)
	}
	list = q * p.k.kvHeads
	for g := range p.k.kvHeads {
		most = max(most, len(p.lists[list+g]))
	}
	return list, most
}

// span returns the range of head hi's pages (or of its page list) that
// item it reads.
func (p *plan) span(it *item, hi int) (p0, p1 int) {
	if it.of == 0 {
		return it.p0, it.p1
	}
	qq := &p.qs[it.q]
	total := qq.KV.Pages(qq.Start + 1)
	if it.list >= 0 {
		total = len(p.lists[it.list+hi])
	}
	return it.p0 * total / it.of, it.p1 * total / it.of
}

// page folds count keys and values of page pg, KV head g, into the rows
// of st with the separate loops (scores, softmax, value sums): rows of
// several tokens, or shapes the one-call decode routine does not take. Row
// r (token it.t0 + r/group) sees the page's first Start+token+1-first keys.
func (p *plan) page(it *item, s *kscratch, st *rowState, g int, kv *PagedKV, pg, count, rows int, next []byte) {
	k := p.k
	qq := &p.qs[it.q]
	d, group, bt, size := k.dim, k.group, kv.BlockTokens, kv.DType.Size()
	off := g * bt * d * size
	kb := kv.K[pg][off : off+count*d*size]
	vb := kv.V[pg][off : off+count*d*size]
	tile := kv.KeyTileTokens()
	if tile > 1 && kv.DType != BF16 {
		// Only bf16 keys have loops over tiles; these are put back in rows.
		s.kr = untileKeys(s.kr, kv.K[pg][off:off+bt*d*size], count, d, size, tile)
		kb, tile = s.kr, 1
	}
	var vf []float32
	var mx []float32 // each row's max over the page's count scores, if known
	switch {
	case tile > 1:
		// Scores of the page's whole tiles, in the rows of s.s (bt of
		// them, a multiple of the tile); the max comes from the visible
		// ones below.
		kn := keyBytes(count, d, size, tile)
		k.loops.scoresTiled(s.s, st.q, kv.K[pg][off:off+kn], rows, count, d, bt, k.scale, kv.V[pg][off:off+kn], next)
	case kv.DType == BF16:
		// One call for the page's scores. V is read after them and the next
		// page's K after that: the kernel asks for both a few rows at a
		// time, along with the key rows it is scoring, so that they arrive
		// in the background (a whole page asked for at once stalls the
		// core).
		mx = s.pm[:rows]
		k.loops.scoresBF16(s.s, st.q, kb, rows, count, d, bt, k.scale, mx, vb, next)
	default:
		s.kp = resize(s.kp, count*d)
		s.vp = resize(s.vp, count*d)
		kf := pageRows(kv.DType, kb, s.kp)
		vf = pageRows(kv.DType, vb, s.vp)
		k.loops.scoresF32(s.s, st.q, kf, rows, count, d, bt, k.scale)
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
		if m := st.m[r]; pm > m {
			if st.l[r] != 0 {
				corr := float32(math.Exp(float64(m - pm)))
				st.l[r] *= corr
				scale(corr, st.acc[r*d:(r+1)*d])
			}
			st.m[r] = pm
		}
		st.l[r] += k.loops.expSum(sc, st.m[r])
		clear(row[vis:])
	}
	if kv.DType == BF16 {
		k.loops.accumBF16(st.acc, s.s, vb, rows, count, d, bt)
	} else {
		k.loops.accumF32(st.acc, s.s, vf, rows, count, d, bt)
	}
}

// merge combines the partial results of a split (q, g) into Out: with M
// the largest partial max, l = Σ l_j·e^(m_j−M) and out = Σ acc_j·e^(m_j−M)/l,
// which is exactly the softmax over the union of the chunks.
func (p *plan) merge(sp split) {
	k := p.k
	d, group := k.dim, k.group
	qq := &p.qs[sp.q]
	pairs := p.pairs(sp.q) // the partial sums are in pair order
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
			k.loops.axpy(w, p.pacc[slot*d:(slot+1)*d], out)
		}
		if l > 0 { // every chunk holds a visible token, so always
			scale(1/l, out)
		}
		if pairs {
			fromPairOrder(out)
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
