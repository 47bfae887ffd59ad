package model

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestRandomWeights(t *testing.T) {
	cfg := tinyConfig
	a := RandomWeights(cfg, 1, 7)
	if err := a.check(cfg); err != nil {
		t.Fatal(err)
	}
	b := RandomWeights(cfg, 1, 7)
	if !slices.Equal(a.Q, b.Q) || !slices.Equal(a.O, b.O) || !slices.Equal(a.KNorm, b.KNorm) {
		t.Error("RandomWeights is not deterministic")
	}
	if slices.Equal(a.Q, RandomWeights(cfg, 2, 7).Q) || slices.Equal(a.Q, RandomWeights(cfg, 1, 8).Q) {
		t.Error("different layers or seeds give the same weights")
	}
	if slices.Equal(a.K, a.V) {
		t.Error("K and V share a stream")
	}

	big, err := Preset("qwen3-vl-2b")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w := RandomWeights(big, 0, 1)
	t.Logf("2B layer weights in %v", time.Since(start))
	if err := w.check(big); err != nil {
		t.Fatal(err)
	}
	for _, x := range slices.Concat(w.QNorm, w.KNorm) {
		if x < 0.9 || x > 1.1 {
			t.Fatalf("norm weight %v outside [0.9, 1.1]", x)
		}
	}
	for _, c := range []struct {
		name string
		v    []float32
		mean float64
		std  float64
	}{
		{"Q", w.Q, 0, 1 / math.Sqrt(2048)},
		{"O", w.O, 0, 1 / math.Sqrt(2048)},
	} {
		var s, ss float64
		for _, x := range c.v {
			s += float64(x)
			ss += float64(x) * float64(x)
		}
		mean := s / float64(len(c.v))
		std := math.Sqrt(ss/float64(len(c.v)) - mean*mean)
		if math.Abs(mean-c.mean) > 0.05*c.std+1e-3 || math.Abs(std-c.std) > 0.1*c.std {
			t.Errorf("%s: mean %.4g std %.4g, want %.4g and %.4g", c.name, mean, std, c.mean, c.std)
		}
	}
}

func TestPositions(t *testing.T) {
	pos, next := ImagePositions(5, 1, 2, 3)
	want := [3][]int64{{5, 5, 5, 5, 5, 5}, {5, 5, 5, 6, 6, 6}, {5, 6, 7, 5, 6, 7}}
	for r := range 3 {
		if !slices.Equal(pos[r], want[r]) {
			t.Errorf("row %d = %v, want %v", r, pos[r], want[r])
		}
	}
	if next != 8 {
		t.Errorf("next = %d, want 8", next)
	}
	if _, next := ImagePositions(5, 0, 2, 3); next != 5 {
		t.Errorf("empty grid: next = %d, want 5", next)
	}
	tp := TextPositions(3, 2)
	if !slices.Equal(tp[0], []int64{3, 4}) || !slices.Equal(tp[2], []int64{3, 4}) {
		t.Errorf("TextPositions(3, 2) = %v", tp)
	}
}

func TestPagedKV(t *testing.T) {
	cfg := tinyConfig
	kv := NewPagedKV(cfg, BF16, 4)
	if kv.Capacity() != 0 || kv.Pages(0) != 0 || kv.Pages(1) != 1 || kv.Pages(8) != 2 || kv.Pages(9) != 3 {
		t.Fatal("page arithmetic")
	}
	if err := kv.Grow(9); err != nil {
		t.Fatal(err)
	}
	if len(kv.K) != 3 || len(kv.V) != 3 || kv.Capacity() != 12 || len(kv.K[2]) != kv.PageBytes() || kv.PageBytes() != 2*4*8*2 {
		t.Fatalf("after Grow(9): %d/%d pages, capacity %d, page %d bytes", len(kv.K), len(kv.V), kv.Capacity(), kv.PageBytes())
	}
	if err := kv.Grow(5); err != nil || len(kv.K) != 3 {
		t.Fatalf("Grow never shrinks: %v, %d pages", err, len(kv.K))
	}
	if _, _, err := kv.Gather(13); err == nil {
		t.Error("Gather beyond the pages: no error")
	}
	if _, _, err := kv.Gather(-1); err == nil {
		t.Error("Gather(-1): no error")
	}
	if err := (&PagedKV{DType: F32, BlockTokens: 0, KVHeads: 1, HeadDim: 1}).Grow(1); err == nil {
		t.Error("Grow with BlockTokens 0: no error")
	}

	// Forward stores token i of KV head g at page i/B, row g*B + i%B.
	att, err := NewAttention(cfg, RandomWeights(cfg, 0, 3))
	if err != nil {
		t.Fatal(err)
	}
	x := randFloats(9*cfg.HiddenSize, 4)
	out := make([]float32, len(x))
	if err := att.Forward(x, TextPositions(0, 9), kv, 0, out); err != nil {
		t.Fatal(err)
	}
	k, v, err := kv.Gather(9)
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.HeadDim
	for g := range cfg.NumKVHeads {
		for i := range 9 {
			row := make([]float32, d)
			BF16.Decode(row, kv.V[i/4][(g*4+i%4)*d*2:])
			if !slices.Equal(row, v[(g*9+i)*d:(g*9+i+1)*d]) {
				t.Fatalf("V of head %d token %d is not where the layout says", g, i)
			}
			BF16.Decode(row, kv.K[i/4][(g*4+i%4)*d*2:])
			if !slices.Equal(row, k[(g*9+i)*d:(g*9+i+1)*d]) {
				t.Fatalf("K of head %d token %d is not where the layout says", g, i)
			}
		}
	}
}
