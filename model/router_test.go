package model

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// routerCase is a random cache with summaries of partly filled pages and a
// random group of query rows.
type routerCase struct {
	kv     *PagedKV
	sums   []*PageSummary
	tokens []int // tokens per page
	q      []float32
	rows   int
	g      int
}

func newRouterCase(t testing.TB, rng *rand.Rand, dt DType, d int, tokens func(p int) int) routerCase {
	t.Helper()
	kvHeads, bt, npages := 1+rng.IntN(3), 1+rng.IntN(24), 1+rng.IntN(12)
	c := routerCase{kv: randomKV(t, rng, dt, bt, kvHeads, d, npages), rows: 1 + rng.IntN(6), g: rng.IntN(kvHeads)}
	for p := range npages {
		n := tokens(p)
		if n < 0 {
			n = 1 + rng.IntN(bt)
		}
		s := new(PageSummary)
		s.Update(c.kv, p, n)
		c.sums = append(c.sums, s)
		c.tokens = append(c.tokens, n)
	}
	c.q = make([]float32, c.rows*d)
	for i := range c.q {
		c.q[i] = float32(2 * rng.NormFloat64())
	}
	return c
}

func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// maxQK returns the exact max over the rows and the page's keys of q·k.
func (c routerCase) maxQK(t testing.TB, p int) float64 {
	d := c.kv.HeadDim
	best := math.Inf(-1)
	for _, k := range pageKeys(t, c.kv, p, c.g, c.tokens[p]) {
		for r := range c.rows {
			best = max(best, dot64(c.q[r*d:(r+1)*d], k))
		}
	}
	return best
}

// boundTol is the float32 rounding allowance of a bound over d channels.
func (c routerCase) boundTol(p int) float64 {
	d := c.kv.HeadDim
	s := c.sums[p]
	var worst float64
	for r := range c.rows {
		var a float64
		for i, x := range c.q[r*d : (r+1)*d] {
			j := c.g*d + i
			a += math.Abs(float64(x)) * max(math.Abs(float64(s.Min[j])), math.Abs(float64(s.Max[j])))
		}
		worst = max(worst, a)
	}
	return 1e-5*worst + 1e-30
}

func TestBoundRouterIsUpperBound(t *testing.T) {
	rng := sparseRand(t)
	var r Router = BoundRouter{}
	if r.Name() != "bound" {
		t.Errorf("Name %q", r.Name())
	}
	for iter := range 60 {
		dt := []DType{BF16, F16, F32}[iter%3]
		c := newRouterCase(t, rng, dt, 1+rng.IntN(128), func(int) int { return -1 })
		scores := make([]float32, len(c.sums))
		r.Score(scores, c.q, c.rows, c.g, c.sums)
		for p, got := range scores {
			want, tol := c.maxQK(t, p), c.boundTol(p)
			if float64(got) < want-tol {
				t.Fatalf("iter %d %s page %d (%d tokens, %d rows, head %d of %d): bound %v < max q·k %v (tol %g)",
					iter, dt, p, c.tokens[p], c.rows, c.g, c.kv.KVHeads, got, want, tol)
			}
		}
	}
}

func TestBoundRouterTightForOneToken(t *testing.T) {
	rng := sparseRand(t)
	for iter := range 60 {
		dt := []DType{BF16, F16, F32}[iter%3]
		c := newRouterCase(t, rng, dt, 1+rng.IntN(128), func(int) int { return 1 })
		scores := make([]float32, len(c.sums))
		BoundRouter{}.Score(scores, c.q, c.rows, c.g, c.sums)
		for p, got := range scores {
			want, tol := c.maxQK(t, p), c.boundTol(p)
			if math.Abs(float64(got)-want) > tol {
				t.Fatalf("iter %d %s page %d (%d rows, head %d of %d): bound %v, single-token q·k %v (tol %g)",
					iter, dt, p, c.rows, c.g, c.kv.KVHeads, got, want, tol)
			}
		}
	}
}

