package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kvflow/kvflow/tensor"
)

// TestDecodePageMatchesReference folds a few pages of random bf16 K/V into
// the online softmax with the vector set's one-call decodePage (q prepared
// by decodeQ, acc put back in channel order at the end), keys in rows and
// in tiles of KeyTile tokens, and checks the result against float64
// attention over all of them: odd and even page lengths (the row routine
// takes rows two at a time; partial tiles), one row, 8 heads (two blocks
// of 4), d from 16 to 256, and scales large enough that the max moves from
// page to page (the rescale of l and acc). With tiles the max and
// denominator may be off by 4e-5 rather than 1e-5: each score is one chain
// of d multiply-adds instead of 8 lanes of d/8, and 10 runs in 3,000 came
// to 1.0-1.6e-5.
func TestDecodePageMatchesReference(t *testing.T) {
	ks := decodeLoops(t)
	for _, tile := range []int{1, KeyTile} {
		t.Run(fmt.Sprintf("tile%d", tile), func(t *testing.T) {
			tol := 1e-5
			if tile > 1 {
				tol = 4e-5
			}
			prep := func(qp, q []float32, nh, d int, scale float32) bool { return ks.decodeQ(qp, q, nh, d, tile, scale) }
			checkDecodePage(t, tol, prep, func(qp []float32, kb, vb []byte, nh, n, d int, m, l, acc []float32) {
				kt := tileKeys(kb, n, d, tile)
				// Prefetch hints over real memory of the sizes asked for.
				ks.decodePage(qp, kt, vb, nh, n, d, tile, make([]float32, 4*len(kt)/(2*d)), m, l, acc, kt, kb)
			})
		})
	}
}

// tileKeys returns n bf16 key rows of d channels (rows) in tiles of tile
// tokens, as a key page lays them out (keyIndex), the last tile padded
// with zero keys.
func tileKeys(rows []byte, n, d, tile int) []byte {
	out := make([]byte, keyBytes(n, d, 2, tile))
	for t := range n {
		for c := range d {
			at := 2 * keyIndex(t, c, d, tile)
			copy(out[at:at+2], rows[2*(t*d+c):])
		}
	}
	return out
}

// checkDecodePage runs the cases of TestDecodePageMatchesReference through
// a page routine: prep prepares q, fold folds a page of n bf16 key and value
// rows (keys in row layout) into m, l and acc (in pair order). The running
// max and denominator must be within tolML of float64's (relative), the
// output within 1e-5.
func checkDecodePage(t *testing.T, tolML float64, prep func(qp, q []float32, nh, d int, scale float32) bool,
	fold func(qp []float32, kb, vb []byte, nh, n, d int, m, l, acc []float32)) {
	t.Helper()
	r := kernelRand(t)
	for _, c := range []struct {
		nh, d int
		ns    []int
		scale float32
		fall  bool // later pages' keys weaker: the max stays (no rescale)
	}{
		{4, 128, []int{64, 64, 64}, 0.088, false},
		{4, 128, []int{64, 64, 64}, 0.088, true},
		{4, 128, []int{1, 7, 64, 3}, 0.35, false},
		{8, 64, []int{5, 64, 2}, 0.5, false},
		{4, 16, []int{9, 1}, 1, true},
		{4, 256, []int{64, 33}, 0.0625, false},
		{4, 48, []int{31, 32}, 2, false}, // widths 3, 2 and 1 all run
	} {
		t.Run(fmt.Sprintf("nh%d_d%d_n%v", c.nh, c.d, c.ns), func(t *testing.T) {
			q := randF32(r, c.nh*c.d)
			qp := make([]float32, decodeQLen(c.nh))
			if !prep(qp, q, c.nh, c.d, c.scale) {
				t.Fatalf("decodeQ refused nh=%d d=%d", c.nh, c.d)
			}
			m := make([]float32, c.nh)
			for h := range m {
				m[h] = float32(math.Inf(-1))
			}
			l := make([]float32, c.nh)
			acc := make([]float32, c.nh*c.d)
			var keys, vals [][]float32 // every row, for the reference
			for i, n := range c.ns {
				kb, kf := randBF16(r, n*c.d)
				vb, vf := randBF16(r, n*c.d)
				// Later pages get stronger keys so that the max moves, or
				// much weaker ones so that it stays.
				f := float32(i + 1)
				if c.fall {
					f = 1 / float32(4*i+1)
				}
				for j := range kf {
					h := tensor.BF16FromF32(kf[j] * f)
					binary.LittleEndian.PutUint16(kb[2*j:], h)
					kf[j] = tensor.F32FromBF16(h)
				}
				fold(qp, kb, vb, c.nh, n, c.d, m, l, acc)
				for t := range n {
					keys = append(keys, kf[t*c.d:(t+1)*c.d])
					vals = append(vals, vf[t*c.d:(t+1)*c.d])
				}
			}
			fromPairOrder(acc)
			got := make([]float32, len(acc))
			want := make([]float32, len(acc))
			for h := range c.nh {
				ref, mx, den := refAttention(q[h*c.d:(h+1)*c.d], keys, vals, float64(c.scale))
				for j := range c.d {
					got[h*c.d+j] = acc[h*c.d+j] / l[h]
					want[h*c.d+j] = float32(ref[j])
				}
				// m and l on their own: the merge of split decode uses them.
				if d := math.Abs(float64(m[h]) - mx); d > tolML*max(1, math.Abs(mx)) {
					t.Errorf("head %d: m = %v, want %v", h, m[h], mx)
				}
				if d := math.Abs(float64(l[h]) - den); d > tolML*den {
					t.Errorf("head %d: l = %v, want %v", h, l[h], den)
				}
			}
			if e := relErr(got, want); e > 1e-5 {
				t.Errorf("relative error %.3g against float64 attention, want <= 1e-5", e)
			}
		})
	}
}

