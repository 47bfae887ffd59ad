package model

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
	"unsafe"
)

// runSeed returns a fresh seed for this run, logged so a failure can be
// reproduced.
func runSeed(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return seed
}

// attendCase is an attention geometry the kernel tests cover.
type attendCase struct {
	name                string
	heads, kvHeads, dim int
	dtype               DType
	block, start, n     int
}

func (c attendCase) config() Config {
	return Config{HiddenSize: c.heads * c.dim, NumHeads: c.heads, NumKVHeads: c.kvHeads, HeadDim: c.dim, NumLayers: 1,
		RopeTheta: 1e4, MRopeSection: [3]int{c.dim / 2, 0, 0}, RMSNormEps: 1e-6}
}

var attendCases = []attendCase{
	{"MHA/bf16/decode", 4, 4, 32, BF16, 16, 100, 1},
	{"GQA2/bf16/decode", 8, 4, 64, BF16, 16, 127, 1},
	{"GQA4/bf16/decode", 8, 2, 128, BF16, 64, 333, 1},
	{"GQA4/bf16/decode-first-of-page", 8, 2, 128, BF16, 16, 64, 1},
	{"GQA4/bf16/decode-last-of-page", 8, 2, 128, BF16, 16, 63, 1},
	{"GQA4/f32/decode", 8, 2, 32, F32, 7, 50, 1},
	{"GQA2/f16/decode", 4, 2, 32, F16, 5, 41, 1},
	{"MHA/bf16/prefill", 4, 4, 32, BF16, 16, 0, 37},
	{"GQA4/bf16/prefill-after-context", 8, 2, 128, BF16, 16, 21, 45},
	{"GQA2/f32/prefill", 4, 2, 64, F32, 7, 3, 19},
	{"odd-dim/bf16/decode", 6, 3, 24, BF16, 5, 17, 1},
	{"odd-dim/f32/prefill", 6, 3, 20, F32, 5, 4, 9},
	{"MQA/bf16/decode", 8, 1, 32, BF16, 8, 70, 1},
	// A step of a few tokens whose pages change under it, as a
	// speculative decode step would.
	{"GQA4/bf16/step-across-page", 8, 2, 128, BF16, 16, 14, 4},
	{"GQA2/bf16/step-across-two-pages", 4, 2, 64, BF16, 5, 3, 9},
}

// TestKernelsOnFixtures runs both fixtures through every kernel
// configuration: dense on one and several threads within 1e-4 of
// transformers, and block-sparse with top_k covering every page equal to
// dense bit for bit.
func TestKernelsOnFixtures(t *testing.T) {
	for _, name := range []string{"tiny", "2bheads"} {
		f := loadFixture(t, name)
		for _, c := range []struct {
			dtype          DType
			block, threads int
		}{{F32, 16, 1}, {F32, 7, 3}, {BF16, 16, 3}} {
			at := fmt.Sprintf("%s, %s pages of %d, %d threads", name, c.dtype, c.block, c.threads)
			dense, err := f.VerifyWith(c.dtype, c.block, Options{Workers: c.threads})
			if err != nil {
				t.Fatal(err)
			}
			tol := 1e-4
			if c.dtype == BF16 {
				tol = 1e-2 // the cache itself is rounded to bf16
			}
			if dense.Max > tol {
				t.Errorf("%s: dense %v", at, dense)
			}
			pages := (f.Prefill.Tokens() + len(f.Decode) + c.block - 1) / c.block
			sparse, err := f.VerifyWith(c.dtype, c.block, Options{Kernel: KernelBlockSparse, TopK: pages, Workers: c.threads})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sparse.Out, dense.Out) {
				t.Errorf("%s: block-sparse over every page differs from dense by %.3g", at, relErr32(sparse.Out, dense.Out))
			}
		}
	}
}