func TestRouterEmptyPages(t *testing.T) {
	rng := sparseRand(t)
	c := newRouterCase(t, rng, F32, 16, func(p int) int { return p % 2 })
	c.sums = append(c.sums, nil)
	ident := identity(16)
	for _, r := range []Router{BoundRouter{}, LearnedRouter{W: ident, Dim: 16}} {
		scores := make([]float32, len(c.sums))
		r.Score(scores, c.q, c.rows, c.g, c.sums)
		for p, s := range scores {
			if empty := p%2 == 0 || p == len(c.sums)-1; empty != math.IsInf(float64(s), -1) {
				t.Errorf("%s: page %d (empty %v) scores %v", r.Name(), p, empty, s)
			}
		}
		for i := range scores {
			scores[i] = 7
		}
		r.Score(scores, nil, 0, c.g, c.sums)
		for p, s := range scores {
			if !math.IsInf(float64(s), -1) {
				t.Errorf("%s: no rows: page %d scores %v", r.Name(), p, s)
			}
		}
	}
}

func identity(d int) []float32 {
	w := make([]float32, d*d)
	for i := range d {
		w[i*d+i] = 1
	}
	return w
}

// learnedRef is max over rows of (W q_row)·center in float64, with the
// float32 rounding allowance of computing it: d ulps of the sum of the
// absolute values of all the products involved.
func (c routerCase) learnedRef(w []float32, p int) (want, tol float64) {
	d := c.kv.HeadDim
	s := c.sums[p]
	want = math.Inf(-1)
	for r := range c.rows {
		qr := c.q[r*d : (r+1)*d]
		var v, abs float64
		for o := range d {
			center := (float64(s.Min[c.g*d+o]) + float64(s.Max[c.g*d+o])) / 2
			var wq, wqAbs float64
			for j, x := range qr {
				wq += float64(w[o*d+j]) * float64(x)
				wqAbs += math.Abs(float64(w[o*d+j]) * float64(x))
			}
			v += wq * center
			abs += wqAbs * (math.Abs(float64(s.Min[c.g*d+o])) + math.Abs(float64(s.Max[c.g*d+o])))
		}
		want = max(want, v)
		tol = max(tol, abs)
	}
	return want, 2 * float64(d+2) * 0x1p-24 * tol
}

func TestLearnedRouterScores(t *testing.T) {
	rng := sparseRand(t)
	for iter := range 40 {
		d := 1 + rng.IntN(96)
		c := newRouterCase(t, rng, []DType{BF16, F16, F32}[iter%3], d, func(int) int { return -1 })
		w := identity(d)
		name := "identity"
		if iter%2 == 1 { // a random, non-symmetric W checks the row-major layout
			name = "random"
			for i := range w {
				w[i] = float32(rng.NormFloat64() / math.Sqrt(float64(d)))
			}
		}
		r := LearnedRouter{W: w, Dim: d}
		if r.Name() != "learned" {
			t.Errorf("Name %q", r.Name())
		}
		scores := make([]float32, len(c.sums))
		r.Score(scores, c.q, c.rows, c.g, c.sums)
		for p, got := range scores {
			want, tol := c.learnedRef(w, p)
			if math.Abs(float64(got)-want) > tol {
				t.Fatalf("iter %d %s W, d %d, page %d: score %v, want %v (tol %g)", iter, name, d, p, got, want, tol)
			}
		}
	}
}

func TestLearnedRouterLargeDim(t *testing.T) {
	// A HeadDim beyond any real model's, and not a multiple of 8 (the
	// vector kernels hand it to the Go loops).
	rng := sparseRand(t)
	d := 513 + rng.IntN(40)
	c := newRouterCase(t, rng, F32, d, func(int) int { return -1 })
	scores := make([]float32, len(c.sums))
	LearnedRouter{W: identity(d), Dim: d}.Score(scores, c.q, c.rows, c.g, c.sums)
	for p, got := range scores {
		want, tol := c.learnedRef(identity(d), p)
		if math.Abs(float64(got)-want) > tol {
			t.Fatalf("page %d: %v, want %v", p, got, want)
		}
	}
}

func TestRouterNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations are not measured under the race detector")
	}
	rng := sparseRand(t)
	c := newRouterCase(t, rng, BF16, 128, func(int) int { return -1 })
	scores := make([]float32, len(c.sums))
	for _, r := range []Router{BoundRouter{}, LearnedRouter{W: identity(128), Dim: 128}} {
		if a := testing.AllocsPerRun(50, func() { r.Score(scores, c.q, c.rows, c.g, c.sums) }); a != 0 {
			t.Errorf("%s: Score allocates %v times per call", r.Name(), a)
		}
	}
}

