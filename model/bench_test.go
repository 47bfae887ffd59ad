package model

import "testing"

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
