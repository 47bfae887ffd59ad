package model

import (
	"math"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// vecKernels is the AVX2+FMA set (kernels_amd64.s), nil on CPUs without
// both; decided once at init.
var vecKernels = newAVX2Kernels(cpu.X86.HasAVX2 && cpu.X86.HasFMA)

func newAVX2Kernels(ok bool) *kernels {
	if !ok {
		return nil
	}
	return &kernels{
		name:        "avx2",
		scoresBF16:  scoresBF16AVX2,
		scoresTiled: scoresTiledAVX2,
		scoresF32:   scoresF32AVX2,
		accumBF16:   accumBF16AVX2,
		accumF32:    accumF32AVX2,
		expSum:      expSumAVX2Slice,
		maxF32:      maxF32Slice,
		decodeQ:     decodeQAVX2,
		decodePage:  decodePageAVX2,
		decodePage4: decodePage4AVX2,
		axpy:        axpySlice,
		linear:      linearAVX2,
	}
}

// linearAVX2 is linearGo with the vector blocks: 3 weight rows by 4 tokens
// (12 sums, enough to keep both FMA units busy, each reduced once), then
// the same 3 rows by the tile's last 1-3 tokens while they are in cache,
// single rows for the rest of the rows; one token alone (a decode step's
// matrix-vector product) goes 8 rows at a time. Tokens go in tiles of
// linearTile, whose x stays in L2 while every weight row passes over it
// once. in not a multiple of 8 goes to linearGo.
func linearAVX2(y, x, w []float32, n, in, out int) {
	if n <= 0 || out <= 0 {
		return
	}
	if in <= 0 || in%8 != 0 {
		linearGo(y, x, w, n, in, out)
		return
	}
	x, y, w = x[:n*in], y[:n*out], w[:out*in]
	if n == 1 {
		r := 0
		for ; r+8 <= out; r += 8 {
			linearR8T1(&y[r], out, &x[0], in, &w[r*in], in, in)
		}
		for ; r < out; r++ {
			linearR1T1(&y[r], out, &x[0], in, &w[r*in], in, in)
		}
		return
	}
	for t0 := 0; t0 < n; t0 += linearTile {
		t1 := min(n, t0+linearTile)
		quads := t0 + (t1-t0)/4*4
		r := 0
		for ; r+3 <= out; r += 3 {
			for t := t0; t < quads; t += 4 {
				linearR3T4(&y[t*out+r], out, &x[t*in], in, &w[r*in], in, in)
			}
			if t := quads; t < t1 {
				linearR3Tail[t1-t-1](&y[t*out+r], out, &x[t*in], in, &w[r*in], in, in)
			}
		}
		for ; r < out; r++ {
			for t := t0; t < t1; t++ {
				linearR1T1(&y[t*out+r], out, &x[t*in], in, &w[r*in], in, in)
			}
		}
	}
}

// linearR3Tail[k-1] is the 3-row block of k tokens.
var linearR3Tail = [3]func(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int){
	linearR3T1, linearR3T2, linearR3T3,
}

// linearTile is the tokens linearAVX2 takes per pass over the weights: 32
// tokens of a 2,048-wide x are 256 KiB, half of this machine's L2.
const linearTile = 32

// axpySlice is axpy with the vector loop over the multiple-of-8 part.
func axpySlice(a float32, x, y []float32) {
	x = x[:len(y)]
	n := len(y) &^ 7
	if n > 0 {
		axpyAVX2(&y[0], &x[0], n, a)
	}
	axpy(a, x[n:], y[n:])
}

// decodeQAVX2 prepares q for decodePageAVX2: nh a multiple of 4 and d a
// multiple of 16 up to pairSlot, keys in rows (tile 1) or in tiles of
// KeyTile tokens. From the first 64-byte boundary of qp, each block of 4
// heads takes 4 slots of pairSlot floats, with head h's q times scale where
// the page routine reads it: in pair order at the end of its slot for
// decodePageBF16H4, in channel order at the start for
// decodePageTiledBF16H4.
func decodeQAVX2(qp, q []float32, nh, d, tile int, scale float32) bool {
	if !decodeShape(nh, d) || (tile != 1 && tile != KeyTile) {
		return false
	}
	_ = q[nh*d-1]
	qa := alignedQ(qp)
	_ = qa[nh*pairSlot-1]
	for h := range nh {
		if tile == 1 {
			toPairsAVX2(&qa[(h+1)*pairSlot-d], &q[h*d], d, scale)
			continue
		}
		// scale*src with one rounding, as a multiply: 0 + scale*src.
		dst := qa[h*pairSlot : h*pairSlot+d]
		clear(dst)
		axpyAVX2(&dst[0], &q[h*d], d, scale)
	}
	return true
}

// decodeShape reports whether the page routines take nh query heads of d
// channels: blocks of 4 heads, d a multiple of 16 that fits a slot.
func decodeShape(nh, d int) bool {
	return nh > 0 && nh%4 == 0 && d > 0 && d%16 == 0 && d <= pairSlot
}

// decodePageAVX2 runs the page routine of the keys' layout for each block
// of 4 heads, with qp as decodeQAVX2 left it for that tile: k holds
// keyBytes(n, d, 2, tile) bytes, whole tiles.
func decodePageAVX2(qp []float32, k, v []byte, nh, n, d, tile int, s, m, l, acc []float32, pfA, pfB []byte) {
	if n <= 0 || !decodeShape(nh, d) || (tile != 1 && tile != KeyTile) {
		panic("model: decodePage: shape not taken")
	}
	kb := keyBytes(n, d, 2, tile)
	qa := alignedQ(qp)
	_ = qa[nh*pairSlot-1]
	_ = k[kb-1]
	_ = v[2*n*d-1]
	_ = s[4*kb/(2*d)-1]
	_ = m[nh-1]
	_ = l[nh-1]
	_ = acc[nh*d-1]
	pa, pb := &k[0], &k[0]
	if len(pfA) >= kb {
		pa = &pfA[0]
	}
	if len(pfB) >= 2*n*d {
		pb = &pfB[0]
	}
	page := decodePageBF16H4
	if tile == KeyTile {
		page = decodePageTiledBF16H4
	}
	for h := 0; h < nh; h += 4 {
		page(&qa[h*pairSlot], &k[0], &v[0], n, d, &s[0], &m[h], &l[h], &acc[h*d], pa, pb)
		pa, pb = &k[0], &k[0]
	}
}

// decodePage4AVX2 returns the page routine of the keys' layout for one
// block of 4 heads, unchecked (see kernels.decodePage4).
func decodePage4AVX2(tile int) func(qp *float32, k, v *byte, n, d int, s, m, l, acc *float32, pfA, pfB *byte) {
	switch tile {
	case 1:
		return decodePageBF16H4
	case KeyTile:
		return decodePageTiledBF16H4
	}
	return nil
}

// alignedQ returns qp from its first 64-byte boundary, so that no 32-byte
// load of q straddles two cache lines.
func alignedQ(qp []float32) []float32 {
	off := (64 - uintptr(unsafe.Pointer(unsafe.SliceData(qp)))%64) % 64 / 4
	return qp[off:]
}

func maxF32Slice(x []float32) float32 {
	return maxF32AVX2(&x[0], len(x))
}

// The wrappers below check once per call that the slices hold every
// element the assembly touches (a short slice panics instead of reading or
// writing past it), then split the nh query heads into blocks of 4, 2 and 1.

func scoresBF16AVX2(out, q []float32, k []byte, nh, n, d, ostride int, scale float32, mx []float32, pfA, pfB []byte) {
	if d <= 0 || d%8 != 0 {
		scoresBF16Go(out, q, k, nh, n, d, ostride, scale, mx, pfA, pfB)
		return
	}
	if nh <= 0 || n <= 0 {
		return
	}
	_ = out[(nh-1)*ostride+n-1]
	_ = q[nh*d-1]
	_ = k[2*n*d-1]
	if d%16 != 0 || d > pairMaxD {
		scoresBF16Narrow(out, q, k, nh, n, d, ostride, scale)
		if mx != nil {
			for h := range nh {
				mx[h] = maxF32Slice(out[h*ostride : h*ostride+n])
			}
		}
		return
	}
	var own [4]float32
	for h := range nh {
		m := &own[h%4]
		if mx != nil {
			m = &mx[h]
		}
		*m = float32(math.Inf(-1))
	}
	// The routines prefetch 2*n*d bytes of each region; a region too short
	// (or a block of heads after the first) reads k's own lines instead.
	pa, pb := &k[0], &k[0]
	if len(pfA) >= 2*n*d {
		pa = &pfA[0]
	}
	if len(pfB) >= 2*n*d {
		pb = &pfB[0]
	}
	h := 0
	for ; nh-h >= 4; h += 4 {
		m := &own[0]
		if mx != nil {
			_ = mx[h+3]
			m = &mx[h]
		}
		scoresBF16H4(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale, m, pa, pb)
		pa, pb = &k[0], &k[0]
	}
	if nh-h >= 2 {
		m := &own[0]
		if mx != nil {
			_ = mx[h+1]
			m = &mx[h]
		}
		scoresBF16H2(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale, m, pa, pb)
		pa, pb = &k[0], &k[0]
		h += 2
	}
	if nh-h >= 1 {
		m := &own[0]
		if mx != nil {
			m = &mx[h]
		}
		scoresBF16H1(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale, m, pa, pb)
	}
}

// pairMaxD is the largest d the even/odd scores routines take (their copy
// of q is in a fixed stack frame).
const pairMaxD = 256

// scoresBF16Narrow runs the scores routines that take any d%8 == 0.
func scoresBF16Narrow(out, q []float32, k []byte, nh, n, d, ostride int, scale float32) {
	h := 0
	for ; nh-h >= 4; h += 4 {
		scoresBF16NarrowH4(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale)
	}
	if nh-h >= 2 {
		scoresBF16NarrowH2(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale)
		h += 2
	}
	if nh-h >= 1 {
		scoresBF16NarrowH1(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale)
	}
}

func scoresF32AVX2(out, q, k []float32, nh, n, d, ostride int, scale float32) {
	if d <= 0 || d%8 != 0 {
		scoresF32Go(out, q, k, nh, n, d, ostride, scale)
		return
	}
	if nh <= 0 || n <= 0 {
		return
	}
	_ = out[(nh-1)*ostride+n-1]
	_ = q[nh*d-1]
	_ = k[n*d-1]
	h := 0
	for ; nh-h >= 4; h += 4 {
		scoresF32H4(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale)
	}
	if nh-h >= 2 {
		scoresF32H2(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale)
		h += 2
	}
	if nh-h >= 1 {
		scoresF32H1(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale)
	}
}

func accumBF16AVX2(acc, p []float32, v []byte, nh, n, d, pstride int) {
	if d <= 0 || d%8 != 0 {
		accumBF16Go(acc, p, v, nh, n, d, pstride)
		return
	}
	if nh <= 0 || n <= 0 {
		return
	}
	_ = acc[nh*d-1]
	_ = p[(nh-1)*pstride+n-1]
	_ = v[2*n*d-1]
	h := 0
	for ; nh-h >= 4; h += 4 {
		accumBF16H4(&acc[h*d], &p[h*pstride], &v[0], n, d, pstride)
	}
	if nh-h >= 2 {
		accumBF16H2(&acc[h*d], &p[h*pstride], &v[0], n, d, pstride)
		h += 2
	}
	if nh-h >= 1 {
		accumBF16H1(&acc[h*d], &p[h*pstride], &v[0], n, d, pstride)
	}
}

func accumF32AVX2(acc, p, v []float32, nh, n, d, pstride int) {
	if d <= 0 || d%8 != 0 {
		accumF32Go(acc, p, v, nh, n, d, pstride)
		return
	}
	if nh <= 0 || n <= 0 {
		return
	}
	_ = acc[nh*d-1]
	_ = p[(nh-1)*pstride+n-1]
	_ = v[n*d-1]
	h := 0
	for ; nh-h >= 4; h += 4 {
		accumF32H4(&acc[h*d], &p[h*pstride], &v[0], n, d, pstride)
	}
	if nh-h >= 2 {
		accumF32H2(&acc[h*d], &p[h*pstride], &v[0], n, d, pstride)
		h += 2
	}
	if nh-h >= 1 {
		accumF32H1(&acc[h*d], &p[h*pstride], &v[0], n, d, pstride)
	}
}

func expSumAVX2Slice(x []float32, m float32) float32 {
	if len(x) == 0 {
		return 0
	}
	return expSumAVX2(&x[0], len(x), m)
}

// Generated routines (kernels_amd64.s).

// scoresBF16NarrowH4 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// for h < 4, t < n; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func scoresBF16NarrowH4(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32)

// scoresBF16NarrowH2 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// for h < 2, t < n; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func scoresBF16NarrowH2(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32)

// scoresBF16NarrowH1 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// for h < 1, t < n; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func scoresBF16NarrowH1(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32)

// scoresBF16H4 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// and mx[h] = max(mx[h], out[h*ostride+t]) for h < 4, t < n; n > 0,
// d > 0, d%16 == 0 and d <= 256. It also prefetches n*2*d bytes at pfA and pfB.
//
//go:noescape
func scoresBF16H4(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32, mx *float32, pfA *byte, pfB *byte)

// scoresBF16H2 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// and mx[h] = max(mx[h], out[h*ostride+t]) for h < 2, t < n; n > 0,
// d > 0, d%16 == 0 and d <= 256. It also prefetches n*2*d bytes at pfA and pfB.
//
//go:noescape
func scoresBF16H2(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32, mx *float32, pfA *byte, pfB *byte)

// scoresBF16H1 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// and mx[h] = max(mx[h], out[h*ostride+t]) for h < 1, t < n; n > 0,
// d > 0, d%16 == 0 and d <= 256. It also prefetches n*2*d bytes at pfA and pfB.
//
//go:noescape
func scoresBF16H1(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32, mx *float32, pfA *byte, pfB *byte)

// accumBF16H4 adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c)
// for h < 4, c < d; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func accumBF16H4(acc *float32, p *float32, v *byte, n int, d int, pstride int)

// accumBF16H2 adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c)
// for h < 2, c < d; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func accumBF16H2(acc *float32, p *float32, v *byte, n int, d int, pstride int)

// accumBF16H1 adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c)
// for h < 1, c < d; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func accumBF16H1(acc *float32, p *float32, v *byte, n int, d int, pstride int)

// scoresF32H4 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// for h < 4, t < n; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func scoresF32H4(out *float32, q *float32, k *float32, n int, d int, ostride int, scale float32)

// scoresF32H2 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// for h < 2, t < n; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func scoresF32H2(out *float32, q *float32, k *float32, n int, d int, ostride int, scale float32)

// scoresF32H1 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)
// for h < 1, t < n; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func scoresF32H1(out *float32, q *float32, k *float32, n int, d int, ostride int, scale float32)

// accumF32H4 adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c)
// for h < 4, c < d; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func accumF32H4(acc *float32, p *float32, v *float32, n int, d int, pstride int)

// accumF32H2 adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c)
// for h < 2, c < d; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func accumF32H2(acc *float32, p *float32, v *float32, n int, d int, pstride int)

// accumF32H1 adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c)
// for h < 1, c < d; n > 0, d > 0 and d%8 == 0.
//
//go:noescape
func accumF32H1(acc *float32, p *float32, v *float32, n int, d int, pstride int)

// expSumAVX2 sets x[i] = exp(x[i]-m) for i < n and returns their sum;
// results below the smallest normal float32 are 0.
//
//go:noescape
func expSumAVX2(x *float32, n int, m float32) float32

// decodePageBF16H4 folds the n keys and values of a bf16 page (rows of d) into
// the running max m[h], denominator l[h] and weighted sum acc[h*d:(h+1)*d] of
// query heads h < 4, using s[:4*n] as scratch. qp (64-byte aligned) holds each
// head's q, scaled, in pair order at the end of a slot of 256 floats; acc is
// in pair order. n > 0, d > 0, d%16 == 0, d <= 256; it prefetches n*2*d bytes at pfA and pfB.
//
//go:noescape
func decodePageBF16H4(qp *float32, k *byte, v *byte, n int, d int, s *float32, m *float32, l *float32, acc *float32, pfA *byte, pfB *byte)

// linearR<R>T<T> sets y[t*ystride+r] = Σ_{i<in} x[t*xstride+i]*w[r*wstride+i]
// for r < R, t < T; strides in floats, in a positive multiple of 8.
//
//go:noescape
func linearR3T4(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int)

//go:noescape
func linearR3T3(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int)

//go:noescape
func linearR3T2(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int)

//go:noescape
func linearR3T1(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int)

//go:noescape
func linearR8T1(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int)

//go:noescape
func linearR1T1(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int)

// decodePageTiledBF16H4 is decodePageBF16H4 over keys laid out in tiles of
// KeyTile tokens (for each tile, each channel's 16 values together), with
// q in channel order at the start of each slot, s[:4*ceil(n/16)*16] as
// scratch, and ceil(n/16)*32*d bytes prefetched at pfA (as many as the
// keys it reads): the page routine of the shapes whose keys are in tiles
// (KeyTileFor).
//
//go:noescape
func decodePageTiledBF16H4(qp *float32, k *byte, v *byte, n int, d int, s *float32, m *float32, l *float32, acc *float32, pfA *byte, pfB *byte)

// toPairsAVX2 sets dst[:n] to scale*src[:n] in pair order (each 16 floats
// as the 8 even ones, then the 8 odd ones); n a positive multiple of 16.
//
//go:noescape
func toPairsAVX2(dst *float32, src *float32, n int, scale float32)

// axpyAVX2 sets y[i] += a*x[i] (one rounding) for i < n, a positive
// multiple of 8.
//
//go:noescape
func axpyAVX2(y *float32, x *float32, n int, a float32)

// fmaPeakAVX2 runs n iterations of 12 independent 8-lane FMAs.
//
//go:noescape
func fmaPeakAVX2(n int)

// maxF32AVX2 returns the largest of x[:n]; n > 0.
//
//go:noescape
func maxF32AVX2(x *float32, n int) float32

// scoresTiledBF16H4, H2 and H1 set out[h*ostride+t] = scale * Σ_c
// q[h*d+c]*K(t,c) for h < 4 (2, 1) and t < n rounded up to whole tiles,
// the keys at k in tiles of KeyTile tokens ([d][16] bf16 each); n > 0, d >
// 0 and even. They prefetch as many bytes at pfA and pfB as they read at
// k.
//
//go:noescape
func scoresTiledBF16H4(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32, pfA *byte, pfB *byte)

//go:noescape
func scoresTiledBF16H2(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32, pfA *byte, pfB *byte)

//go:noescape
func scoresTiledBF16H1(out *float32, q *float32, k *byte, n int, d int, ostride int, scale float32, pfA *byte, pfB *byte)

// scoresTiledAVX2 runs scoresTiledBF16H4 for each block of 4 heads, then
// H2 and H1 for the rest; odd d goes to scoresTiledGo.
func scoresTiledAVX2(out, q []float32, k []byte, nh, n, d, ostride int, scale float32, pfA, pfB []byte) {
	if nh <= 0 || n <= 0 {
		return
	}
	if d <= 0 || d%2 != 0 {
		scoresTiledGo(out, q, k, nh, n, d, ostride, scale, pfA, pfB)
		return
	}
	whole := (n + KeyTile - 1) / KeyTile * KeyTile
	if ostride < whole {
		panic("model: scoresTiled: rows of out shorter than whole tiles")
	}
	kb := keyBytes(n, d, 2, KeyTile)
	_ = k[kb-1]
	_ = q[nh*d-1]
	_ = out[(nh-1)*ostride+whole-1]
	pa, pb := &k[0], &k[0]
	if len(pfA) >= kb {
		pa = &pfA[0]
	}
	if len(pfB) >= kb {
		pb = &pfB[0]
	}
	h := 0
	for ; h+4 <= nh; h += 4 {
		scoresTiledBF16H4(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale, pa, pb)
		pa, pb = &k[0], &k[0] // asked for once
	}
	if h+2 <= nh {
		scoresTiledBF16H2(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale, pa, pb)
		pa, pb = &k[0], &k[0]
		h += 2
	}
	if h < nh {
		scoresTiledBF16H1(&out[h*ostride], &q[h*d], &k[0], n, d, ostride, scale, pa, pb)
	}
}