// kernelInput fills a cache of start+n tokens with random keys and values
// and returns it with random queries for the last n tokens.
func kernelInput(t testing.TB, c attendCase, rng *rand.Rand) (Query, Config) {
	t.Helper()
	cfg := c.config()
	kv := NewPagedKV(cfg, c.dtype, c.block)
	total := c.start + c.n
	if err := kv.Grow(total); err != nil {
		t.Fatal(err)
	}
	row := make([]float32, c.dim)
	size := c.dtype.Size()
	for p := range kv.K {
		for g := range c.kvHeads {
			for s := range c.block {
				off := ((g*c.block + s) * c.dim) * size
				for i := range row {
					row[i] = float32(rng.NormFloat64())
				}
				kv.PutKey(kv.K[p], g, s, row)
				for i := range row {
					row[i] = float32(rng.NormFloat64())
				}
				c.dtype.Encode(kv.V[p][off:off+c.dim*size], row)
			}
		}
	}
	q := make([]float32, c.n*c.heads*c.dim)
	for i := range q {
		q[i] = float32(rng.NormFloat64())
	}
	return Query{Q: q, KV: kv, Start: c.start, Out: make([]float32, len(q))}, cfg
}

// refAttend is causal GQA attention in float64 over the gathered cache.
func refAttend(t testing.TB, cfg Config, q Query) []float64 {
	return refAttendSome(t, cfg, q, func(int, int) bool { return true })
}

// refAttendSome is refAttend where KV head g's cache token tk is seen only
// when see(g, tk) (on top of the causal mask).
func refAttendSome(t testing.TB, cfg Config, q Query, see func(g, tk int) bool) []float64 {
	t.Helper()
	h, kh, d := cfg.NumHeads, cfg.NumKVHeads, cfg.HeadDim
	n := len(q.Q) / (h * d)
	total := q.Start + n
	ks, vs, err := q.KV.Gather(total)
	if err != nil {
		t.Fatal(err)
	}
	scale := 1 / math.Sqrt(float64(d))
	out := make([]float64, len(q.Q))
	for i := range n {
		for hq := range h {
			g := hq / (h / kh)
			qv := q.Q[(i*h+hq)*d:][:d]
			var toks []int
			for tk := range q.Start + i + 1 {
				if see(g, tk) {
					toks = append(toks, tk)
				}
			}
			sc := make([]float64, len(toks))
			mx := math.Inf(-1)
			for j, tk := range toks {
				var s float64
				for c := range d {
					s += float64(qv[c]) * float64(ks[(g*total+tk)*d+c])
				}
				sc[j] = s * scale
				mx = max(mx, sc[j])
			}
			var l float64
			for j := range sc {
				sc[j] = math.Exp(sc[j] - mx)
				l += sc[j]
			}
			o := out[(i*h+hq)*d:][:d]
			for j, tk := range toks {
				for c := range d {
					o[c] += sc[j] / l * float64(vs[(g*total+tk)*d+c])
				}
			}
		}
	}
	return out
}

func relErr32(got, want []float32) float64 { return RelErr(got, want) }

// TestKernelMatchesReference checks the dense kernel, on the vector and the
// pure-Go loops and with one and several workers, against float64
// attention: every head layout, page dtype, odd lengths, decode tokens on
// either side of a page boundary, and prefills spanning pages.
func TestKernelMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 1))
	for _, c := range attendCases {
		t.Run(c.name, func(t *testing.T) {
			q, cfg := kernelInput(t, c, rng)
			want := refAttend(t, cfg, q)
			for _, opts := range []Options{{}, {Scalar: true}, {Workers: 3}, {Workers: 4, Scalar: true}} {
				k, err := NewKernel(cfg, opts)
				if err != nil {
					t.Fatal(err)
				}
				clear(q.Out)
				if err := k.Attend(q); err != nil {
					t.Fatal(err)
				}
				if e := relErr64(q.Out, want); e > 1e-5 {
					t.Errorf("%s loops, %d workers: relative error %.3g against float64, want <= 1e-5", k.Loops(), opts.Workers, e)
				}
			}
		})
	}
}

