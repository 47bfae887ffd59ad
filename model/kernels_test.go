package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/kvflow/kvflow/tensor"
)

// kernelRand returns a generator with a fresh seed, logged so that a
// failure can be reproduced.
func kernelRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func randF32(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

// randBF16 returns n random bf16 values as bytes and decoded.
func randBF16(r *rand.Rand, n int) ([]byte, []float32) {
	b := make([]byte, 2*n)
	f := make([]float32, n)
	for i := range n {
		h := tensor.BF16FromF32(float32(r.NormFloat64()))
		binary.LittleEndian.PutUint16(b[2*i:], h)
		f[i] = tensor.F32FromBF16(h)
	}
	return b, f
}

// relErr is ‖a−b‖/‖b‖ (‖a−b‖ when b is 0).
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range b {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// kernelShape is one call's geometry.
type kernelShape struct{ nh, n, d, stride int }

func (s kernelShape) String() string {
	return fmt.Sprintf("nh=%d n=%d d=%d stride=%d", s.nh, s.n, s.d, s.stride)
}

func kernelShapes(r *rand.Rand) []kernelShape {
	var shapes []kernelShape
	for _, nh := range []int{1, 2, 3, 4, 5, 8, 13} {
		for _, d := range []int{8, 16, 24, 32, 64, 128, 20, 256, 272} {
			for _, n := range []int{0, 1, 2, 3, 5, 7, 8, 16, 31, 33, 64} {
				shapes = append(shapes, kernelShape{nh, n, d, n + r.IntN(4)})
			}
		}
	}
	return shapes
}

// sentinel marks output elements a kernel must not write.
const sentinel = float32(-12345.5)

// kernelCase holds random inputs for one shape, K and V both as bf16 bytes
// and as float32 (the same values, so either form gives the same result).
type kernelCase struct {
	kernelShape
	q, p    []float32 // nh*d; nh*stride
	kb, vb  []byte    // n*d bf16
	kf, vf  []float32 // n*d, decoded
	acc0    []float32 // nh*d, accumulator's initial value
	outSize int       // nh*stride
	scale   float32
}

func newKernelCase(r *rand.Rand, s kernelShape) *kernelCase {
	c := &kernelCase{kernelShape: s, scale: float32(1 / math.Sqrt(float64(s.d)))}
	c.q = randF32(r, s.nh*s.d)
	c.p = randF32(r, s.nh*s.stride)
	c.kb, c.kf = randBF16(r, s.n*s.d)
	c.vb, c.vf = randBF16(r, s.n*s.d)
	c.acc0 = randF32(r, s.nh*s.d)
	c.outSize = max(s.nh*s.stride, 1)
	return c
}

func (c *kernelCase) newOut() []float32 {
	out := make([]float32, c.outSize)
	for i := range out {
		out[i] = sentinel
	}
	return out
}

// checkUntouched reports out elements outside [h*stride, h*stride+n) that
// are not the sentinel.
func (c *kernelCase) checkUntouched(t *testing.T, what string, out []float32) {
	t.Helper()
	for i, v := range out {
		if h, tok := i/max(c.stride, 1), i%max(c.stride, 1); h < c.nh && tok < c.n {
			continue
		}
		if v != sentinel {
			t.Fatalf("%s %v: out[%d] = %v written outside the scores", what, c.kernelShape, i, v)
		}
	}
}

// run computes the four page kernels of ks on c.
func (c *kernelCase) run(ks *kernels) (sb, sf, ab, af []float32) {
	sb, sf = c.newOut(), c.newOut()
	ks.scoresBF16(sb, c.q, c.kb, c.nh, c.n, c.d, c.stride, c.scale, nil, nil, nil)
	ks.scoresF32(sf, c.q, c.kf, c.nh, c.n, c.d, c.stride, c.scale)
	ab = append([]float32(nil), c.acc0...)
	af = append([]float32(nil), c.acc0...)
	ks.accumBF16(ab, c.p, c.vb, c.nh, c.n, c.d, c.stride)
	ks.accumF32(af, c.p, c.vf, c.nh, c.n, c.d, c.stride)
	return
}

// reference computes the kernels in float64, and for each output the sum
// of the magnitudes of its terms: float32 sums in any order are within a
// small multiple of the unit roundoff times that, however much the terms
// cancel.
func (c *kernelCase) reference() (scores, acc, scoresMag, accMag []float32) {
	scores, scoresMag = c.newOut(), c.newOut()
	acc = append([]float32(nil), c.acc0...)
	accMag = make([]float32, len(acc))
	for h := range c.nh {
		for t := range c.n {
			var s, m float64
			for j := range c.d {
				kv := tensor.F32FromBF16(binary.LittleEndian.Uint16(c.kb[2*(t*c.d+j):]))
				s += float64(c.q[h*c.d+j]) * float64(kv)
				m += math.Abs(float64(c.q[h*c.d+j]) * float64(kv))
			}
			scores[h*c.stride+t] = float32(float64(c.scale) * s)
			scoresMag[h*c.stride+t] = float32(float64(c.scale) * m)
		}
		for j := range c.d {
			s := float64(c.acc0[h*c.d+j])
			m := math.Abs(s)
			for t := range c.n {
				vv := tensor.F32FromBF16(binary.LittleEndian.Uint16(c.vb[2*(t*c.d+j):]))
				s += float64(c.p[h*c.stride+t]) * float64(vv)
				m += math.Abs(float64(c.p[h*c.stride+t]) * float64(vv))
			}
			acc[h*c.d+j] = float32(s)
			accMag[h*c.d+j] = float32(m)
		}
	}
	return
}

// sumErr is ‖a−b‖/‖mag‖ over the elements mag covers: the error of sums
// relative to the size of their terms (mag from reference), which bounds
// rounding whatever the order of summation.
func sumErr(a, b, mag []float32) float64 {
	var num, den float64
	for i := range mag {
		if mag[i] == sentinel {
			continue
		}
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(mag[i]) * float64(mag[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func testKernelSets(t *testing.T) []*kernels {
	sets := []*kernels{goKernels}
	if vecKernels != nil {
		sets = append(sets, vecKernels)
	}
	return sets
}

func TestKernelsReference(t *testing.T) {
	r := kernelRand(t)
	for _, ks := range testKernelSets(t) {
		for _, s := range kernelShapes(r) {
			c := newKernelCase(r, s)
			wantS, wantA, magS, magA := c.reference()
			sb, sf, ab, af := c.run(ks)
			for _, x := range []struct {
				what           string
				got, want, mag []float32
			}{{"scoresBF16", sb, wantS, magS}, {"scoresF32", sf, wantS, magS}, {"accumBF16", ab, wantA, magA}, {"accumF32", af, wantA, magA}} {
				if e := sumErr(x.got, x.want, x.mag); e > 1e-5 {
					t.Errorf("%s %s %v: relative error %.3g against float64", ks.name, x.what, s, e)
				}
			}
			c.checkUntouched(t, ks.name+" scoresBF16", sb)
			c.checkUntouched(t, ks.name+" scoresF32", sf)
		}
	}
}

func TestKernelsVectorMatchesGo(t *testing.T) {
	if vecKernels == nil {
		t.Skip("no vector kernels on this CPU")
	}
	if vecKernels.name != "avx2" || defaultKernels() != vecKernels || selectKernels(false) != goKernels {
		t.Fatalf("kernel selection: vec %q, default %q", vecKernels.name, defaultKernels().name)
	}
	r := kernelRand(t)
	for _, s := range kernelShapes(r) {
		c := newKernelCase(r, s)
		_, _, magS, magA := c.reference()
		gsb, gsf, gab, gaf := c.run(goKernels)
		vsb, vsf, vab, vaf := c.run(vecKernels)
		for _, x := range []struct {
			what           string
			got, want, mag []float32
		}{{"scoresBF16", vsb, gsb, magS}, {"scoresF32", vsf, gsf, magS}, {"accumBF16", vab, gab, magA}, {"accumF32", vaf, gaf, magA}} {
			if e := sumErr(x.got, x.want, x.mag); e > 1e-5 {
				t.Errorf("%s %v: avx2 vs go relative error %.3g", x.what, s, e)
			}
		}
	}
}

// TestKernelsScoresMax checks the row maxima scoresBF16 reports and that
// neither they nor the prefetch hints (one long enough, one too short)
// change the scores.
func TestKernelsScoresMax(t *testing.T) {
	r := kernelRand(t)
	for _, ks := range testKernelSets(t) {
		for _, s := range kernelShapes(r) {
			if s.n == 0 {
				continue
			}
			c := newKernelCase(r, s)
			want, _, _, _ := c.run(ks)
			got := c.newOut()
			mx := make([]float32, c.nh+1)
			mx[c.nh] = sentinel
			ks.scoresBF16(got, c.q, c.kb, c.nh, c.n, c.d, c.stride, c.scale, mx, c.vb, c.kb[:len(c.kb)/2])
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s %v: scores with mx and pf differ at %d: %v, %v", ks.name, s, i, got[i], want[i])
				}
			}
			for h := range c.nh {
				if m := maxF32Go(got[h*c.stride : h*c.stride+c.n]); mx[h] != m {
					t.Fatalf("%s %v: mx[%d] = %v, want %v", ks.name, s, h, mx[h], m)
				}
			}
			if mx[c.nh] != sentinel {
				t.Fatalf("%s %v: mx written past nh", ks.name, s)
			}
		}
	}
}

// TestKernelsShortSlices checks that the vector wrappers panic on slices
// shorter than the shape instead of reaching past them.
func TestKernelsShortSlices(t *testing.T) {
	if vecKernels == nil {
		t.Skip("no vector kernels on this CPU")
	}
	r := kernelRand(t)
	c := newKernelCase(r, kernelShape{nh: 4, n: 9, d: 32, stride: 9})
	for name, f := range map[string]func(){
		"scoresBF16 k": func() { vecKernels.scoresBF16(c.newOut(), c.q, c.kb[:len(c.kb)-1], 4, 9, 32, 9, 1, nil, nil, nil) },
		"scoresF32 q":  func() { vecKernels.scoresF32(c.newOut(), c.q[:len(c.q)-1], c.kf, 4, 9, 32, 9, 1) },
		"scoresF32 o":  func() { vecKernels.scoresF32(c.newOut()[:3*9+8], c.q, c.kf, 4, 9, 32, 9, 1) },
		"accumBF16 v":  func() { vecKernels.accumBF16(make([]float32, 4*32), c.p, c.vb[:len(c.vb)-1], 4, 9, 32, 9) },
		"accumF32 acc": func() { vecKernels.accumF32(make([]float32, 4*32-1), c.p, c.vf, 4, 9, 32, 9) },
		"accumF32 p":   func() { vecKernels.accumF32(make([]float32, 4*32), c.p[:3*9+8], c.vf, 4, 9, 32, 9) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: short slice accepted", name)
				}
			}()
			f()
		}()
	}
}

// expInputs returns n values x with max 0 (so m = 0 is the max), spread
// over [-100, 0], with a share of -Inf.
func expInputs(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		switch r.IntN(8) {
		case 0:
			x[i] = float32(math.Inf(-1))
		case 1:
			x[i] = -100 * r.Float32()
		default:
			x[i] = -10 * r.Float32()
		}
	}
	if n > 0 {
		x[r.IntN(n)] = 0
	}
	return x
}

func TestExpSum(t *testing.T) {
	r := kernelRand(t)
	for _, ks := range testKernelSets(t) {
		// A sweep from 0 down to -100, then -Inf, against float64.
		var x []float32
		for y := 0.0; y >= -100; y -= 0.01 {
			x = append(x, float32(y))
		}
		x = append(x, float32(math.Inf(-1)), float32(math.Inf(-1)))
		const m = 2.5 // shift every input: x - m spans about [-102.5, -2.5]
		orig := make([]float32, len(x))
		for i := range x {
			orig[i] = x[i] + m
		}
		in := append([]float32(nil), orig...)
		got := ks.expSum(in, m)
		var want float64
		for i, e := range in {
			y := float64(orig[i] - m) // the kernel's argument, as it rounds it
			if math.IsInf(y, -1) {
				if e != 0 {
					t.Fatalf("%s: exp(-Inf) = %v, want exactly 0", ks.name, e)
				}
				continue
			}
			w := math.Exp(y)
			if y < expMin {
				if e != 0 {
					t.Fatalf("%s: exp(%v) = %v, want 0 (below expMin)", ks.name, y, e)
				}
				continue
			}
			want += w
			if rel := math.Abs(float64(e)-w) / w; rel > 1e-6 {
				t.Fatalf("%s: exp(%v) = %v, want %v (relative error %.3g)", ks.name, y, e, w, rel)
			}
		}
		if rel := math.Abs(float64(got)-want) / want; rel > 1e-5 {
			t.Errorf("%s: sum %v, want %v", ks.name, got, want)
		}

		// All -Inf: every result and the sum are exactly 0.
		for n := range 20 {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(math.Inf(-1))
			}
			if s := ks.expSum(x, 0); s != 0 {
				t.Fatalf("%s: sum of exp(-Inf) over %d = %v", ks.name, n, s)
			}
			for i, e := range x {
				if e != 0 || math.Signbit(float64(e)) {
					t.Fatalf("%s: n=%d exp(-Inf)[%d] = %v", ks.name, n, i, e)
				}
			}
		}
	}

	if vecKernels == nil {
		return
	}
	// Vector against Go on every length up to 70 and a long one, with
	// elements past the length left alone.
	for _, n := range append(rangeInts(71), 1000, 1001) {
		x := expInputs(r, n)
		const m = 3.25
		for i := range x {
			x[i] += m
		}
		xg := append([]float32(nil), x...)
		xv := append(append([]float32(nil), x...), 42, 42, 42, 42, 42, 42, 42, 42)
		sg := goKernels.expSum(xg, m)
		sv := vecKernels.expSum(xv[:n], m)
		if e := relErr(xv[:n], xg); e > 1e-6 {
			t.Errorf("n=%d: avx2 vs go exp relative error %.3g", n, e)
		}
		// Positive terms summed in another order: within (n-1) unit
		// roundoffs of each other.
		if n > 0 && math.Abs(float64(sv-sg))/float64(sg) > 1e-6+float64(n)*0x1p-24 {
			t.Errorf("n=%d: avx2 sum %v, go %v", n, sv, sg)
		}
		for i, v := range xv[n:] {
			if v != 42 {
				t.Fatalf("n=%d: x[%d] written past the end", n, n+i)
			}
		}
	}
}

