package model

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Bounds on the relative error against the transformers fixtures. With f32
// pages the only differences are float32 rounding (measured: about 5e-7 for
// tiny, 9e-7 for 2bheads). bf16 pages round every cached key and value to 8
// mantissa bits (measured: about 2.7e-3 on both); f16 pages to 11 bits
// (measured: about 3.4e-4).
const (
	tolF32  = 1e-4
	tolBF16 = 1e-2
	tolF16  = 2e-3
)

var (
	fixtureOnce  sync.Map // path -> *fixtureResult
	fixturePaths = map[string]string{
		"tiny":    "testdata/qwen3vl_attn_tiny.safetensors",
		"2bheads": "testdata/qwen3vl_attn_2bheads.safetensors",
	}
)

type fixtureResult struct {
	once sync.Once
	f    *Fixture
	err  error
}

// loadFixture loads a fixture once per test binary.
func loadFixture(t testing.TB, name string) *Fixture {
	t.Helper()
	v, _ := fixtureOnce.LoadOrStore(name, new(fixtureResult))
	r := v.(*fixtureResult)
	r.once.Do(func() { r.f, r.err = LoadFixture(fixturePaths[name]) })
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.f
}

func TestFixtures(t *testing.T) {
	cases := []struct {
		fixture string
		dtype   DType
		block   int
		tol     float64
	}{
		// Every block size puts page boundaries inside the prefill and
		// makes some decode step start a new page (checked below): tiny
		// has 36 prefill tokens and decode tokens 36..41, 2bheads 116 and
		// 116..123.
		{"tiny", F32, 10, tolF32},
		{"tiny", F32, 13, tolF32},
		{"tiny", BF16, 13, tolBF16},
		{"tiny", F16, 5, tolF16},
		{"2bheads", F32, 60, tolF32},
		{"2bheads", F32, 29, tolF32},
		{"2bheads", BF16, 40, tolBF16},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/%v/block%d", c.fixture, c.dtype, c.block), func(t *testing.T) {
			t.Parallel()
			f := loadFixture(t, c.fixture)
			S, T := f.Prefill.Tokens(), f.Prefill.Tokens()+len(f.Decode)
			if c.block >= S || (S+c.block-1)/c.block*c.block >= T {
				t.Fatalf("block %d does not split both the prefill (%d tokens) and the decode steps (tokens %d..%d)", c.block, S, S, T-1)
			}
			r, err := f.Verify(c.dtype, c.block)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(r)
			if len(r.Decode) != len(f.Decode) || len(r.Decode) == 0 {
				t.Fatalf("verified %d decode steps, fixture has %d", len(r.Decode), len(f.Decode))
			}
			if !(r.Max < c.tol) {
				t.Errorf("max relative error %.3g, want < %.0e", r.Max, c.tol)
			}
		})
	}
}