// TestKernelVectorMatchesGo compares the vector loops with the pure-Go
// ones on the Qwen3-VL-8B decode shape, with and without the one-call
// decode page routine.
func TestKernelVectorMatchesGo(t *testing.T) {
	if defaultKernels() == goKernels {
		t.Skip("no vector loops on this CPU")
	}
	rng := rand.New(rand.NewPCG(runSeed(t), 2))
	for _, c := range []attendCase{
		{"8B/decode", 32, 8, 128, BF16, 64, 1000, 1},
		{"8B/prefill", 32, 8, 128, BF16, 64, 50, 77},
		{"8B/f32/decode", 32, 8, 128, F32, 64, 301, 1},
		// Long decodes, split over workers and merged: the one-call page
		// routine for groups of 4 and 8, with a partial last page.
		{"8B/decode/long", 32, 8, 128, BF16, 64, 4000, 1},
		{"GQA8/decode/long", 32, 4, 64, BF16, 64, 2500, 1},
	} {
		for _, run := range []struct {
			workers int
			split   bool // the separate vector loops, as on a set without the one-call page routine
		}{{1, false}, {3, false}, {3, true}} {
			t.Run(fmt.Sprintf("%s/workers%d/split%v", c.name, run.workers, run.split), func(t *testing.T) {
				q, cfg := kernelInput(t, c, rng)
				vec, _ := NewKernel(cfg, Options{Workers: run.workers})
				if run.split {
					split := *vec.loops
					split.decodeQ, split.decodePage = nil, nil
					vec.setLoops(&split)
				}
				ref, _ := NewKernel(cfg, Options{Scalar: true})
				if err := vec.Attend(q); err != nil {
					t.Fatal(err)
				}
				got := slices.Clone(q.Out)
				if err := ref.Attend(q); err != nil {
					t.Fatal(err)
				}
				if e := relErr32(got, q.Out); e > 1e-5 {
					t.Errorf("vector vs Go: relative error %.3g, want <= 1e-5", e)
				}
			})
		}
	}
}

// TestKernelBatch checks that queries attended together, sharing workers,
// give what each gives alone.
func TestKernelBatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 3))
	var qs []Query
	var want [][]float32
	cfg := attendCases[2].config()
	k, err := NewKernel(cfg, Options{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []int{1, 1, 13, 1} {
		c := attendCases[2]
		c.start, c.n, c.block = 50+31*i, n, 16
		q, _ := kernelInput(t, c, rng)
		if err := k.Attend(q); err != nil {
			t.Fatal(err)
		}
		want = append(want, slices.Clone(q.Out))
		clear(q.Out)
		qs = append(qs, q)
	}
	if err := k.Attend(qs...); err != nil {
		t.Fatal(err)
	}
	for i := range qs {
		if e := relErr32(qs[i].Out, want[i]); e > 1e-6 {
			t.Errorf("query %d: batched differs from alone by %.3g", i, e)
		}
	}
}

// TestBlockSparseCoveringEveryPageEqualsDense: with TopK at least the page
// count, block-sparse reads every page in the dense order and must give
// the very same floats.
func TestBlockSparseCoveringEveryPageEqualsDense(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 4))
	for _, c := range attendCases {
		if c.n != 1 {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			q, cfg := kernelInput(t, c, rng)
			pages := q.KV.Pages(q.Start + 1)
			for _, workers := range []int{1, 3} {
				dense, _ := NewKernel(cfg, Options{Workers: workers})
				sparse, err := NewKernel(cfg, Options{Kernel: KernelBlockSparse, TopK: pages, Workers: workers})
				if err != nil {
					t.Fatal(err)
				}
				if err := dense.Attend(q); err != nil {
					t.Fatal(err)
				}
				want := slices.Clone(q.Out)
				clear(q.Out)
				if err := sparse.Attend(q); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(q.Out, want) {
					t.Errorf("%d workers: block-sparse over all %d pages differs from dense (rel err %.3g)", workers, pages, relErr32(q.Out, want))
				}
			}
		})
	}
}

// structuredInput builds a long decode context whose keys are noise except
// for a few tokens per KV head that match the queries of its group
// strongly, as in real attention where a handful of tokens take most of
// the mass.
func structuredInput(t testing.TB, rng *rand.Rand, cfg Config, ctx, block, strong int) Query {
	t.Helper()
	c := attendCase{heads: cfg.NumHeads, kvHeads: cfg.NumKVHeads, dim: cfg.HeadDim, dtype: BF16, block: block, start: ctx - 1, n: 1}
	q, _ := kernelInput(t, c, rng)
	d, group := cfg.HeadDim, cfg.NumHeads/cfg.NumKVHeads
	row := make([]float32, d)
	for g := range cfg.NumKVHeads {
		// The group's mean query direction.
		dir := make([]float32, d)
		for r := range group {
			axpy(1, q.Q[(g*group+r)*d:], dir)
		}
		scale(float32(1/math.Sqrt(float64(dot(dir, dir)))), dir)
		for range strong {
			tk := rng.IntN(ctx - 1)
			for i := range row {
				row[i] = 3*float32(math.Sqrt(float64(d)))*dir[i] + float32(rng.NormFloat64())*0.5
			}
			q.KV.PutKey(q.KV.K[tk/block], g, tk%block, row)
		}
	}
	return q
}

