package model

import (
	"math/rand/v2"
	"testing"
)

// TestToPairsAVX2 checks the vector routine decodeQ prepares q with
// against toPairOrder, bit for bit, for every length it takes.
func TestToPairsAVX2(t *testing.T) {
	if vecKernels == nil {
		t.Skip("no AVX2+FMA on this CPU")
	}
	r := rand.New(rand.NewPCG(runSeed(t), 13))
	for n := 16; n <= pairSlot; n += 16 {
		x := randF32(r, n)
		scale := r.Float32() + 0.01
		want := make([]float32, n)
		toPairOrder(want, x, scale)
		got := make([]float32, n+1) // the float past n must stay untouched
		got[n] = 7
		toPairsAVX2(&got[0], &x[0], n, scale)
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("n=%d: at %d got %v, want %v", n, i, got[i], want[i])
			}
		}
		if got[n] != 7 {
			t.Fatalf("n=%d: wrote past n", n)
		}
	}
}