func TestRouterPanics(t *testing.T) {
	rng := sparseRand(t)
	c := newRouterCase(t, rng, F32, 8, func(int) int { return 1 })
	scores := make([]float32, len(c.sums))
	for name, f := range map[string]func(){
		"short scores":       func() { BoundRouter{}.Score(scores[:len(scores)-1], c.q, c.rows, c.g, c.sums) },
		"ragged q":           func() { BoundRouter{}.Score(scores, c.q[:len(c.q)-1], c.rows, c.g, c.sums) },
		"missing head":       func() { BoundRouter{}.Score(scores, c.q, c.rows, c.kv.KVHeads, c.sums) },
		"head dim mismatch":  func() { BoundRouter{}.Score(scores, append(c.q, c.q...), c.rows, 0, c.sums) },
		"learned wrong dim":  func() { LearnedRouter{W: identity(4), Dim: 4}.Score(scores, c.q, c.rows, c.g, c.sums) },
		"learned bad weight": func() { LearnedRouter{W: identity(8)[:63], Dim: 8}.Score(scores, c.q, c.rows, c.g, c.sums) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestLoadRouter(t *testing.T) {
	rng := sparseRand(t)
	d := 1 + rng.IntN(64)
	w := make([]float32, d*d)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for _, dt := range []DType{F32, F16, BF16} {
		b := make([]byte, d*d*dt.Size())
		dt.Encode(b, w)
		want := make([]float32, d*d)
		dt.Decode(want, b)
		name := map[DType]string{F32: "F32", F16: "F16", BF16: "BF16"}[dt]
		path := writeFile(t, "router_"+name+".safetensors", encodeSafetensors(t, map[string]string{"kind": "router"},
			map[string]stEntry{"router.weight": {name, []int{d, d}, b}, "other": f32Entry([]int{2}, []float32{1, 2})}))
		r, err := LoadRouter(path, d)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Dim != d || !slices.Equal(r.W, want) {
			t.Errorf("%s: loaded Dim %d, W %v; want %d, %v", name, r.Dim, r.W, d, want)
		}
	}
}

func TestLoadRouterErrors(t *testing.T) {
	const d = 4
	good := f32Entry([]int{d, d}, identity(d))
	file := func(ts map[string]stEntry) []byte { return encodeSafetensors(t, nil, ts) }
	nan := identity(d)
	nan[6] = float32(math.NaN())
	ints := i64Entry([]int{d, d}, make([]int64, d*d))
	cases := []struct {
		name    string
		data    []byte // nil: no file
		headDim int
		want    []string
	}{
		{"missing file", nil, d, []string{"no such file"}},
		{"garbage", []byte("definitely not safetensors, just text"), d, []string{"header length"}},
		{"empty", []byte{}, d, []string{"too short"}},
		{"missing tensor", file(map[string]stEntry{"router.bias": good}), d, []string{`missing tensor "router.weight"`}},
		{"wrong shape", file(map[string]stEntry{"router.weight": f32Entry([]int{d, d + 1}, make([]float32, d*(d+1)))}), d, []string{"shape [4 5], want [4 4]"}},
		{"flat", file(map[string]stEntry{"router.weight": f32Entry([]int{d * d}, identity(d))}), d, []string{"shape [16], want [4 4]"}},
		{"other head dim", file(map[string]stEntry{"router.weight": good}), d + 1, []string{"shape [4 4], want [5 5]"}},
		{"integer", file(map[string]stEntry{"router.weight": ints}), d, []string{"not a floating-point type"}},
		{"nan", file(map[string]stEntry{"router.weight": f32Entry([]int{d, d}, nan)}), d, []string{"[1, 2]", "not finite"}},
		{"negative head dim", file(map[string]stEntry{"router.weight": good}), -1, []string{"head_dim -1"}},
		{"any head dim, not square", file(map[string]stEntry{"router.weight": f32Entry([]int{d, d + 1}, make([]float32, d*(d+1)))}), 0, []string{"square", "[4 5]"}},
		{"any head dim, missing", file(map[string]stEntry{"router.bias": good}), 0, []string{"square", "[]"}},
	}
	for _, c := range cases {
		path := filepath.Join(t.TempDir(), "absent.safetensors")
		if c.data != nil {
			path = writeFile(t, c.name+".safetensors", c.data)
		}
		r, err := LoadRouter(path, c.headDim)
		if err == nil {
			t.Errorf("%s: no error, router %+v", c.name, r)
			continue
		}
		msg := err.Error()
		for _, w := range append([]string{path}, c.want...) {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: error %q does not mention %q", c.name, msg, w)
			}
		}
	}
	// headDim 0 takes the file's dimension.
	if r, err := LoadRouter(writeFile(t, "any.safetensors", file(map[string]stEntry{"router.weight": good})), 0); err != nil || r.Dim != d {
		t.Errorf("head dim 0: router %+v, error %v; want Dim %d", r, err, d)
	}
	// A directory is unreadable as a file.
	dir := t.TempDir()
	if _, err := LoadRouter(dir, d); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("directory: %v", err)
	}
}

// refSelect is the brute-force reference of SelectPages: sort the
// candidates by score (NaN lowest, ties by lower index) and take the best.
func refSelect(scores []float32, npages, topK, recent int) []int {
	in := make([]bool, npages)
	n := 0
	add := func(p int) {
		if p >= 0 && p < npages && !in[p] {
			in[p] = true
			n++
		}
	}
	if npages > 0 {
		add(0)
	}
	for i := range max(recent, 0) {
		add(npages - 1 - i)
	}
	var cand []int
	for p := range npages {
		if !in[p] {
			cand = append(cand, p)
		}
	}
	slices.SortStableFunc(cand, func(a, b int) int { return cmp.Compare(scores[b], scores[a]) })
	for _, p := range cand {
		if n >= topK {
			break
		}
		add(p)
	}
	var out []int
	for p := range npages {
		if in[p] {
			out = append(out, p)
		}
	}
	return out
}

func checkSelection(t *testing.T, what string, got []int, npages, topK, recent int) {
	t.Helper()
	if npages == 0 {
		if len(got) != 0 {
			t.Errorf("%s: %v for no pages", what, got)
		}
		return
	}
	r := min(max(recent, 0), npages)
	if want := min(npages, max(topK, 1+r)); len(got) != want {
		t.Errorf("%s: %d pages %v, want %d", what, len(got), got, want)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Errorf("%s: not strictly ascending at %d: %v", what, i, got)
		}
	}
	if len(got) == 0 || got[0] != 0 {
		t.Errorf("%s: no sink: %v", what, got)
	}
	for p := npages - r; p < npages; p++ {
		if _, ok := slices.BinarySearch(got, p); !ok {
			t.Errorf("%s: recent page %d missing: %v", what, p, got)
		}
	}
	for _, p := range got {
		if p < 0 || p >= npages {
			t.Errorf("%s: page %d out of range: %v", what, p, got)
		}
	}
}

