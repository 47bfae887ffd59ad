package model

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// benchForward measures Forward on the Qwen3-VL-2B geometry (one layer,
// random weights): n new tokens after a context of ctx tokens, with pages of
// block tokens.
func benchForward(b *testing.B, dtype DType, ctx, n, block int) {
	cfg, err := Preset("qwen3-vl-2b")
	if err != nil {
		b.Fatal(err)
	}
	att, err := NewAttention(cfg, RandomWeights(cfg, 0, 1))
	if err != nil {
		b.Fatal(err)
	}
	kv := NewPagedKV(cfg, dtype, block)
	if err := kv.Grow(ctx + n); err != nil {
		b.Fatal(err)
	}
	hd := cfg.HiddenSize
	x := randFloats(max(ctx, n)*hd, 7)
	out := make([]float32, max(ctx, n)*hd)
	if ctx > 0 { // fill the context
		if err := att.Forward(x[:ctx*hd], TextPositions(0, ctx), kv, 0, out[:ctx*hd]); err != nil {
			b.Fatal(err)
		}
	}
	x, out, pos := x[:n*hd], out[:n*hd], TextPositions(int64(ctx), n)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		// Rewriting the same slots keeps the context length fixed.
		if err := att.Forward(x, pos, kv, ctx, out); err != nil {
			b.Fatal(err)
		}
	}
}

// One decode step (1 token) at context 1024 in pages of 64: the main job's
// steady state.
func BenchmarkForwardDecode2B(b *testing.B)     { benchForward(b, F32, 1024, 1, 64) }
func BenchmarkForwardDecode2BBF16(b *testing.B) { benchForward(b, BF16, 1024, 1, 64) }

// A 128-token prefill chunk at the start of a sequence.
func BenchmarkForwardPrefill2B(b *testing.B) { benchForward(b, F32, 0, 128, 64) }

// BenchmarkPrefillKeyLayout measures the kernel alone on a 128-token
// prefill chunk after 1,920 tokens of context in the Qwen3-VL-8B attention
// shape (32 query heads over 8 KV heads of 128, bf16 pages of 64): keys in
// tiles (the layout of that shape, scored by scoresTiled) against the same
// bytes read as rows (scoresBF16, the layout before tiles; the baseline).
// Metric: tiles_cost, the median over alternating rounds of the tiled
// time over the rows time.
func BenchmarkPrefillKeyLayout(b *testing.B) {
	cfg, err := Preset("qwen3-vl-8b")
	if err != nil {
		b.Fatal(err)
	}
	const ctx, n, block = 2048, 128, 64
	k, err := NewKernel(cfg, Options{})
	if err != nil {
		b.Fatal(err)
	}
	kv := NewPagedKV(cfg, BF16, block)
	if kv.KeyTileTokens() != KeyTile {
		b.Fatalf("the 8B shape's keys are not in tiles")
	}
	if err := kv.Grow(ctx); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for p := range kv.K {
		kv.K[p], _ = randBF16(r, len(kv.K[p])/2)
		kv.V[p], _ = randBF16(r, len(kv.V[p])/2)
	}
	q := Query{Q: randF32(r, n*cfg.NumHeads*cfg.HeadDim), KV: kv, Start: ctx - n, Out: make([]float32, n*cfg.NumHeads*cfg.HeadDim)}
	run := func(tile int) time.Duration {
		kv.KeyTile = tile
		start := time.Now()
		if err := k.Attend(q); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var ratios []float64
	for i := 0; b.Loop(); i++ {
		var tiles, rows time.Duration
		if i%2 == 0 {
			tiles, rows = run(KeyTile), run(1)
		} else {
			rows, tiles = run(1), run(KeyTile)
		}
		ratios = append(ratios, float64(tiles)/float64(rows))
	}
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "tiles_cost")
}
