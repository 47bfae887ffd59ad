package model

import "math"

// rope holds what the interleaved multimodal rotary embedding needs, per
// frequency index i < HeadDim/2.
type rope struct {
	invFreq []float32 // theta^(-2i/D), rounded to float32 as transformers does
	row     []uint8   // which position row (0 temporal, 1 height, 2 width) drives frequency i
}

func newRope(cfg Config) rope {
	half := cfg.HeadDim / 2
	r := rope{invFreq: make([]float32, half), row: make([]uint8, half)}
	for i := range half {
		// transformers: 1.0 / (base ** (arange(0, D, 2).float() / D)), all
		// in float32. Reproducing each rounding keeps the angles, and so
		// cos/sin, bit-compatible with the reference.
		exponent := float32(2*i) / float32(cfg.HeadDim)
		p := float32(math.Pow(cfg.RopeTheta, float64(exponent)))
		r.invFreq[i] = 1 / p
	}
	// Interleave: frequency i comes from the height row for i = 1, 4, 7, …
	// < 3*section[1], from the width row for i = 2, 5, 8, … < 3*section[2],
	// and from the temporal row otherwise.
	for dim := 1; dim <= 2; dim++ {
		for i := dim; i < 3*cfg.MRopeSection[dim] && i < half; i += 3 {
			r.row[i] = uint8(dim)
		}
	}
	return r
}

// cosSin fills cos and sin (each n*D/2, token-major) for the n tokens whose
// position rows are pos. The full embedding of transformers is
// concat(freqs, freqs), so its second half repeats the first and only D/2
// values per token are kept.
func (r rope) cosSin(pos [3][]int64, n int, cos, sin []float32) {
	half := len(r.invFreq)
	for t := range n {
		c, s := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
		for i, inv := range r.invFreq {
			// float32 product of the float32 position and frequency, as
			// the reference's float32 matmul with an inner dimension of 1.
			angle := float32(pos[r.row[i]][t]) * inv
			c[i] = float32(math.Cos(float64(angle)))
			s[i] = float32(math.Sin(float64(angle)))
		}
	}
}

// apply rotates one head vector x (length D) in place:
// x*cos + rotate_half(x)*sin with rotate_half(x) = (-x[D/2:], x[:D/2]).
func (r rope) apply(x, cos, sin []float32) {
	half := len(cos)
	lo, hi := x[:half], x[half:2*half]
	sin = sin[:half]
	for i, c := range cos {
		a, b := lo[i], hi[i]
		lo[i] = a*c - b*sin[i]
		hi[i] = b*c + a*sin[i]
	}
}