func TestFixtureRotaryMatchesTransformers(t *testing.T) {
	for name := range fixturePaths {
		t.Run(name, func(t *testing.T) {
			f := loadFixture(t, name)
			S, D := f.Prefill.Tokens(), f.Config.HeadDim
			cos := make([]float32, S*D/2)
			sin := make([]float32, S*D/2)
			newRope(f.Config).cosSin(f.Prefill.Pos, S, cos, sin)
			var worst float64
			for tok := range S {
				for i := range D {
					// transformers' table is concat(freqs, freqs).
					j := tok*D/2 + i%(D/2)
					worst = max(worst,
						abs(float64(cos[j]-f.PrefillCos[tok*D+i])),
						abs(float64(sin[j]-f.PrefillSin[tok*D+i])))
				}
			}
			t.Logf("max |Δcos|, |Δsin| = %.3g", worst)
			if worst > 1e-6 {
				t.Errorf("cos/sin differ from the fixture by up to %.3g, want <= 1e-6", worst)
			}
		})
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

func TestFixturePositionsFollowTheGridRule(t *testing.T) {
	for name := range fixturePaths {
		f := loadFixture(t, name)
		grid, ok := f.Meta["grid"].(map[string]any)
		if !ok {
			t.Fatalf("%s: no grid in metadata", name)
		}
		get := func(k string) int { v, _ := grid[k].(float64); return int(v) }
		want := mixedPositions(get("text_before"), get("t"), get("h"), get("w"), get("text_after"))
		for r := range 3 {
			if fmt.Sprint(want[r]) != fmt.Sprint(f.Prefill.Pos[r]) {
				t.Errorf("%s: position row %d\n got %v\nwant %v", name, r, f.Prefill.Pos[r], want[r])
			}
		}
	}
}

// runSequence runs x (n tokens) through att in chunks of the given sizes
// (the rest in one last chunk) with pages of block tokens, returning the
// outputs and the gathered cache.
func runSequence(t *testing.T, att *Attention, x []float32, pos [3][]int64, dtype DType, block int, chunks ...int) (out, k, v []float32) {
	t.Helper()
	cfg := att.Config()
	n := len(x) / cfg.HiddenSize
	kv := NewPagedKV(cfg, dtype, block)
	if err := kv.Grow(n); err != nil {
		t.Fatal(err)
	}
	out = make([]float32, len(x))
	done := 0
	for _, c := range append(chunks, n) {
		c = min(c, n-done)
		if c == 0 {
			continue
		}
		hd := cfg.HiddenSize
		if err := att.Forward(x[done*hd:(done+c)*hd], slicePositions(pos, done, done+c), kv, done, out[done*hd:(done+c)*hd]); err != nil {
			t.Fatal(err)
		}
		done += c
	}
	k, v, err := kv.Gather(n)
	if err != nil {
		t.Fatal(err)
	}
	return out, k, v
}

func fixtureSequence(f *Fixture) (x []float32, pos [3][]int64) {
	x = append([]float32(nil), f.Prefill.Hidden...)
	pos = AppendPositions([3][]int64{}, f.Prefill.Pos)
	for _, s := range f.Decode {
		x = append(x, s.Hidden...)
		pos = AppendPositions(pos, s.Pos)
	}
	return x, pos
}

func TestPageSizeDoesNotMatter(t *testing.T) {
	f := loadFixture(t, "tiny")
	att, err := NewAttention(f.Config, f.Weights)
	if err != nil {
		t.Fatal(err)
	}
	x, pos := fixtureSequence(f)
	n := len(pos[0])
	one, k1, v1 := runSequence(t, att, x, pos, F32, n) // a single page
	for _, block := range []int{1, 3, 7, 16, 41} {
		out, k, v := runSequence(t, att, x, pos, F32, block)
		if e := RelErr(out, one); e > 1e-6 {
			t.Errorf("block %d: output differs from one page by %.3g", block, e)
		}
		// The cache does not depend on the page size at all.
		if RelErr(k, k1) != 0 || RelErr(v, v1) != 0 {
			t.Errorf("block %d: cache differs from one page", block)
		}
	}
}

func TestChunkedPrefillMatchesOneShot(t *testing.T) {
	f := loadFixture(t, "tiny")
	att, err := NewAttention(f.Config, f.Weights)
	if err != nil {
		t.Fatal(err)
	}
	x, pos := fixtureSequence(f)
	for _, dtype := range []DType{F32, BF16} {
		one, k1, v1 := runSequence(t, att, x, pos, dtype, 8)
		for _, chunks := range [][]int{{5, 1, 13, 2, 9}, {1, 1, 1}, {7, 7, 7, 7, 7, 7}, {35}} {
			out, k, v := runSequence(t, att, x, pos, dtype, 8, chunks...)
			if e := RelErr(out, one); e > 1e-6 {
				t.Errorf("%v chunks %v: output differs from one shot by %.3g", dtype, chunks, e)
			}
			if ek, ev := RelErr(k, k1), RelErr(v, v1); ek > 1e-6 || ev > 1e-6 {
				t.Errorf("%v chunks %v: cache differs from one shot by %.3g, %.3g", dtype, chunks, ek, ev)
			}
		}
	}
}

func TestAgainstFloat64Reference(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
	}{
		{"MHA", Config{HiddenSize: 64, NumHeads: 4, NumKVHeads: 4, HeadDim: 16, NumLayers: 1, RopeTheta: 1e4, MRopeSection: [3]int{3, 3, 2}, RMSNormEps: 1e-6}},
		{"GQA2", Config{HiddenSize: 64, NumHeads: 4, NumKVHeads: 2, HeadDim: 16, NumLayers: 1, RopeTheta: 1e6, MRopeSection: [3]int{4, 2, 2}, RMSNormEps: 1e-5}},
		{"GQA4", Config{HiddenSize: 48, NumHeads: 8, NumKVHeads: 2, HeadDim: 32, NumLayers: 1, RopeTheta: 5e6, MRopeSection: [3]int{6, 5, 5}, RMSNormEps: 1e-6}},
		// Odd sizes exercise every kernel's remainder loop.
		{"odd", Config{HiddenSize: 45, NumHeads: 6, NumKVHeads: 3, HeadDim: 18, NumLayers: 1, RopeTheta: 1e4, MRopeSection: [3]int{3, 3, 3}, RMSNormEps: 1e-6}},
		{"MQA", Config{HiddenSize: 32, NumHeads: 4, NumKVHeads: 1, HeadDim: 10, NumLayers: 1, RopeTheta: 100, MRopeSection: [3]int{5, 0, 0}, RMSNormEps: 1e-6}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := RandomWeights(c.cfg, 3, 7)
			att, err := NewAttention(c.cfg, w)
			if err != nil {
				t.Fatal(err)
			}
			pos := mixedPositions(3, 2, 3, 4, 6) // 33 tokens
			n := len(pos[0])
			x := randFloats(n*c.cfg.HiddenSize, 99)
			want := naiveAttention(c.cfg, w, x, pos)
			out, _, _ := runSequence(t, att, x, pos, F32, 5, 20, 1, 1)
			if e := relErr64(out, want); e > 1e-5 {
				t.Errorf("relative error %.3g against the float64 reference, want < 1e-5", e)
			} else {
				t.Logf("relative error %.3g", e)
			}
		})
	}
}

