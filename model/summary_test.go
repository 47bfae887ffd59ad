package model

import (
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// sparseRand returns a generator with a fresh seed per run, logged so that a
// failure can be replayed with SPARSE_SEED=<seed>.
func sparseRand(t testing.TB) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SPARSE_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SPARSE_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (rerun with SPARSE_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
}

// randomKV returns a cache of npages full pages of random keys (and zero
// values); each KV head gets its own scale and offset per channel so that
// the channels' ranges differ.
func randomKV(t testing.TB, rng *rand.Rand, dt DType, bt, kvHeads, d, npages int) *PagedKV {
	t.Helper()
	kv := &PagedKV{DType: dt, BlockTokens: bt, KVHeads: kvHeads, HeadDim: d}
	if bt%KeyTile == 0 {
		kv.KeyTile = KeyTile // keys in tiles, as NewPagedKV lays out the shapes it tiles
	}
	if err := kv.Grow(npages * bt); err != nil {
		t.Fatal(err)
	}
	row := make([]float32, d)
	scale := make([]float64, kvHeads*d)
	shift := make([]float64, kvHeads*d)
	for i := range scale {
		scale[i] = 0.1 + 3*rng.Float64()
		shift[i] = 2 * rng.NormFloat64()
	}
	for p := range npages {
		for g := range kvHeads {
			for tok := range bt {
				for c := range row {
					row[c] = float32(shift[g*d+c] + scale[g*d+c]*rng.NormFloat64())
				}
				kv.PutKey(kv.K[p], g, tok, row)
			}
		}
	}
	return kv
}

// pageKeys returns the decoded keys of KV head g in rows [0, tokens) of
// page p, [tokens][d], via Gather (independent of Update).
func pageKeys(t testing.TB, kv *PagedKV, p, g, tokens int) [][]float32 {
	t.Helper()
	n := len(kv.K) * kv.BlockTokens
	k, _, err := kv.Gather(n)
	if err != nil {
		t.Fatal(err)
	}
	d := kv.HeadDim
	out := make([][]float32, tokens)
	for i := range out {
		tok := p*kv.BlockTokens + i
		out[i] = k[(g*n+tok)*d : (g*n+tok+1)*d]
	}
	return out
}

// refSummary computes the summary of rows [0, tokens) of page p directly.
func refSummary(t testing.TB, kv *PagedKV, p, tokens int) (mn, mx []float32) {
	t.Helper()
	d := kv.HeadDim
	mn = make([]float32, kv.KVHeads*d)
	mx = make([]float32, kv.KVHeads*d)
	for g := range kv.KVHeads {
		keys := pageKeys(t, kv, p, g, tokens)
		for c := range d {
			lo, hi := keys[0][c], keys[0][c]
			for _, k := range keys[1:] {
				if k[c] < lo {
					lo = k[c]
				}
				if k[c] > hi {
					hi = k[c]
				}
			}
			mn[g*d+c], mx[g*d+c] = lo, hi
		}
	}
	return mn, mx
}

func checkSummary(t *testing.T, what string, s *PageSummary, tokens int, mn, mx []float32) {
	t.Helper()
	if s.Tokens != tokens {
		t.Errorf("%s: Tokens %d, want %d", what, s.Tokens, tokens)
	}
	if !slices.Equal(s.Min, mn) {
		t.Errorf("%s: Min\n%v\nwant\n%v", what, s.Min, mn)
	}
	if !slices.Equal(s.Max, mx) {
		t.Errorf("%s: Max\n%v\nwant\n%v", what, s.Max, mx)
	}
}

func TestSummaryUpdateIncremental(t *testing.T) {
	rng := sparseRand(t)
	for _, dt := range []DType{BF16, F16, F32} {
		kvHeads, d := 1+rng.IntN(3), 1+rng.IntN(40)
		if dt == F32 {
			d = 300 + rng.IntN(300) // more than one decode chunk per row
		}
		kv := randomKV(t, rng, dt, 64, kvHeads, d, 3)
		p := 1 + rng.IntN(2) // not page 0, so that the page offset matters
		var inc PageSummary
		for _, n := range []int{3, 17, 64} {
			inc.Update(kv, p, n)
			mn, mx := refSummary(t, kv, p, n)
			checkSummary(t, dt.String()+" incremental to "+strconv.Itoa(n), &inc, n, mn, mx)
		}
		var one PageSummary
		one.Update(kv, p, 64)
		checkSummary(t, dt.String()+" one-shot", &one, 64, inc.Min, inc.Max)

		// Updating to the same count changes nothing, even if the rows did
		// (they are assumed written once).
		inc.Update(kv, p, 64)
		checkSummary(t, dt.String()+" repeated", &inc, 64, one.Min, one.Max)

		// Fewer tokens than folded: the page was rewritten, so it is refolded.
		inc.Update(kv, p, 5)
		mn, mx := refSummary(t, kv, p, 5)
		checkSummary(t, dt.String()+" shrink to 5", &inc, 5, mn, mx)

		// Reset keeps the buffers but folds afresh, here another page.
		minBuf := &inc.Min[0]
		inc.Reset()
		if inc.Tokens != 0 {
			t.Errorf("%s: Tokens %d after Reset", dt, inc.Tokens)
		}
		inc.Update(kv, 0, 9)
		mn, mx = refSummary(t, kv, 0, 9)
		checkSummary(t, dt.String()+" after Reset", &inc, 9, mn, mx)
		if &inc.Min[0] != minBuf {
			t.Errorf("%s: Reset and Update reallocated Min", dt)
		}
		inc.Update(kv, 0, 0)
		if inc.Tokens != 0 {
			t.Errorf("%s: Update to 0 tokens leaves Tokens %d", dt, inc.Tokens)
		}
	}
}

func TestSummaryGeometryChange(t *testing.T) {
	rng := sparseRand(t)
	kv1 := randomKV(t, rng, F32, 16, 2, 8, 2)
	cases := []struct {
		name string
		kv   *PagedKV
	}{
		// All but the last have 16 channels like kv1, so only the geometry
		// check can tell: without it, rows 5..9 of the new cache would be
		// folded onto kv1's rows 0..4.
		{"dtype", randomKV(t, rng, BF16, 16, 2, 8, 2)},
		{"block tokens", randomKV(t, rng, F32, 32, 2, 8, 2)},
		{"kv heads", randomKV(t, rng, F32, 16, 1, 16, 2)},
		{"head dim and size", randomKV(t, rng, F16, 16, 3, 5, 2)},
	}
	for _, c := range cases {
		var s PageSummary
		s.Update(kv1, 1, 5)
		s.Update(c.kv, 1, 10)
		mn, mx := refSummary(t, c.kv, 1, 10)
		checkSummary(t, c.name, &s, 10, mn, mx)
	}
}

func TestSummaryUpdateNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations are not measured under the race detector")
	}
	rng := sparseRand(t)
	kv := randomKV(t, rng, BF16, 32, 2, 128, 1)
	var s PageSummary
	s.Update(kv, 0, 1)
	n := 0
	if a := testing.AllocsPerRun(100, func() {
		n = n%32 + 1
		if n == 1 {
			s.Reset()
		}
		s.Update(kv, 0, n)
	}); a != 0 {
		t.Errorf("Update allocates %v times per call", a)
	}
}

func TestSummaryUpdatePanics(t *testing.T) {
	rng := sparseRand(t)
	kv := randomKV(t, rng, F32, 8, 1, 4, 2)
	for name, f := range map[string]func(s *PageSummary){
		"tokens beyond the page": func(s *PageSummary) { s.Update(kv, 0, 9) },
		"negative tokens":        func(s *PageSummary) { s.Update(kv, 0, -1) },
		"missing page":           func(s *PageSummary) { s.Update(kv, 2, 1) },
		"bad geometry":           func(s *PageSummary) { s.Update(&PagedKV{DType: F32, BlockTokens: 8}, 0, 1) },
		"short page": func(s *PageSummary) {
			short := *kv
			short.K = [][]byte{kv.K[0][:10]}
			s.Update(&short, 0, 1)
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f(new(PageSummary))
		}()
	}
}
