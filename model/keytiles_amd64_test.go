package model

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// keyTile is the number of tokens in a tile of decodePageTiledBF16H4's
// keys.
const keyTile = 16

// tileKeys returns n bf16 key rows of d channels (rows) in tiles of
// keyTile tokens, each tile's channels in turn with its tokens' values
// together, the last tile padded with zero keys.
func tileKeys(rows []byte, n, d int) []byte {
	tiles := (n + keyTile - 1) / keyTile
	out := make([]byte, tiles*keyTile*d*2)
	for t := range n {
		t0 := t - t%keyTile
		for c := range d {
			at := 2 * (t0*d + c*keyTile + t - t0)
			copy(out[at:at+2], rows[2*(t*d+c):])
		}
	}
	return out
}

// decodeQTiled prepares q for decodePageTiled: scale*q in channel order at
// the start of each head's slot of pairSlot floats, from qp's first 64-byte
// boundary.
func decodeQTiled(qp, q []float32, nh, d int, scale float32) bool {
	if !decodeShape(nh, d) {
		return false
	}
	qa := alignedQ(qp)
	for h := range nh {
		for c, x := range q[h*d : (h+1)*d] {
			qa[h*pairSlot+c] = scale * x
		}
	}
	return true
}

// decodePageTiled runs decodePageTiledBF16H4 for each block of 4 heads, as
// decodePageAVX2 runs the row routine; k is tiled (tileKeys).
func decodePageTiled(qp []float32, k, v []byte, nh, n, d int, s, m, l, acc []float32, pfA, pfB []byte) {
	tiled := (n + keyTile - 1) / keyTile * keyTile
	if n <= 0 || !decodeShape(nh, d) {
		panic("model: decodePageTiled: shape not taken")
	}
	qa := alignedQ(qp)
	_ = qa[nh*pairSlot-1]
	_ = k[2*tiled*d-1]
	_ = v[2*n*d-1]
	_ = s[4*tiled-1]
	_ = acc[nh*d-1]
	_, _ = m[nh-1], l[nh-1]
	_, _ = pfA[2*tiled*d-1], pfB[2*n*d-1]
	for h := 0; h < nh; h += 4 {
		decodePageTiledBF16H4(&qa[h*pairSlot], &k[0], &v[0], n, d, &s[0], &m[h], &l[h], &acc[h*d], &pfA[0], &pfB[0])
	}
}

// TestDecodePageTiled checks the tiled-key routine against float64
// attention on the cases of TestDecodePageMatchesReference: pages of 1 to
// 64 tokens (partial tiles among them), 4 and 8 heads, d from 16 to 256.
// Its max and denominator may be off by 4e-5 rather than the row routine's
// 1e-5: each score is one chain of d multiply-adds instead of 8 lanes of
// d/8, and 10 runs in 3,000 came to 1.0-1.6e-5.
func TestDecodePageTiled(t *testing.T) {
	decodeLoops(t)
	checkDecodePage(t, 4e-5, decodeQTiled, func(qp []float32, kb, vb []byte, nh, n, d int, m, l, acc []float32) {
		tiled := (n + keyTile - 1) / keyTile * keyTile
		kt := tileKeys(kb, n, d)
		// The prefetch hints over real memory of the sizes asked for.
		decodePageTiled(qp, kt, vb, nh, n, d, make([]float32, 4*tiled), m, l, acc, kt, kb)
	})
}

// BenchmarkDecodePageLayouts compares, in the same run, the page routine
// over keys in rows (the page format) with the one over keys in tiles of
// 16 tokens (decodePageTiledBF16H4), one call per page of 64 tokens, 4
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
				decodeQAVX2(st[w].qr, q, 4, d, 0.088)
				decodeQTiled(st[w].qt, q, 4, d, 0.088)
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
