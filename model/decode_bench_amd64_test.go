package model

import (
	"math/rand/v2"
	"testing"
	"time"
)

// fmaPerNs is the 8-lane FMAs one core retires per ns, measured now (the
// best of 5 runs of 2.4 million): the yardstick for fma_frac, the share of
// that peak a kernel reaches. It moves with the clock of a shared machine,
// so it is taken next to each measurement.
func fmaPerNs() float64 {
	const iters = 200_000
	best := time.Duration(1 << 62)
	for range 5 {
		t := time.Now()
		fmaPeakAVX2(iters)
		best = min(best, time.Since(t))
	}
	return 12 * iters / float64(best.Nanoseconds())
}

// BenchmarkDecodePageWarm times one decode token over the pages of one KV
// head held in L2 (4 query heads of 128 over 8 bf16 pages of 64 tokens, one
// worker): the kernel's compute rate with memory out of the way. Bytes are
// the K and V bytes read.
func BenchmarkDecodePageWarm(b *testing.B) {
	if vecKernels == nil {
		b.Skip("no AVX2+FMA on this CPU: no vector loops and no FMA peak to measure")
	}
	cfg := Config{HiddenSize: 512, NumHeads: 4, NumKVHeads: 1, HeadDim: 128, NumLayers: 1,
		RopeTheta: 5e6, MRopeSection: [3]int{24, 20, 20}, RMSNormEps: 1e-6}
	const ctx, bt = 512, 64
	r := rand.New(rand.NewPCG(3, 4))
	kv := NewPagedKV(cfg, BF16, bt)
	if err := kv.Grow(ctx); err != nil {
		b.Fatal(err)
	}
	for p := range kv.K {
		k, _ := randBF16(r, bt*cfg.HeadDim)
		v, _ := randBF16(r, bt*cfg.HeadDim)
		copy(kv.K[p], k)
		copy(kv.V[p], v)
	}
	q := randF32(r, cfg.NumHeads*cfg.HeadDim)
	out := make([]float32, len(q))
	split := *vecKernels
	split.decodeQ, split.decodePage = nil, nil
	for _, c := range []struct {
		name  string
		loops *kernels
	}{{"fused", vecKernels}, {"split", &split}} {
		kern, err := NewKernel(cfg, Options{})
		if err != nil {
			b.Fatal(err)
		}
		kern.loops = c.loops
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(2 * ctx * cfg.HeadDim * 2))
			peak := fmaPerNs()
			for b.Loop() {
				if err := kern.Attend(Query{Q: q, KV: kv, Start: ctx - 1, Out: out}); err != nil {
					b.Fatal(err)
				}
			}
			peak = (peak + fmaPerNs()) / 2
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			// Scores and value sums: 2 multiply-adds per head, key and channel.
			fmas := float64(2*cfg.NumHeads*ctx*cfg.HeadDim) / 8
			b.ReportMetric(ns/float64(ctx/bt), "ns/page")
			b.ReportMetric(fmas/ns/peak, "fma_frac")
		})
	}
}