// sparseMass returns the share of dense softmax mass that falls in the
// pages block-sparse keeps, averaged over the query heads.
func sparseMass(t testing.TB, k *Kernel, cfg Config, q Query) float64 {
	t.Helper()
	h, kh, d := cfg.NumHeads, cfg.NumKVHeads, cfg.HeadDim
	group := h / kh
	total := q.Start + 1
	ks, _, err := q.KV.Gather(total)
	if err != nil {
		t.Fatal(err)
	}
	pages := q.KV.Pages(total)
	scores := make([]float32, pages)
	var kept float64
	for g := range kh {
		k.router.Score(scores, q.Q[g*group*d:(g+1)*group*d], group, g, q.KV.Summaries[:pages])
		sel := SelectPages(nil, scores, pages, k.opts.TopK, k.recent)
		for r := range group {
			qv := q.Q[(g*group+r)*d:][:d]
			w := make([]float64, total)
			mx := math.Inf(-1)
			for tk := range total {
				w[tk] = float64(dot(qv, ks[(g*total+tk)*d:])) / math.Sqrt(float64(d))
				mx = max(mx, w[tk])
			}
			var all, in float64
			for tk := range total {
				e := math.Exp(w[tk] - mx)
				all += e
				if _, ok := slices.BinarySearch(sel, tk/q.KV.BlockTokens); ok {
					in += e
				}
			}
			kept += in / all
		}
	}
	return kept / float64(h)
}

// TestBlockSparseAccuracy measures, on a long structured context, the
// relative error of block-sparse decode against dense and the share of the
// softmax mass it keeps, per density; both must improve with density, and
// at 25% of the pages the strong matches must be found.
func TestBlockSparseAccuracy(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 5))
	cfg := Config{HiddenSize: 1024, NumHeads: 8, NumKVHeads: 2, HeadDim: 128, NumLayers: 1, RopeTheta: 1e4, MRopeSection: [3]int{24, 20, 20}, RMSNormEps: 1e-6}
	const ctx, block = 4096, 64
	q := structuredInput(t, rng, cfg, ctx, block, 6)
	pages := q.KV.Pages(ctx)
	dense, _ := NewKernel(cfg, Options{})
	if err := dense.Attend(q); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(q.Out)
	prevErr, prevMass := math.Inf(1), 0.0
	for _, density := range []float64{0.125, 0.25, 0.5} {
		topK := int(density * float64(pages))
		k, err := NewKernel(cfg, Options{Kernel: KernelBlockSparse, TopK: topK, Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Attend(q); err != nil {
			t.Fatal(err)
		}
		e := relErr32(q.Out, want)
		mass := sparseMass(t, k, cfg, q)
		t.Logf("density %5.1f%% (top_k %d of %d pages): relative error %.4f, softmax mass kept %.4f", 100*density, topK, pages, e, mass)
		if e > prevErr*1.0001 || mass < prevMass*0.9999 {
			t.Errorf("density %.3f: error %.4g / mass %.4g do not improve on the sparser setting (%.4g / %.4g)", density, e, mass, prevErr, prevMass)
		}
		if density >= 0.25 && (mass < 0.9 || e > 0.1) {
			t.Errorf("density %.3f: mass kept %.3f (want >= 0.9), relative error %.3f (want <= 0.1)", density, mass, e)
		}
		prevErr, prevMass = e, mass
	}
}

func TestKernelOptionsErrors(t *testing.T) {
	cfg := attendCases[0].config()
	for _, o := range []Options{
		{Kernel: "flash"},
		{Kernel: KernelBlockSparse},
		{Workers: -1},
		{Kernel: KernelBlockSparse, TopK: 4, Recent: -1},
	} {
		if _, err := NewKernel(cfg, o); !errors.Is(err, ErrOptions) {
			t.Errorf("NewKernel(%+v) = %v, want ErrOptions", o, err)
		}
	}
}

func TestKernelAttendErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	c := attendCases[0]
	q, cfg := kernelInput(t, c, rng)
	k, _ := NewKernel(cfg, Options{})
	other := q
	other.KV = NewPagedKV(Config{NumHeads: 4, NumKVHeads: 2, HeadDim: 32}, BF16, 16)
	short := q
	short.Start = 1000
	for name, bad := range map[string]Query{
		"ragged Q":    {Q: q.Q[:5], KV: q.KV, Out: q.Out},
		"short Out":   {Q: q.Q, KV: q.KV, Start: q.Start, Out: q.Out[:1]},
		"negative":    {Q: q.Q, KV: q.KV, Start: -1, Out: q.Out},
		"nil KV":      {Q: q.Q, Start: q.Start, Out: q.Out},
		"other heads": other,
		"short cache": short,
	} {
		if err := k.Attend(bad); err == nil {
			t.Errorf("%s: Attend succeeded", name)
		}
	}
	if err := k.Attend(q, short); err == nil || !errors.Is(err, ErrShortKV) {
		t.Errorf("batch with a short cache: %v, want ErrShortKV", err)
	}
}