func randomScores(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	special := []float32{float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 0, float32(math.Copysign(0, -1))}
	mode := rng.IntN(3)
	for i := range s {
		switch {
		case mode == 0: // distinct-ish
			s[i] = float32(rng.NormFloat64())
		case rng.IntN(10) == 0:
			s[i] = special[rng.IntN(len(special))]
		default: // many ties
			s[i] = float32(rng.IntN(4))
		}
	}
	return s
}

func TestSelectPagesMatchesReference(t *testing.T) {
	rng := sparseRand(t)
	var dst []int
	for iter := range 3000 {
		npages := rng.IntN(70)
		if iter%10 == 0 {
			npages = rng.IntN(3)
		}
		topK := rng.IntN(npages+5) - 2
		recent := rng.IntN(npages+4) - 1
		scores := randomScores(rng, npages)
		if rng.IntN(2) == 0 { // stale garbage in a reused dst
			dst = append(dst[:0], 5, 9, -1, 3)
		}
		dst = SelectPages(dst, scores, npages, topK, recent)
		what := fmt.Sprintf("npages %d topK %d recent %d", npages, topK, recent)
		checkSelection(t, what, dst, npages, topK, recent)
		if want := refSelect(scores, npages, topK, recent); !slices.Equal(dst, want) {
			t.Fatalf("%s, scores %v:\n got %v\nwant %v", what, scores, dst, want)
		}
	}
}

