package model

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkDecodePageLayouts compares, in the same run, the page routine
// over keys in rows (the page format before tiles, still that of shapes
// KeyTileFor gives rows) with the one over keys in tiles of 16 tokens
// (decodePageTiledBF16H4), one call per page of 64 tokens, 4
// query heads of 128, on every core: l2 over one page per core again and
// again, memory over 512 MiB of pages walked as BenchmarkDecodePageCalls
// walks them. Each round runs 512 calls per core of one routine then of
// the other, each first in every other round (an op is such a round of
// each);
// tiled_speedup is the median over the rounds of the rows round's time
// over the tiled round's, and rows_ns/page the rows routine's time per
// call on one core.
func BenchmarkDecodePageLayouts(b *testing.B) {
	if vecKernels == nil {
		b.Skip("no AVX2+FMA on this CPU")
	}
	const n, d, heads = 64, 128, 8
	const page = 2 * n * d
	workers := runtime.GOMAXPROCS(0)
	r := rand.New(rand.NewPCG(5, 6))
	for _, where := range []string{"l2", "memory"} {
		b.Run(where, func(b *testing.B) {
			// at returns the keys, values and next keys of call i of
			// worker w.
			var at func(w, i int) (k, v, next []byte)
			if where == "l2" {
				own := make([][2][]byte, workers)
				for w := range own {
					own[w][0], _ = randBF16(r, n*d)
					own[w][1], _ = randBF16(r, n*d)
				}
				at = func(w, _ int) (k, v, next []byte) { return own[w][0], own[w][1], own[w][0] }
			} else {
				visit := pageSlab(r, heads, page, workers)
				at = func(w, i int) (k, v, next []byte) { return visit(w, i, 0), visit(w, i, 1), visit(w, i+1, 0) }
			}
			type state struct{ qr, qt, s, m, l, acc []float32 }
			st := make([]state, workers)
			for w := range st {
				q := randF32(r, 4*d)
				st[w] = state{make([]float32, decodeQLen(4)), make([]float32, decodeQLen(4)),
					make([]float32, 4*n), []float32{-1e30, -1e30, -1e30, -1e30}, make([]float32, 4), make([]float32, 4*d)}
				decodeQAVX2(st[w].qr, q, 4, d, 1, 0.088)
				decodeQAVX2(st[w].qt, q, 4, d, KeyTile, 0.088)
			}
			const calls = 512
			next := 0 // the first visit of the next round
			// round runs calls pages per worker through one routine and
			// returns the slowest worker's time.
			round := func(tiled bool) time.Duration {
				var wg sync.WaitGroup
				took := make([]time.Duration, workers)
				for w := range workers {
					wg.Go(func() {
						s := &st[w]
						start := time.Now()
						for i := next; i < next+calls; i++ {
							k, v, nk := at(w, i)
							if tiled {
								decodePageTiledBF16H4(&alignedQ(s.qt)[0], &k[0], &v[0], n, d, &s.s[0], &s.m[0], &s.l[0], &s.acc[0], &v[0], &nk[0])
							} else {
								decodePageBF16H4(&alignedQ(s.qr)[0], &k[0], &v[0], n, d, &s.s[0], &s.m[0], &s.l[0], &s.acc[0], &v[0], &nk[0])
							}
						}
						took[w] = time.Since(start)
					})
				}
				wg.Wait()
				next += calls
				return slices.Max(took)
			}
			var ratios []float64
			var rows time.Duration
			b.SetBytes(2 * calls * int64(workers) * 2 * page)
			b.ResetTimer()
			for range b.N {
				// Either routine goes first in every other round.
				var tr, tt time.Duration
				if len(ratios)%2 == 0 {
					tr, tt = round(false), round(true)
				} else {
					tt, tr = round(true), round(false)
				}
				rows += tr
				ratios = append(ratios, float64(tr)/float64(tt))
			}
			b.StopTimer()
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "tiled_speedup")
			b.ReportMetric(float64(rows.Nanoseconds())/float64(len(ratios)*calls), "rows_ns/page")
		})
	}
}