// TestBlockSparseReadsTheRoutedPages checks block-sparse decode, with the
// bound router and with a learned router loaded from a file, against
// float64 attention over exactly the pages the router chose.
func TestBlockSparseReadsTheRoutedPages(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 6))
	cfg := Config{HiddenSize: 1024, NumHeads: 8, NumKVHeads: 2, HeadDim: 64, NumLayers: 1, RopeTheta: 1e4, MRopeSection: [3]int{12, 10, 10}, RMSNormEps: 1e-6}
	d := cfg.HeadDim
	w := make([]float32, d*d)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	path := writeFile(t, "router.safetensors", encodeSafetensors(t, nil, map[string]stEntry{RouterTensor: f32Entry([]int{d, d}, w)}))
	learned, err := LoadRouter(path, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, router := range []Router{BoundRouter{}, learned} {
		t.Run(router.Name(), func(t *testing.T) {
			q := structuredInput(t, rng, cfg, 1500, 16, 4) // 94 pages, the last one partial
			k, err := NewKernel(cfg, Options{Kernel: KernelBlockSparse, TopK: 20, Recent: 3, Router: router, Workers: 3})
			if err != nil {
				t.Fatal(err)
			}
			if err := k.Attend(q); err != nil {
				t.Fatal(err)
			}
			// The reference: the same routing, then attention over a cache
			// whose unchosen pages are dropped.
			total, group := q.Start+1, cfg.NumHeads/cfg.NumKVHeads
			pages := q.KV.Pages(total)
			scores := make([]float32, pages)
			chosen := make([][]bool, cfg.NumKVHeads)
			for g := range chosen {
				router.Score(scores, q.Q[g*group*d:(g+1)*group*d], group, g, q.KV.Summaries[:pages])
				sel := SelectPages(nil, scores, pages, 20, 3)
				if len(sel) != 20 || sel[0] != 0 || sel[19] != pages-1 {
					t.Fatalf("KV head %d: selected %v", g, sel)
				}
				chosen[g] = make([]bool, pages)
				for _, p := range sel {
					chosen[g][p] = true
				}
			}
			bt := q.KV.BlockTokens
			want := refAttendSome(t, cfg, q, func(g, tk int) bool { return chosen[g][tk/bt] })
			if e := relErr64(q.Out, want); e > 1e-5 {
				t.Errorf("relative error %.3g against attention over the routed pages", e)
			}
			kh := int64(cfg.NumKVHeads)
			got := k.Stats()
			got.WorkNs, got.IdleNs = 0, 0 // timings, checked in TestKernelStatsWork
			if want := (KernelStats{DecodeTokens: 1, ContextPages: int64(pages) * kh, ReadPages: 20 * kh}); got != want {
				t.Errorf("stats %+v, want %+v", got, want)
			}
		})
	}
}