func TestSelectPagesCases(t *testing.T) {
	desc := func(n int) []float32 { // page 1 best, then 2, ...
		s := make([]float32, n)
		for i := range s {
			s[i] = float32(n - i)
		}
		return s
	}
	cases := []struct {
		scores              []float32
		npages, topK, recnt int
		want                []int
	}{
		{nil, 0, 5, 2, []int{}},
		{[]float32{3}, 1, 0, 0, []int{0}},
		{[]float32{3}, 1, 4, 3, []int{0}},
		{[]float32{1, 2}, 2, 1, 0, []int{0}},
		{[]float32{1, 2}, 2, 2, 0, []int{0, 1}},
		{[]float32{1, 2}, 2, 1, 1, []int{0, 1}},
		{[]float32{1, 2}, 2, 0, 5, []int{0, 1}},
		{desc(10), 10, 100, 0, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{desc(10), 10, 10, 3, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{desc(10), 10, 3, 0, []int{0, 1, 2}},
		{desc(10), 10, 3, 2, []int{0, 8, 9}},
		{desc(10), 10, 4, 2, []int{0, 1, 8, 9}},
		{desc(10), 10, 1, 0, []int{0}},
		{desc(10), 10, 0, 0, []int{0}},
		{desc(10), 10, -3, 2, []int{0, 8, 9}},
		{desc(10), 10, 2, -1, []int{0, 1}},
		{[]float32{0, 5, 1, 5, 5, 0}, 6, 3, 1, []int{0, 1, 5}},                                     // ties: lower index
		{[]float32{0, 5, 1, 5, 5, 0}, 6, 4, 1, []int{0, 1, 3, 5}},                                  // ties: lower index
		{[]float32{9, float32(math.NaN()), float32(math.Inf(-1)), 1}, 4, 2, 0, []int{0, 3}},        // NaN lowest
		{[]float32{9, float32(math.NaN()), float32(math.Inf(-1)), 1}, 4, 3, 0, []int{0, 2, 3}},     // -Inf above NaN
		{[]float32{9, float32(math.NaN()), float32(math.NaN()), 1}, 4, 3, 0, []int{0, 1, 3}},       // NaN ties by index
		{[]float32{9, float32(math.Inf(1)), 2, float32(math.Inf(1))}, 4, 2, 0, []int{0, 1}},        // +Inf ties
		{[]float32{9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 12, 4, 1, []int{0, 9, 10, 11}},           // ascending scores
		{[]float32{9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 12, 6, 0, []int{0, 7, 8, 9, 10, 11}},     // heap replaces
		{[]float32{9, 8, 7, 1, 2, 3, 9, 9, 0, 0, 0, 0}, 12, 5, 0, []int{0, 1, 2, 6, 7}},            // mixed
		{[]float32{-1, -9, -8, -7, -6, -5, -4, -3, -2, -1, -2, -3}, 12, 3, 0, []int{0, 8, 9}},      // negative scores, ties by index
		{[]float32{-1, -9, -8, -7, -6, -5, -4, -3, -2, -1, -2, -3}, 12, 3, 11, make12()},           // recent covers all
		{[]float32{-1, -9, -8, -7, -6, -5, -4, -3, -2, -1, -2, -3}, 12, 13, 1, make12()},           // topK > npages
		{[]float32{-1, -9, -8, -7, -6, -5, -4, -3, -2, -1, -2, -3, 100}, 12, 3, 0, []int{0, 8, 9}}, // longer scores
	}
	for _, c := range cases {
		got := SelectPages(nil, c.scores, c.npages, c.topK, c.recnt)
		what := fmt.Sprintf("scores %v npages %d topK %d recent %d", c.scores, c.npages, c.topK, c.recnt)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", what, got, c.want)
		}
		checkSelection(t, what, got, c.npages, c.topK, c.recnt)
		if want := refSelect(c.scores, c.npages, c.topK, c.recnt); !slices.Equal(want, c.want) {
			t.Errorf("%s: the reference gives %v, the table %v", what, want, c.want)
		}
	}
}

func make12() []int {
	out := make([]int, 12)
	for i := range out {
		out[i] = i
	}
	return out
}

func TestSelectPagesPanicsOnShortScores(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	SelectPages(nil, make([]float32, 3), 4, 2, 1)
}

func TestSelectPagesNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations are not measured under the race detector")
	}
	rng := sparseRand(t)
	const npages, topK, recent = 2000, 64, 8
	scores := randomScores(rng, npages)
	dst := make([]int, 0, topK)
	var got []int
	if a := testing.AllocsPerRun(100, func() { got = SelectPages(dst, scores, npages, topK, recent) }); a != 0 {
		t.Errorf("SelectPages allocates %v times per call with cap(dst) == topK", a)
	}
	if &got[0] != &dst[:1][0] {
		t.Error("the result does not reuse dst")
	}
	if want := refSelect(scores, npages, topK, recent); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// topK below 1+recent: the result is 1+recent long.
	dst = make([]int, 0, 1+recent)
	if a := testing.AllocsPerRun(100, func() { got = SelectPages(dst, scores, npages, 2, recent) }); a != 0 || len(got) != 1+recent {
		t.Errorf("topK 2: %v allocations, %d pages", a, len(got))
	}
}