// TestDecodeQRefuses checks that decodeQ reports false, writing nothing,
// for the shapes the page routine does not take, and that decodePage
// panics on them (and on an empty page) instead of reading out of bounds.
func TestDecodeQRefuses(t *testing.T) {
	ks := decodeLoops(t)
	for _, c := range []struct{ nh, n, d int }{{2, 4, 128}, {6, 4, 128}, {4, 4, 24}, {4, 4, 8}, {4, 4, 512}, {0, 4, 128}, {4, 0, 128}} {
		nh, d := max(c.nh, 1), max(c.d, 1)
		qp := make([]float32, decodeQLen(nh))
		for i := range qp {
			qp[i] = float32(i)
		}
		took := ks.decodeQ(qp, make([]float32, nh*d), c.nh, c.d, 1, 1)
		if took != (c.n == 0) {
			t.Errorf("decodeQ(nh=%d, d=%d) = %v", c.nh, c.d, took)
		}
		if !took {
			for i, v := range qp {
				if v != float32(i) {
					t.Errorf("nh=%d d=%d: refused but wrote qp[%d] = %v", c.nh, c.d, i, v)
					break
				}
			}
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("decodePage(nh=%d, n=%d, d=%d) did not panic", c.nh, c.n, c.d)
				}
			}()
			buf := make([]byte, 2*max(c.n, 1)*d)
			ks.decodePage(qp, buf, buf, c.nh, c.n, c.d, 1, make([]float32, 4*max(c.n, 1)), make([]float32, nh), make([]float32, nh), make([]float32, nh*d), nil, nil)
		}()
	}
}

// TestPairOrder checks that fromPairOrder undoes toPairOrder (scale 1) and
// that pair order is each 16 channels' even ones, then their odd ones.
func TestPairOrder(t *testing.T) {
	x := make([]float32, 48)
	for i := range x {
		x[i] = float32(i)
	}
	p := make([]float32, len(x))
	toPairOrder(p, x, 2)
	for c := 0; c < len(x); c += 16 {
		for j := range 8 {
			if p[c+j] != 2*x[c+2*j] || p[c+8+j] != 2*x[c+2*j+1] {
				t.Fatalf("toPairOrder: chunk at %d is %v", c, p[c:c+16])
			}
		}
	}
	toPairOrder(p, x, 1)
	fromPairOrder(p)
	for i := range x {
		if p[i] != x[i] {
			t.Fatalf("fromPairOrder(toPairOrder(x)) = %v, want %v", p, x)
		}
	}
}

// TestDecodePagePassesOverNaN checks that a NaN score (a NaN key) gets
// weight 0, as in the separate loops, instead of becoming the running max
// and wiping out the pages before it: a NaN key in the last row of the
// first page (the row the max is taken from last).
func TestDecodePagePassesOverNaN(t *testing.T) {
	ks := decodeLoops(t)
	r := kernelRand(t)
	for _, tile := range []int{1, KeyTile} {
		t.Run(fmt.Sprintf("tile%d", tile), func(t *testing.T) { passOverNaN(t, ks, r, tile) })
	}
}