// TestDecodePlanSplitsByPages checks how decode work is cut into items: a
// long context among short ones is split into several items (so that it
// does not fall to one worker) and goes first, short ones are not split,
// runs shrink toward the end of the plan so that the workers finish
// together, every decode item takes all KV heads, and each head's pages
// are covered exactly once.
func TestDecodePlanSplitsByPages(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 9))
	long := attendCase{"long", 8, 2, 16, BF16, 16, 4095, 1}
	// Contexts of minChunkPages pages: too short to cut.
	short := attendCase{"short", 8, 2, 16, BF16, 16, 16*minChunkPages - 1, 1}
	var qs []Query
	for range 3 {
		q, _ := kernelInput(t, short, rng)
		qs = append(qs, q)
	}
	q, cfg := kernelInput(t, long, rng)
	qs = append(qs, q)
	const longQ = 3
	for range 4 {
		q, _ := kernelInput(t, short, rng)
		qs = append(qs, q)
	}
	const workers = 2
	k, err := NewKernel(cfg, Options{Workers: workers})
	if err != nil {
		t.Fatal(err)
	}
	p := &plan{k: k, qs: qs}
	p.build()
	perQuery := make([]int, len(qs))
	var longRuns []int
	for _, it := range p.items {
		if it.heads != cfg.NumKVHeads || it.g != 0 {
			t.Errorf("decode item %+v takes heads [%d, %d), want all %d", it, it.g, it.g+it.heads, cfg.NumKVHeads)
		}
		perQuery[it.q]++
		if it.q == longQ {
			longRuns = append(longRuns, it.p1-it.p0)
		}
	}
	if p.items[0].q != longQ {
		t.Errorf("the first item is query %d's, want the longest context's (%d)", p.items[0].q, longQ)
	}
	if perQuery[longQ] < 2*workers {
		t.Errorf("the long context (256 pages) is cut into %d items, want at least %d", perQuery[longQ], 2*workers)
	}
	for i := 1; i < len(longRuns); i++ {
		if longRuns[i] > longRuns[i-1] {
			t.Errorf("the long context's runs grow: %v", longRuns)
			break
		}
	}
	first, last := p.items[0], p.items[len(p.items)-1]
	if f, l := first.p1-first.p0, last.p1-last.p0; l >= 2*minChunkPages || f < 4*l {
		t.Errorf("the first item reads %d pages, the last %d: want the last under %d and at most a quarter of the first", f, l, 2*minChunkPages)
	}
	for qi := range qs {
		if qi != longQ && perQuery[qi] != 1 {
			t.Errorf("short query %d (%d pages) is cut into %d items, want 1", qi, minChunkPages, perQuery[qi])
		}
	}
	for qi := range qs {
		pages := qs[qi].KV.Pages(qs[qi].Start + 1)
		for hi := range cfg.NumKVHeads {
			seen := make([]int, pages)
			for i := range p.items {
				if it := &p.items[i]; it.q == qi {
					p0, p1 := p.span(it, hi)
					for j := p0; j < p1; j++ {
						seen[j]++
					}
				}
			}
			for j, n := range seen {
				if n != 1 {
					t.Fatalf("query %d head %d: page %d read by %d items, want 1", qi, hi, j, n)
				}
			}
		}
	}
}

// TestDecodePlanUpcoming checks what a worker's last page asks for
// next: the first keys of the item the next claim would take, for decode
// items (the first head's first page of the item's run), and nothing past
// the last item or in other phases. It also checks that a split query's
// items share its q, prepared once in the plan as decodeQ prepares it.
func TestDecodePlanUpcoming(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 10))
	long := attendCase{"long", 8, 2, 128, BF16, 16, 1000, 1}
	q, cfg := kernelInput(t, long, rng)
	k, err := NewKernel(cfg, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	p := &plan{k: k, qs: []Query{q}}
	p.build()
	if len(p.items) < 2 {
		t.Fatalf("%d items, want the context split", len(p.items))
	}
	p.phase = phaseItems
	bt, d := q.KV.BlockTokens, cfg.HeadDim
	for j := range p.items {
		p.next.Store(int64(j))
		got := p.upcoming()
		pg, _ := p.span(&p.items[j], 0)
		if want := q.KV.K[pg][:bt*d*2]; len(got) != len(want) || &got[0] != &want[0] {
			t.Errorf("next claim %d: upcoming gives %d bytes at %p, want head 0 of page %d (%p)", j, len(got), unsafe.SliceData(got), pg, &want[0])
		}
	}
	p.next.Store(int64(len(p.items)))
	if got := p.upcoming(); got != nil {
		t.Errorf("past the last item upcoming gives %d bytes, want none", len(got))
	}
	p.next.Store(0)
	p.phase = phaseMerge
	if got := p.upcoming(); got != nil {
		t.Errorf("in the merge phase upcoming gives %d bytes, want none", len(got))
	}
	if k.pairQ {
		ql := decodeQLen(k.group)
		for _, it := range p.items {
			if it.qp != p.items[0].qp || it.qp < 0 {
				t.Fatalf("split item %+v does not share the query's q (at %d)", it, p.items[0].qp)
			}
		}
		for g := range cfg.NumKVHeads {
			got := p.qp[p.items[0].qp+g*ql:][:ql]
			// decodeQ lays q out from the first 64-byte boundary: want
			// has got's offset from one.
			buf := make([]float32, ql+16)
			off := int((uintptr(unsafe.Pointer(&got[0])) - uintptr(unsafe.Pointer(&buf[0]))) % 64 / 4)
			want := buf[off : off+ql]
			k.loops.decodeQ(want, q.Q[g*k.group*d:(g+1)*k.group*d], k.group, d, q.KV.KeyTileTokens(), k.scale)
			if !slices.Equal(got, want) {
				t.Fatalf("head %d: the shared q differs from decodeQ's", g)
			}
		}
	}
}

