package model

import (
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvflow/kvflow/internal/hugepage"
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
		kern.setLoops(c.loops)
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

// BenchmarkDecodePageCalls times the page routine alone, one call per op
// (64 tokens, 4 query heads, d 128, bf16), for keys in rows and in tiles
// (the layout of such pages since KeyTileFor): l1 over one page again and
// again; l1_all the same on every core, each its own page; memory over 512
// MiB of pages laid out as a pipeline's (8 KV heads per page, keys and
// values in pages of their own), every core walking its own half page by
// page and head by head, as decode items do, with the prefetch hints the
// kernel gives. Under perf stat -e cycles:u, its cycle count less that of
// a run of 1 op is the cycles per call.
func BenchmarkDecodePageCalls(b *testing.B) {
	if vecKernels == nil {
		b.Skip("no AVX2+FMA on this CPU")
	}
	const n, d, heads = 64, 128, 8
	const page = 2 * n * d // one head's keys or values
	for _, layout := range []struct {
		name string
		tile int
	}{{"rows", 1}, {"tiles", KeyTile}} {
		tile := layout.tile
		r := rand.New(rand.NewPCG(5, 6))
		newState := func(r *rand.Rand) (qp, s, m, l, acc []float32) {
			qp = make([]float32, decodeQLen(4))
			decodeQAVX2(qp, randF32(r, 4*d), 4, d, tile, 0.088)
			m = []float32{-1e30, -1e30, -1e30, -1e30}
			return qp, make([]float32, 4*n), m, make([]float32, 4), make([]float32, 4*d)
		}
		b.Run(layout.name+"/l1", func(b *testing.B) {
			k, _ := randBF16(r, n*d)
			v, _ := randBF16(r, n*d)
			qp, s, m, l, acc := newState(r)
			b.SetBytes(2 * page)
			for b.Loop() {
				decodePageAVX2(qp, k, v, 4, n, d, tile, s, m, l, acc, v, k)
			}
		})
		// l1_all: every core its own page in L1, the rate the cores'
		// arithmetic allows with no memory traffic at all; the ceiling
		// memory's rate is measured against.
		b.Run(layout.name+"/l1_all", func(b *testing.B) {
			var next atomic.Int64
			b.SetBytes(2 * page)
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(uint64(next.Add(1)), 9))
				k, _ := randBF16(r, n*d)
				v, _ := randBF16(r, n*d)
				qp, s, m, l, acc := newState(r)
				for pb.Next() {
					decodePageAVX2(qp, k, v, 4, n, d, tile, s, m, l, acc, v, k)
				}
			})
		})
		b.Run(layout.name+"/memory", func(b *testing.B) {
			visit := pageSlab(r, heads, page, runtime.GOMAXPROCS(0))
			var next atomic.Int64
			b.SetBytes(2 * page)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := int(next.Add(1)-1) % runtime.GOMAXPROCS(0)
				qp, s, m, l, acc := newState(rand.New(rand.NewPCG(uint64(w), 7)))
				for i := 0; pb.Next(); i++ {
					v := visit(w, i, 1)
					decodePageAVX2(qp, visit(w, i, 0), v, 4, n, d, tile, s, m, l, acc, v, visit(w, i+1, 0))
				}
			})
		})
	}
}

// pageSlab fills 512 MiB with random bf16 pages laid out as a pipeline's
// (heads KV heads of page bytes each per page, keys and values in pages of
// their own) and returns visit: the keys (kv 0) or values (kv 1) of the
// i-th (page, head) visit of worker w of workers, each worker walking its
// own share page by page and head by head, as decode items do.
func pageSlab(r *rand.Rand, heads, page, workers int) (visit func(w, i, kv int) []byte) {
	pages := (512 << 20) / (2 * page * heads)
	slab := make([]byte, pages*2*page*heads)
	hugepage.Advise(slab)
	blk, _ := randBF16(r, 1<<19)
	for i := 0; i < len(slab); i += len(blk) {
		copy(slab[i:], blk)
	}
	span := pages / workers * heads // (page, head) visits in a worker's share
	return func(w, i, kv int) []byte {
		j := w*span + i%span
		o := ((2*(j/heads)+kv)*heads + j%heads) * page
		return slab[o : o+page]
	}
}