func TestConcurrentForward(t *testing.T) {
	f := loadFixture(t, "tiny")
	att, err := NewAttention(f.Config, f.Weights)
	if err != nil {
		t.Fatal(err)
	}
	x, pos := fixtureSequence(f)
	want, _, _ := runSequence(t, att, x, pos, F32, 16, 36)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			got, _, _ := runSequence(t, att, x, pos, F32, 16, 36)
			if e := RelErr(got, want); e != 0 {
				t.Errorf("goroutine %d: output differs by %.3g", i, e)
			}
		})
	}
	wg.Wait()
}

func TestNewAttentionErrors(t *testing.T) {
	cfg := tinyConfig
	good := RandomWeights(cfg, 0, 1)
	if _, err := NewAttention(cfg, good); err != nil {
		t.Fatal(err)
	}
	bad := cfg
	bad.NumKVHeads = 3
	if _, err := NewAttention(bad, good); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("invalid config: got %v, want ErrInvalidConfig", err)
	}
	if _, err := NewAttention(cfg, nil); err == nil {
		t.Error("nil weights: no error")
	}
	for _, tc := range []struct {
		name   string
		mutate func(*LayerWeights)
	}{
		{"q_proj.weight", func(w *LayerWeights) { w.Q = w.Q[1:] }},
		{"k_proj.weight", func(w *LayerWeights) { w.K = append(w.K, 0) }},
		{"v_proj.weight", func(w *LayerWeights) { w.V = nil }},
		{"o_proj.weight", func(w *LayerWeights) { w.O = w.O[:10] }},
		{"q_norm.weight", func(w *LayerWeights) { w.QNorm = w.QNorm[:7] }},
		{"k_norm.weight", func(w *LayerWeights) { w.KNorm = append(w.KNorm, 1) }},
	} {
		w := *good
		tc.mutate(&w)
		_, err := NewAttention(cfg, &w)
		if err == nil || !strings.Contains(err.Error(), tc.name) || !strings.Contains(err.Error(), "want") {
			t.Errorf("%s: got error %v, want one naming the tensor and the expected size", tc.name, err)
		}
	}
}