// TestDecodeSplitDeterministic: a decode token split among workers gives
// the same floats call after call, whichever worker takes which run (the
// partial results are merged in run order), and matches the one-worker
// result closely. Summing each worker's runs as it goes, in the order it
// took them, fails it.
func TestDecodeSplitDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 11))
	c := attendCase{"long", 16, 4, 64, BF16, 16, 3000, 1}
	q, cfg := kernelInput(t, c, rng)
	one, err := NewKernel(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := one.Attend(q); err != nil {
		t.Fatal(err)
	}
	ref := slices.Clone(q.Out)
	for _, workers := range []int{2, 3} {
		k, err := NewKernel(cfg, Options{Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		var first []float32
		for call := range 40 {
			clear(q.Out)
			if err := k.Attend(q); err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = slices.Clone(q.Out)
				if e := relErr32(first, ref); e > 1e-5 {
					t.Fatalf("%d workers: relative error %.3g against one worker, want <= 1e-5", workers, e)
				}
				continue
			}
			if !slices.Equal(q.Out, first) {
				t.Fatalf("%d workers, call %d: output differs from the first call's (rel err %.3g)", workers, call, relErr32(q.Out, first))
			}
		}
	}
}

// TestKernelStatsWork checks the accounting of the workers' time: nothing
// for calls one worker runs; for calls split among workers, a positive
// WorkNs no larger than the workers times the calls' wall time, and an
// IdleNs within it, both growing from call to call.
func TestKernelStatsWork(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 21))
	long := attendCase{"long", 8, 2, 16, BF16, 16, 4095, 1}
	q, cfg := kernelInput(t, long, rng)

	one, err := NewKernel(cfg, Options{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := one.Attend(q); err != nil {
		t.Fatal(err)
	}
	if st := one.Stats(); st.WorkNs != 0 || st.IdleNs != 0 {
		t.Errorf("one worker: WorkNs %d, IdleNs %d, want 0", st.WorkNs, st.IdleNs)
	}

	const workers = 2
	k, err := NewKernel(cfg, Options{Workers: workers})
	if err != nil {
		t.Fatal(err)
	}
	var wall time.Duration
	var last KernelStats
	for i := range 5 {
		t0 := time.Now()
		if err := k.Attend(q); err != nil {
			t.Fatal(err)
		}
		wall += time.Since(t0)
		st := k.Stats()
		if st.WorkNs <= last.WorkNs || st.IdleNs < last.IdleNs {
			t.Errorf("call %d: stats went from %+v to %+v, want WorkNs to grow and IdleNs not to shrink", i, last, st)
		}
		if st.IdleNs > st.WorkNs || st.WorkNs > int64(workers)*wall.Nanoseconds() {
			t.Errorf("call %d: WorkNs %d and IdleNs %d, want 0 <= IdleNs <= WorkNs <= %d workers × %v", i, st.WorkNs, st.IdleNs, workers, wall)
		}
		last = st
	}
	// The caller finishes its last item before it closes the phase, so
	// each call adds some waiting.
	if last.IdleNs <= 0 {
		t.Errorf("IdleNs %d after 5 split calls, want > 0", last.IdleNs)
	}
}
