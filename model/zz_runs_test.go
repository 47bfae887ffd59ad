package model

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/kvflow/kvflow/internal/hugepage"
)

// BenchmarkZZRuns: two workers walking runs of R pages (8 heads each)
// that jump to a far place after each run, as items do.
func BenchmarkZZRuns(b *testing.B) {
	const n, d, heads = 64, 128, 8
	const page = 2 * n * d
	tile := KeyTile
	r := rand.New(rand.NewPCG(5, 6))
	pages := (512 << 20) / (2 * page * heads)
	slab := make([]byte, pages*2*page*heads)
	hugepage.Advise(slab)
	blk, _ := randBF16(r, 1<<19)
	for i := 0; i < len(slab); i += len(blk) {
		copy(slab[i:], blk)
	}
	at := func(pg, h, kv int) []byte {
		o := ((2*pg+kv)*heads + h) * page
		return slab[o : o+page]
	}
	newState := func(r *rand.Rand) (qp, s, m, l, acc []float32) {
		qp = make([]float32, decodeQLen(4))
		decodeQAVX2(qp, randF32(r, 4*d), 4, d, tile, 0.088)
		m = []float32{-1e30, -1e30, -1e30, -1e30}
		return qp, make([]float32, 4*n), m, make([]float32, 4), make([]float32, 4*d)
	}
	half := pages / 2
	for _, R := range []int{1024, 13, 4, 1024, 13, 4} {
		nruns := half / R
		pg := func(w, j int) int {
			k := (j / R) % nruns
			return w*half + (k*7919%nruns)*R + j%R
		}
		b.Run(fmt.Sprintf("R%d", R), func(b *testing.B) {
			var next atomic.Int64
			b.SetBytes(2 * page)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := int(next.Add(1)-1) % runtime.GOMAXPROCS(0)
				qp, s, m, l, acc := newState(rand.New(rand.NewPCG(uint64(w), 7)))
				visit := func(i, kv int) []byte { return at(pg(w, i/heads), i%heads, kv) }
				for i := 0; pb.Next(); i++ {
					v := visit(i, 1)
					decodePageAVX2(qp, visit(i, 0), v, 4, n, d, tile, s, m, l, acc, v, visit(i+1, 0))
				}
			})
		})
	}
}
