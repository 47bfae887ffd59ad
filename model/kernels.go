package model

import (
	"encoding/binary"
	"math"
)

//go:generate sh -c "cd ../internal/asm && go run ./attn -out ../../model/kernels_amd64.s"

// kernels are the inner loops of attention over one page of one KV head:
// scores of query rows against key rows, weighted sums of value rows, and
// exponentials. Rows of K and V are d elements, bf16 (little-endian uint16,
// the top half of a float32) or float32; q, p, acc, out are float32.
//
// Two sets exist: goKernels (pure Go, everywhere) and vecKernels (AVX2+FMA
// assembly generated with avo, kernels_amd64.s; nil where the CPU or the
// architecture has none). The vector set takes any nh >= 1 and n >= 0 and
// hands calls with d not a positive multiple of 8 to the Go kernels, so it
// is always safe to use. Both sets agree to float32 rounding (the order of
// the sums differs).
type kernels struct {
	name string // "avx2" or "go"

	// scoresBF16 sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c] * K(t,c)
	// for h < nh, t < n, where K(t,c) is the bf16 value at k[2*(t*d+c):].
	// When mx is not nil (len >= nh) and n > 0 it also sets mx[h] to the
	// largest out[h*ostride+t], t < n. pfA and pfB are memory to be read
	// soon after (in decode, the page's values and the next page's keys):
	// the vector set asks for their first 2*n*d bytes to be brought into
	// the caches a few lines per key row, along with the rows of k; a hint,
	// ignored by the Go set and for a slice shorter than 2*n*d.
	scoresBF16 func(out, q []float32, k []byte, nh, n, d, ostride int, scale float32, mx []float32, pfA, pfB []byte)
	// scoresTiled is scoresBF16 over keys in tiles of KeyTile tokens,
	// K(t,c) the bf16 value at k[2*keyIndex(t, c, d, KeyTile):], without
	// mx, and writing every token of the tiles it reads: out[h*ostride+t]
	// for t < n rounded up to whole tiles (ostride at least that; k holds
	// whole tiles). The vector set asks for as many bytes of pfA and pfB
	// as it reads of k.
	scoresTiled func(out, q []float32, k []byte, nh, n, d, ostride int, scale float32, pfA, pfB []byte)
	// scoresF32: the same with K(t,c) = k[t*d+c].
	scoresF32 func(out, q, k []float32, nh, n, d, ostride int, scale float32)
	// accumBF16 adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t] * V(t,c) for h < nh, c < d,
	// V(t,c) the bf16 value at v[2*(t*d+c):].
	accumBF16 func(acc, p []float32, v []byte, nh, n, d, pstride int)
	// accumF32: the same with V(t,c) = v[t*d+c].
	accumF32 func(acc, p, v []float32, nh, n, d, pstride int)
	// expSum sets x[i] = exp(x[i]-m) for every i and returns the sum of the
	// new x. Inputs x[i]-m are <= 0 (m is the max) or -Inf, which gives
	// exactly 0. Relative error of each exp below 1e-6. Results that would
	// be subnormal (x[i]-m below about -87.34, expMin) are 0 in both sets,
	// as is a NaN x[i]-m.
	expSum func(x []float32, m float32) float32
	// maxF32 returns the largest of x, len(x) > 0 and no NaN.
	maxF32 func(x []float32) float32
	// decodeQ and decodePage fold bf16 pages into the online softmax of
	// the nh query heads of one decode token, one call per page: with K(t,c)
	// the bf16 keys at k in tiles of tile tokens (see KeyTile; 1: rows),
	// V(t,c) the bf16 values at v as in accumBF16, and s_h(t) = scale *
	// Σ_c q[h*d+c]*K(t,c) for t < n, decodePage sets M = max(m[h], max_t
	// s_h(t)), then
	// l[h] = l[h]*e^(m[h]-M) + Σ_t e^(s_h(t)-M),
	// acc[h*d+c] = acc[h*d+c]*e^(m[h]-M) + Σ_t e^(s_h(t)-M)*V(t,c), m[h] = M,
	// using s[:4*n'] as scratch, n' = n rounded up to whole tiles (k holds
	// whole tiles). The token's q is prepared once, by decodeQ into qp (len
	// decodeQLen(nh)): scaled and laid out as the routine for that tile
	// reads it; decodeQ reports false, writing nothing, for shapes or tiles
	// the routines do not take (then the caller runs the separate loops).
	// acc stays in pair order (see pairorder.go) from page to page; the
	// caller puts it back in channel order with fromPairOrder when the
	// pages are done. A NaN score is passed over (weight 0), as in the
	// separate loops. decodePage asks for pfA's first bytes, as many as k's
	// (in decode, this page's values), to be brought into the caches while
	// it scores, and the first n*2*d bytes of pfB (the next page's keys)
	// while it sums (a line per two tokens of each block of channels); a
	// hint, as in scoresBF16. Both are nil where no set of such loops
	// exists.
	decodeQ    func(qp, q []float32, nh, d, tile int, scale float32) bool
	decodePage func(qp []float32, k, v []byte, nh, n, d, tile int, s, m, l, acc []float32, pfA, pfB []byte)
	// decodePage4, where set, returns decodePage's routine for one block
	// of 4 query heads over keys in tiles of tile tokens (nil for a tile
	// it does not take), for a caller that makes decodePage's checks once
	// for many pages: qp from its first 64-byte boundary (alignedQ), k
	// holding keyBytes(n, d, 2, tile) bytes, s 4*n' floats, m and l 4,
	// acc 4*d, pfA and pfB as many bytes as decodePage asks for. A decode
	// item makes hundreds of page calls; decodePage's checks, divisions
	// and call were 0.6% of a one-sequence call's cycles (perf).
	decodePage4 func(tile int) func(qp *float32, k, v *byte, n, d int, s, m, l, acc *float32, pfA, pfB *byte)
	// axpy sets y[i] += a*x[i], len(x) >= len(y): the merge of a decode
	// token's partial results.
	axpy func(a float32, x, y []float32)
	// linear sets y = x·Wᵀ for n tokens: x is [n][in], w is [out][in], y
	// is [n][out]: the layer's q, k, v and o projections.
	linear func(y, x, w []float32, n, in, out int)
}