func rangeInts(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// BenchmarkKernels times the bf16 page kernels on a typical GQA shape: 4
// query heads over a 64-token page of a 128-wide head. Bytes are those of
// the K or V page read.
func BenchmarkKernels(b *testing.B) {
	const nh, n, d = 4, 64, 128
	r := rand.New(rand.NewPCG(1, 2))
	q := randF32(r, nh*d)
	p := randF32(r, nh*n)
	kb, _ := randBF16(r, n*d)
	out := make([]float32, nh*n)
	acc := make([]float32, nh*d)
	for _, ks := range []*kernels{goKernels, vecKernels} {
		if ks == nil {
			continue
		}
		b.Run(ks.name+"/scoresBF16", func(b *testing.B) {
			b.SetBytes(int64(len(kb)))
			for b.Loop() {
				ks.scoresBF16(out, q, kb, nh, n, d, n, 0.125, nil, nil, nil)
			}
		})
		b.Run(ks.name+"/accumBF16", func(b *testing.B) {
			b.SetBytes(int64(len(kb)))
			for b.Loop() {
				ks.accumBF16(acc, p, kb, nh, n, d, n)
			}
		})
		b.Run(ks.name+"/expSum", func(b *testing.B) {
			x := make([]float32, n)
			b.SetBytes(4 * n)
			for b.Loop() {
				for i := range x {
					x[i] = -float32(i) * 0.25
				}
				ks.expSum(x, 0)
			}
		})
	}
}

// TestKernelsAxpy checks each set's axpy against float64 for lengths
// around the vector widths, and that it writes only y[:len(y)].
func TestKernelsAxpy(t *testing.T) {
	r := kernelRand(t)
	for _, ks := range testKernelSets(t) {
		for n := range 70 {
			a := float32(r.NormFloat64())
			x := randF32(r, n+3)
			y := randF32(r, n+1)
			want := make([]float64, n)
			for i := range want {
				want[i] = float64(y[i]) + float64(a)*float64(x[i])
			}
			last := y[n]
			ks.axpy(a, x, y[:n])
			for i, w := range want {
				if e := math.Abs(float64(y[i]) - w); e > 1e-6*(math.Abs(w)+math.Abs(float64(a*x[i]))) {
					t.Fatalf("%s n=%d: y[%d] = %v, want %v", ks.name, n, i, y[i], w)
				}
			}
			if y[n] != last {
				t.Fatalf("%s n=%d: wrote past len(y)", ks.name, n)
			}
		}
	}
}

// TestKernelsScoresTiled checks scoresTiled of both sets against float64
// scores over the same keys in rows, on every kernel shape with an even d
// (the tiles' padding holds zero keys): the first n scores of each head
// within 1e-5, the rest of its whole tiles 0 (zero keys), nothing written
// outside them, the vector set within 1e-5 of the Go set, and prefetch
// hints (one long enough, one too short) change nothing.
func TestKernelsScoresTiled(t *testing.T) {
	r := kernelRand(t)
	for _, s := range kernelShapes(r) {
		if s.n == 0 || s.d%2 != 0 {
			continue
		}
		whole := (s.n + KeyTile - 1) / KeyTile * KeyTile
		s.stride = whole + r.IntN(3)
		c := newKernelCase(r, s)
		want, _, mag, _ := c.reference()
		kt := tileKeys(c.kb, c.n, c.d, KeyTile)
		var outs [][]float32
		for _, ks := range testKernelSets(t) {
			got := c.newOut()
			ks.scoresTiled(got, c.q, kt, c.nh, c.n, c.d, c.stride, c.scale, nil, nil)
			hinted := c.newOut()
			ks.scoresTiled(hinted, c.q, kt, c.nh, c.n, c.d, c.stride, c.scale, c.vb, kt[:len(kt)/2])
			if !slices.Equal(got, hinted) {
				t.Fatalf("%s %v: prefetch hints change the scores", ks.name, s)
			}
			visible := c.newOut()
			for h := range c.nh {
				row := got[h*c.stride : (h+1)*c.stride]
				copy(visible[h*c.stride:], row[:c.n])
				for j := c.n; j < whole; j++ {
					if row[j] != 0 {
						t.Fatalf("%s %v: head %d padding token %d scored %v, want 0", ks.name, s, h, j, row[j])
					}
				}
				for j := whole; j < c.stride; j++ {
					if row[j] != sentinel {
						t.Fatalf("%s %v: head %d wrote past its whole tiles at %d", ks.name, s, h, j)
					}
				}
			}
			if e := sumErr(visible, want, mag); e > 1e-5 {
				t.Errorf("%s %v: scoresTiled relative error %.3g against float64", ks.name, s, e)
			}
			outs = append(outs, visible)
		}
		if len(outs) == 2 {
			if e := sumErr(outs[1], outs[0], mag); e > 1e-5 {
				t.Errorf("%v: scoresTiled avx2 vs go relative error %.3g", s, e)
			}
		}
	}
}
