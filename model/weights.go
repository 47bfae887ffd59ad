package model

import (
	"fmt"
	"math"
)

// LayerWeights are one attention layer's parameters in float32, in
// nn.Linear layout [out][in], row-major (y = x·Wᵀ).
type LayerWeights struct {
	Q, K, V, O   []float32 // [H*D][hidden], [KH*D][hidden], [KH*D][hidden], [hidden][H*D]
	QNorm, KNorm []float32 // [D]
}

// check reports the first tensor whose length does not fit cfg.
func (w *LayerWeights) check(cfg Config) error {
	if w == nil {
		return fmt.Errorf("nil LayerWeights")
	}
	hd, qd, kd, d := cfg.HiddenSize, cfg.QueryDim(), cfg.KVDim(), cfg.HeadDim
	for _, t := range []struct {
		name      string
		got       []float32
		rows, col int
	}{
		{"q_proj.weight", w.Q, qd, hd},
		{"k_proj.weight", w.K, kd, hd},
		{"v_proj.weight", w.V, kd, hd},
		{"o_proj.weight", w.O, hd, qd},
		{"q_norm.weight", w.QNorm, d, 1},
		{"k_norm.weight", w.KNorm, d, 1},
	} {
		if len(t.got) != t.rows*t.col {
			shape := fmt.Sprintf("[%d, %d]", t.rows, t.col)
			if t.col == 1 {
				shape = fmt.Sprintf("[%d]", t.rows)
			}
			return fmt.Errorf("%s: want %s = %d floats, got %d", t.name, shape, t.rows*t.col, len(t.got))
		}
	}
	return nil
}

// RandomWeights returns weights for cfg that depend only on (cfg, layer,
// seed). Projection entries are uniform with standard deviation
// 1/sqrt(fan_in), which keeps activations of order one; norm weights are
// uniform in [0.9, 1.1]. Generation is a few nanoseconds per value, so even
// a large preset layer takes tens of milliseconds.
func RandomWeights(cfg Config, layer int, seed uint64) *LayerWeights {
	hd, qd, kd, d := cfg.HiddenSize, cfg.QueryDim(), cfg.KVDim(), cfg.HeadDim
	// Each tensor has its own stream so that its values do not depend on
	// the sizes of the others.
	base := splitmix(seed ^ splitmix(uint64(layer)+0x9e3779b97f4a7c15))
	gen := func(tensor uint64, n int, center, halfWidth float32) []float32 {
		out := make([]float32, max(n, 0)) // an invalid cfg yields weights NewAttention rejects
		fillUniform(out, splitmix(base+tensor), center, halfWidth)
		return out
	}
	// A uniform on [-a, a] has standard deviation a/sqrt(3).
	proj := func(fanIn int) float32 { return float32(math.Sqrt(3 / float64(max(fanIn, 1)))) }
	return &LayerWeights{
		Q:     gen(1, qd*hd, 0, proj(hd)),
		K:     gen(2, kd*hd, 0, proj(hd)),
		V:     gen(3, kd*hd, 0, proj(hd)),
		O:     gen(4, hd*qd, 0, proj(qd)),
		QNorm: gen(5, d, 1, 0.1),
		KNorm: gen(6, d, 1, 0.1),
	}
}

// fillUniform fills out with center + halfWidth*u, u uniform in [-1, 1),
// taking two 24-bit draws from each 64-bit SplitMix64 output.
func fillUniform(out []float32, state uint64, center, halfWidth float32) {
	const unit = 2.0 / (1 << 24)
	i := 0
	for ; i+2 <= len(out); i += 2 {
		state += 0x9e3779b97f4a7c15
		r := mix64(state)
		o := out[i : i+2 : i+2]
		o[0] = center + halfWidth*(float32(r>>40)*unit-1)
		o[1] = center + halfWidth*(float32(r&0xffffff)*unit-1)
	}
	if i < len(out) {
		r := mix64(state + 0x9e3779b97f4a7c15)
		out[i] = center + halfWidth*(float32(r>>40)*unit-1)
	}
}

// splitmix is one step of the SplitMix64 generator, used to derive
// independent seeds.
func splitmix(x uint64) uint64 { return mix64(x + 0x9e3779b97f4a7c15) }

// mix64 is the SplitMix64 output function (a strong 64-bit bijection).
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