func passOverNaN(t *testing.T, ks *kernels, r *rand.Rand, tile int) {
	const nh, d, n = 4, 64, 7
	q := randF32(r, nh*d)
	qp := make([]float32, decodeQLen(nh))
	if !ks.decodeQ(qp, q, nh, d, tile, 0.125) {
		t.Fatal("decodeQ refused")
	}
	m := []float32{float32(math.Inf(-1)), float32(math.Inf(-1)), float32(math.Inf(-1)), float32(math.Inf(-1))}
	l := make([]float32, nh)
	acc := make([]float32, nh*d)
	var keys, vals [][]float32
	for page := range 2 {
		kb, kf := randBF16(r, n*d)
		vb, vf := randBF16(r, n*d)
		if page == 0 {
			binary.LittleEndian.PutUint16(kb[2*(n-1)*d:], 0x7fc0) // a bf16 NaN
		}
		kt := tileKeys(kb, n, d, tile)
		ks.decodePage(qp, kt, vb, nh, n, d, tile, make([]float32, 4*len(kt)/(2*d)), m, l, acc, nil, nil)
		for t := range n {
			if page == 0 && t == n-1 {
				continue // the NaN row: weight 0
			}
			keys = append(keys, kf[t*d:(t+1)*d])
			vals = append(vals, vf[t*d:(t+1)*d])
		}
	}
	fromPairOrder(acc)
	got := make([]float32, nh*d)
	want := make([]float32, nh*d)
	for h := range nh {
		if math.IsNaN(float64(m[h])) {
			t.Fatalf("m[%d] is NaN", h)
		}
		ref, _, _ := refAttention(q[h*d:(h+1)*d], keys, vals, 0.125)
		for j := range d {
			got[h*d+j] = acc[h*d+j] / l[h]
			want[h*d+j] = float32(ref[j])
		}
	}
	if e := relErr(got, want); e > 1e-5 {
		t.Errorf("relative error %.3g against attention without the NaN row, want <= 1e-5", e)
	}
}

// decodeLoops returns the vector set with its one-call decode routine, or
// skips the test where the CPU has none.
func decodeLoops(t *testing.T) *kernels {
	t.Helper()
	if vecKernels == nil || vecKernels.decodeQ == nil || vecKernels.decodePage == nil {
		t.Skip("no vector loops on this CPU")
	}
	return vecKernels
}

// refAttention is softmax(scale·q·kᵀ)·v in float64, with the largest score
// and the softmax denominator relative to it.
func refAttention(q []float32, keys, vals [][]float32, scale float64) (out []float64, mx, den float64) {
	s := make([]float64, len(keys))
	mx = math.Inf(-1)
	for t, k := range keys {
		var dot float64
		for j := range q {
			dot += float64(q[j]) * float64(k[j])
		}
		s[t] = dot * scale
		mx = max(mx, s[t])
	}
	out = make([]float64, len(q))
	for t, v := range vals {
		w := math.Exp(s[t] - mx)
		den += w
		for j := range out {
			out[j] += w * float64(v[j])
		}
	}
	for j := range out {
		out[j] /= den
	}
	return out, mx, den
}

// TestDecodePageAnyAlignment checks that where qp starts does not matter:
// decodeQ and decodePage find the same 64-byte boundary in it for every
// offset of the slice (Go's allocator happens to align the kernel's own).
func TestDecodePageAnyAlignment(t *testing.T) {
	ks := decodeLoops(t)
	r := kernelRand(t)
	const nh, d, n = 8, 64, 9
	q := randF32(r, nh*d)
	kb, _ := randBF16(r, n*d)
	vb, _ := randBF16(r, n*d)
	run := func(qp []float32) []float32 {
		if !ks.decodeQ(qp, q, nh, d, 1, 0.125) {
			t.Fatal("decodeQ refused")
		}
		m := make([]float32, nh)
		for h := range m {
			m[h] = float32(math.Inf(-1))
		}
		l, acc := make([]float32, nh), make([]float32, nh*d)
		ks.decodePage(qp, kb, vb, nh, n, d, 1, make([]float32, 4*n), m, l, acc, nil, nil)
		return append(acc, l...)
	}
	big := make([]float32, decodeQLen(nh)+16)
	want := run(big[:decodeQLen(nh)])
	for off := 1; off < 16; off++ {
		if got := run(big[off : off+decodeQLen(nh)]); !slices.Equal(got, want) {
			t.Errorf("qp at offset %d floats gives a different result", off)
		}
	}
}

// TestPairSlotMatchesGenerator checks that the Go side's slot for a head's
// prepared q is the one the assembly generator addresses (pairMaxD in
// internal/asm/attn, a module of its own that the model cannot import).
func TestPairSlotMatchesGenerator(t *testing.T) {
	src, err := os.ReadFile("../internal/asm/attn/asm.go")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("const pairMaxD = %d\n", pairSlot)
	if !strings.Contains(string(src), want) {
		t.Errorf("internal/asm/attn/asm.go does not declare %q: the prepared q's slots no longer match", strings.TrimSpace(want))
	}
}