// goKernels is the pure Go set, always available.
var goKernels = &kernels{
	name:        "go",
	scoresBF16:  scoresBF16Go,
	scoresTiled: scoresTiledGo,
	scoresF32:   scoresF32Go,
	accumBF16:   accumBF16Go,
	accumF32:    accumF32Go,
	expSum:      expSumGo,
	maxF32:      maxF32Go,
	axpy:        axpy,
	linear:      linearGo,
}

func maxF32Go(x []float32) float32 {
	m := x[0]
	for _, v := range x[1:] {
		if v > m {
			m = v
		}
	}
	return m
}

// selectKernels returns the vector set when vector is true and the CPU has
// one (vecKernels, fixed at init from the CPU's features and never written
// after), else goKernels.
func selectKernels(vector bool) *kernels {
	if vector && vecKernels != nil {
		return vecKernels
	}
	return goKernels
}

// defaultKernels returns vecKernels if non-nil, else goKernels.
func defaultKernels() *kernels { return selectKernels(true) }

// expMin is ln(2^-126) rounded up to float32: exp(y) for y >= expMin is a
// normal float32. The kernels give 0 below it, which is what the vector
// exp computes without subnormal arithmetic (slow on many CPUs).
const expMin = -87.33654

// bf16At decodes the bf16 at b[2*i:].
func bf16At(b []byte, i int) float32 {
	return math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
}