func TestForwardErrors(t *testing.T) {
	cfg := tinyConfig
	att, err := NewAttention(cfg, RandomWeights(cfg, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	hd := cfg.HiddenSize
	newKV := func(tokens int) *PagedKV {
		kv := NewPagedKV(cfg, F32, 4)
		if err := kv.Grow(tokens); err != nil {
			t.Fatal(err)
		}
		return kv
	}
	x := randFloats(3*hd, 1)
	pos := TextPositions(0, 3)
	out := make([]float32, 3*hd)
	cases := []struct {
		name    string
		x       []float32
		pos     [3][]int64
		kv      *PagedKV
		start   int
		out     []float32
		wantErr string
		is      error
	}{
		{"ragged x", x[:3*hd-1], pos, newKV(3), 0, out, "multiple of HiddenSize", nil},
		{"short temporal row", x, [3][]int64{pos[0][:2], pos[1], pos[2]}, newKV(3), 0, out, "temporal", nil},
		{"long width row", x, [3][]int64{pos[0], pos[1], append(pos[2], 9)}, newKV(3), 0, out, "width", nil},
		{"nil height row", x, [3][]int64{pos[0], nil, pos[2]}, newKV(3), 0, out, "height", nil},
		{"negative start", x, pos, newKV(3), -1, out, "start", nil},
		{"short out", x, pos, newKV(3), 0, out[:3*hd-1], "out", nil},
		{"nil kv", x, pos, nil, 0, out, "nil PagedKV", nil},
		{"missing page", x, pos, newKV(3), 2, out, "pages", ErrShortKV},
		{"no pages", x, pos, NewPagedKV(cfg, F32, 4), 0, out, "pages", ErrShortKV},
		{"wrong kv heads", x, pos, &PagedKV{DType: F32, BlockTokens: 4, KVHeads: 1, HeadDim: 8}, 0, out, "KV heads", nil},
		{"wrong head dim", x, pos, &PagedKV{DType: F32, BlockTokens: 4, KVHeads: 2, HeadDim: 16}, 0, out, "dim", nil},
		{"bad dtype", x, pos, &PagedKV{BlockTokens: 4, KVHeads: 2, HeadDim: 8}, 0, out, "dtype", nil},
		{"zero block", x, pos, &PagedKV{DType: F32, KVHeads: 2, HeadDim: 8}, 0, out, "BlockTokens", nil},
		{"short page", x, pos, func() *PagedKV { kv := newKV(3); kv.V[0] = kv.V[0][:10]; return kv }(), 0, out, "V page 0", nil},
		{"nil page", x, pos, func() *PagedKV { kv := newKV(8); kv.K[1] = nil; return kv }(), 2, out, "K page 1", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var before [][]byte
			if c.kv != nil {
				for _, p := range append(append([][]byte{}, c.kv.K...), c.kv.V...) {
					before = append(before, append([]byte(nil), p...))
				}
			}
			err := att.Forward(c.x, c.pos, c.kv, c.start, c.out)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("got error %v, want one mentioning %q", err, c.wantErr)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error %v does not wrap %v", err, c.is)
			}
			if c.kv != nil {
				for i, p := range append(append([][]byte{}, c.kv.K...), c.kv.V...) {
					if string(p) != string(before[i]) {
						t.Fatalf("failed Forward modified page %d", i)
					}
				}
			}
		})
	}
	// No tokens is a valid no-op.
	if err := att.Forward(nil, [3][]int64{}, newKV(0), 0, nil); err != nil {
		t.Errorf("empty Forward: %v", err)
	}
}

func TestForwardDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	cfg := tinyConfig
	att, err := NewAttention(cfg, RandomWeights(cfg, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	kv := NewPagedKV(cfg, BF16, 4)
	if err := kv.Grow(9); err != nil {
		t.Fatal(err)
	}
	x := randFloats(8*cfg.HiddenSize, 1)
	pos := TextPositions(0, 8)
	out := make([]float32, len(x))
	if err := att.Forward(x, pos, kv, 0, out); err != nil { // warms the pool
		t.Fatal(err)
	}
	x1, pos1, out1 := x[:cfg.HiddenSize], TextPositions(8, 1), out[:cfg.HiddenSize]
	allocs := testing.AllocsPerRun(100, func() {
		if err := att.Forward(x1, pos1, kv, 8, out1); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Errorf("decode Forward allocates %v times per call", allocs)
	}
}

// TestStoreKVRebuildsAPage checks that StoreKV writes exactly the bytes
// Forward wrote into a page, given only that page: a page whose stored copy
// was lost is recomputed bit for bit.
func TestStoreKVRebuildsAPage(t *testing.T) {
	f := loadFixture(t, "tiny")
	att, err := NewAttention(f.Config, f.Weights)
	if err != nil {
		t.Fatal(err)
	}
	x, pos := fixtureSequence(f)
	cfg, hd, block := att.Config(), f.Config.HiddenSize, 8
	n := len(pos[0])
	kv := NewPagedKV(cfg, BF16, block)
	if err := kv.Grow(n); err != nil {
		t.Fatal(err)
	}
	if err := att.Forward(x, pos, kv, 0, make([]float32, len(x))); err != nil {
		t.Fatal(err)
	}
	for p := range n / block {
		one := NewPagedKV(cfg, BF16, block)
		one.K, one.V = make([][]byte, p+1), make([][]byte, p+1)
		one.K[p], one.V[p] = make([]byte, kv.PageBytes()), make([]byte, kv.PageBytes())
		lo, hi := p*block, (p+1)*block
		if err := att.StoreKV(x[lo*hd:hi*hd], slicePositions(pos, lo, hi), one, lo); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(one.K[p], kv.K[p]) || !bytes.Equal(one.V[p], kv.V[p]) {
			t.Errorf("page %d: StoreKV differs from Forward", p)
		}
	}
	// Pages it needs must be there.
	short := NewPagedKV(cfg, BF16, block)
	if err := att.StoreKV(x[:block*hd], slicePositions(pos, 0, block), short, 0); err == nil {
		t.Error("StoreKV without its page: want an error")
	}
	if err := att.StoreKV(x[:3], slicePositions(pos, 0, 1), kv, 0); err == nil {
		t.Error("StoreKV with a partial hidden state: want an error")
	}
}
