package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"github.com/kvflow/kvflow/tensor"
)

// TestDecodePageMatchesReference folds a few pages of random bf16 K/V into
// the online softmax with the vector set's one-call decodePage and checks
// the result against float64 attention over all of them: odd and even page
// lengths (the routine takes rows two at a time), one row, 8 heads (two
// blocks of 4), d from 16 to 256, and scales large enough that the max
// moves from page to page (the rescale of l and acc).
func TestDecodePageMatchesReference(t *testing.T) {
	ks := vecKernels
	if ks == nil || ks.decodePage == nil {
		t.Skip("no vector loops on this CPU")
	}
	r := kernelRand(t)
	for _, c := range []struct {
		nh, d int
		ns    []int
		scale float32
	}{
		{4, 128, []int{64, 64, 64}, 0.088},
		{4, 128, []int{1, 7, 64, 3}, 0.35},
		{8, 64, []int{5, 64, 2}, 0.5},
		{4, 16, []int{9, 1}, 1},
		{4, 256, []int{64, 33}, 0.0625},
		{4, 48, []int{31, 32}, 2}, // d not a multiple of 24: widths 3, 2 and 1 all run
	} {
		t.Run(fmt.Sprintf("nh%d_d%d_n%v", c.nh, c.d, c.ns), func(t *testing.T) {
			q := randF32(r, c.nh*c.d)
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
				// Later pages get stronger keys so that the max moves.
				for j := range kf {
					h := tensor.BF16FromF32(kf[j] * float32(i+1))
					binary.LittleEndian.PutUint16(kb[2*j:], h)
					kf[j] = tensor.F32FromBF16(h)
				}
				s := make([]float32, 4*n)
				if !ks.decodePage(q, kb, vb, c.nh, n, c.d, c.scale, s, m, l, acc, nil, nil) {
					t.Fatalf("decodePage refused nh=%d n=%d d=%d", c.nh, n, c.d)
				}
				for t := range n {
					keys = append(keys, kf[t*c.d:(t+1)*c.d])
					vals = append(vals, vf[t*c.d:(t+1)*c.d])
				}
			}
			got := make([]float32, len(acc))
			want := make([]float32, len(acc))
			for h := range c.nh {
				ref := refAttention(q[h*c.d:(h+1)*c.d], keys, vals, float64(c.scale))
				for j := range c.d {
					got[h*c.d+j] = acc[h*c.d+j] / l[h]
					want[h*c.d+j] = float32(ref[j])
				}
			}
			if e := relErr(got, want); e > 1e-5 {
				t.Errorf("relative error %.3g against float64 attention, want <= 1e-5", e)
			}
		})
	}
}

// TestDecodePageRefuses checks that decodePage reports false, touching
// nothing, for the shapes it does not take.
func TestDecodePageRefuses(t *testing.T) {
	ks := vecKernels
	if ks == nil || ks.decodePage == nil {
		t.Skip("no vector loops on this CPU")
	}
	for _, c := range []struct{ nh, n, d int }{{2, 4, 128}, {4, 4, 24}, {4, 4, 512}, {4, 0, 128}, {0, 4, 128}} {
		m, l := []float32{1, 2, 3, 4}, []float32{5, 6, 7, 8}
		acc := make([]float32, 4*max(c.d, 1))
		acc[0] = 9
		buf := make([]byte, 2*max(c.n, 1)*max(c.d, 1))
		if ks.decodePage(make([]float32, 4*max(c.d, 1)), buf, buf, c.nh, c.n, c.d, 1, make([]float32, 64), m, l, acc, nil, nil) {
			t.Errorf("decodePage took nh=%d n=%d d=%d", c.nh, c.n, c.d)
		}
		if m[0] != 1 || l[3] != 8 || acc[0] != 9 {
			t.Errorf("nh=%d n=%d d=%d: refused but wrote m=%v l=%v acc[0]=%v", c.nh, c.n, c.d, m, l, acc[0])
		}
	}
}

// refAttention is softmax(scale·q·kᵀ)·v in float64.
func refAttention(q []float32, keys, vals [][]float32, scale float64) []float64 {
	s := make([]float64, len(keys))
	mx := math.Inf(-1)
	for t, k := range keys {
		var dot float64
		for j := range q {
			dot += float64(q[j]) * float64(k[j])
		}
		s[t] = dot * scale
		mx = max(mx, s[t])
	}
	out := make([]float64, len(q))
	var den float64
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
	return out
}