func scoresBF16Go(out, q []float32, k []byte, nh, n, d, ostride int, scale float32, mx []float32, _, _ []byte) {
	if nh <= 0 || n <= 0 {
		return
	}
	for h := range nh {
		qh := q[h*d : h*d+d]
		oh := out[h*ostride : h*ostride+n]
		for t := range oh {
			kt := k[2*t*d : 2*t*d+2*d]
			var s0, s1, s2, s3 float32
			c := 0
			for ; c+4 <= d; c += 4 {
				x := qh[c : c+4 : c+4]
				y := kt[2*c : 2*c+8 : 2*c+8]
				s0 += x[0] * math.Float32frombits(uint32(binary.LittleEndian.Uint16(y[0:]))<<16)
				s1 += x[1] * math.Float32frombits(uint32(binary.LittleEndian.Uint16(y[2:]))<<16)
				s2 += x[2] * math.Float32frombits(uint32(binary.LittleEndian.Uint16(y[4:]))<<16)
				s3 += x[3] * math.Float32frombits(uint32(binary.LittleEndian.Uint16(y[6:]))<<16)
			}
			for ; c < d; c++ {
				s0 += qh[c] * bf16At(kt, c)
			}
			oh[t] = scale * ((s0 + s1) + (s2 + s3))
		}
		if mx != nil {
			mx[h] = maxF32Go(oh)
		}
	}
}

func scoresTiledGo(out, q []float32, k []byte, nh, n, d, ostride int, scale float32, _, _ []byte) {
	if nh <= 0 || n <= 0 {
		return
	}
	whole := (n + KeyTile - 1) / KeyTile * KeyTile
	var acc [KeyTile]float32
	for h := range nh {
		qh := q[h*d : h*d+d]
		for t0 := 0; t0 < whole; t0 += KeyTile {
			tile := k[2*t0*d : 2*(t0+KeyTile)*d]
			clear(acc[:])
			for c, x := range qh {
				ch := tile[2*c*KeyTile : 2*(c+1)*KeyTile]
				for j := range acc {
					acc[j] += x * math.Float32frombits(uint32(binary.LittleEndian.Uint16(ch[2*j:]))<<16)
				}
			}
			oh := out[h*ostride+t0 : h*ostride+t0+KeyTile]
			for j, s := range acc {
				oh[j] = scale * s
			}
		}
	}
}

func scoresF32Go(out, q, k []float32, nh, n, d, ostride int, scale float32) {
	if nh <= 0 || n <= 0 {
		return
	}
	for h := range nh {
		qh := q[h*d : h*d+d]
		oh := out[h*ostride : h*ostride+n]
		for t := range oh {
			oh[t] = scale * dot(qh, k[t*d:t*d+d])
		}
	}
}

func accumBF16Go(acc, p []float32, v []byte, nh, n, d, pstride int) {
	if nh <= 0 || n <= 0 {
		return
	}
	for h := range nh {
		ah := acc[h*d : h*d+d]
		ph := p[h*pstride : h*pstride+n]
		for t, w := range ph {
			vt := v[2*t*d : 2*t*d+2*d]
			for c := range ah {
				ah[c] += w * math.Float32frombits(uint32(binary.LittleEndian.Uint16(vt[2*c:]))<<16)
			}
		}
	}
}

func accumF32Go(acc, p, v []float32, nh, n, d, pstride int) {
	if nh <= 0 || n <= 0 {
		return
	}
	for h := range nh {
		ah := acc[h*d : h*d+d]
		ph := p[h*pstride : h*pstride+n]
		for t, w := range ph {
			vt := v[t*d : t*d+d]
			vt = vt[:len(ah)]
			for c := range ah {
				ah[c] += w * vt[c]
			}
		}
	}
}

func expSumGo(x []float32, m float32) float32 {
	var s float32
	for i, xi := range x {
		var e float32
		if y := xi - m; y >= expMin {
			e = float32(math.Exp(float64(y)))
		}
		x[i] = e
		s += e
	}
	return s
}
