package model

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// randFloats returns n deterministic uniforms in [-1, 1).
func randFloats(n int, seed uint64) []float32 {
	out := make([]float32, n)
	s := splitmix(seed)
	for i := range out {
		s += 0x9e3779b97f4a7c15
		out[i] = float32(mix64(s)>>40)*(2.0/(1<<24)) - 1
	}
	return out
}

// mixedPositions returns the rows of text, an image grid and text again, so
// that the three rows differ and the interleave matters.
func mixedPositions(before, t, h, w, after int) [3][]int64 {
	pos := TextPositions(0, before)
	img, next := ImagePositions(int64(before), t, h, w)
	pos = AppendPositions(pos, img)
	return AppendPositions(pos, TextPositions(next, after))
}

// slicePositions returns tokens [i, j) of pos.
func slicePositions(pos [3][]int64, i, j int) [3][]int64 {
	return [3][]int64{pos[0][i:j], pos[1][i:j], pos[2][i:j]}
}

// stEntry is a tensor to write into a test safetensors file.
type stEntry struct {
	dtype string
	shape []int
	data  []byte
}

func f32Entry(shape []int, v []float32) stEntry {
	b := make([]byte, 4*len(v))
	F32.Encode(b, v)
	return stEntry{"F32", shape, b}
}

func i64Entry(shape []int, v []int64) stEntry {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return stEntry{"I64", shape, b}
}

// encodeSafetensors builds a safetensors file from tensors and metadata.
func encodeSafetensors(t testing.TB, meta map[string]string, tensors map[string]stEntry) []byte {
	t.Helper()
	header := map[string]any{}
	if meta != nil {
		header["__metadata__"] = meta
	}
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	slices.Sort(names)
	var body []byte
	for _, n := range names {
		e := tensors[n]
		header[n] = map[string]any{
			"dtype":        e.dtype,
			"shape":        e.shape,
			"data_offsets": []int{len(body), len(body) + len(e.data)},
		}
		body = append(body, e.data...)
	}
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(out, h...)
	return append(out, body...)
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// tinyConfig is a small geometry for synthetic fixtures and unit tests.
var tinyConfig = Config{
	HiddenSize: 16, NumHeads: 4, NumKVHeads: 2, HeadDim: 8, NumLayers: 1,
	RopeTheta: 1e4, MRopeSection: [3]int{2, 1, 1}, RMSNormEps: 1e-6,
}

// syntheticFixture returns the tensors and metadata of a small fixture whose
// references are this package's own outputs: a well-formed file to break in
// the error tests and to seed the fuzzer.
func syntheticFixture(t testing.TB) (map[string]string, map[string]stEntry) {
	t.Helper()
	cfg := tinyConfig
	w := RandomWeights(cfg, 0, 42)
	att, err := NewAttention(cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	const S, steps = 5, 2
	hd, d := cfg.HiddenSize, cfg.HeadDim
	pos := mixedPositions(1, 1, 2, 2, 0)
	kv := NewPagedKV(cfg, F32, 4)
	if err := kv.Grow(S + steps); err != nil {
		t.Fatal(err)
	}
	x := randFloats(S*hd, 1)
	out := make([]float32, S*hd)
	if err := att.Forward(x, pos, kv, 0, out); err != nil {
		t.Fatal(err)
	}
	cos := make([]float32, S*d/2)
	sin := make([]float32, S*d/2)
	att.rope.cosSin(pos, S, cos, sin)
	full := func(h []float32) []float32 { // [S][D/2] -> [S][D] as transformers
		f := make([]float32, 0, S*d)
		for i := range S {
			f = append(f, h[i*d/2:(i+1)*d/2]...)
			f = append(f, h[i*d/2:(i+1)*d/2]...)
		}
		return f
	}
	flat := func(p [3][]int64) []int64 { return slices.Concat(p[0], p[1], p[2]) }
	ts := map[string]stEntry{
		"q_proj.weight":         f32Entry([]int{cfg.QueryDim(), hd}, w.Q),
		"k_proj.weight":         f32Entry([]int{cfg.KVDim(), hd}, w.K),
		"v_proj.weight":         f32Entry([]int{cfg.KVDim(), hd}, w.V),
		"o_proj.weight":         f32Entry([]int{hd, cfg.QueryDim()}, w.O),
		"q_norm.weight":         f32Entry([]int{d}, w.QNorm),
		"k_norm.weight":         f32Entry([]int{d}, w.KNorm),
		"prefill.hidden_states": f32Entry([]int{1, S, hd}, x),
		"prefill.position_ids":  i64Entry([]int{3, S}, flat(pos)),
		"prefill.output":        f32Entry([]int{1, S, hd}, out),
		"prefill.cos":           f32Entry([]int{1, S, d}, full(cos)),
		"prefill.sin":           f32Entry([]int{1, S, d}, full(sin)),
	}
	for i := range steps {
		x := randFloats(hd, uint64(10+i))
		p := TextPositions(int64(3+i), 1)
		o := make([]float32, hd)
		if err := att.Forward(x, p, kv, S+i, o); err != nil {
			t.Fatal(err)
		}
		pre := "decode." + string(rune('0'+i))
		ts[pre+".hidden_states"] = f32Entry([]int{1, 1, hd}, x)
		ts[pre+".position_ids"] = i64Entry([]int{3, 1}, flat(p))
		ts[pre+".output"] = f32Entry([]int{1, 1, hd}, o)
	}
	k, v, err := kv.Gather(S + steps)
	if err != nil {
		t.Fatal(err)
	}
	ts["cache.keys"] = f32Entry([]int{1, cfg.NumKVHeads, S + steps, d}, k)
	ts["cache.values"] = f32Entry([]int{1, cfg.NumKVHeads, S + steps, d}, v)
	meta, err := json.Marshal(map[string]any{
		"hidden_size": hd, "num_attention_heads": cfg.NumHeads, "num_key_value_heads": cfg.NumKVHeads,
		"head_dim": d, "rope_theta": cfg.RopeTheta, "mrope_section": cfg.MRopeSection[:],
		"mrope_interleaved": true, "rms_norm_eps": cfg.RMSNormEps, "prefill_tokens": S,
		"decode_steps": steps, "scaling": 1 / math.Sqrt(float64(d)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"meta": string(meta)}, ts
}

// naiveAttention is an independent float64 reference of the layer over a
// whole sequence of n tokens (causal), written for clarity, not speed.
func naiveAttention(cfg Config, w *LayerWeights, x []float32, pos [3][]int64) []float64 {
	hd, H, KH, D := cfg.HiddenSize, cfg.NumHeads, cfg.NumKVHeads, cfg.HeadDim
	n := len(x) / hd
	lin := func(in []float32, W []float32, rows, cols int) [][]float64 {
		y := make([][]float64, n)
		for t := range n {
			y[t] = make([]float64, rows)
			for r := range rows {
				var s float64
				for c := range cols {
					s += float64(W[r*cols+c]) * float64(in[t*cols+c])
				}
				y[t][r] = s
			}
		}
		return y
	}
	q, k, v := lin(x, w.Q, H*D, hd), lin(x, w.K, KH*D, hd), lin(x, w.V, KH*D, hd)
	normRope := func(vec []float64, nw []float32, t int) {
		var ss float64
		for _, e := range vec {
			ss += e * e
		}
		r := 1 / math.Sqrt(ss/float64(D)+cfg.RMSNormEps)
		for i := range vec {
			vec[i] *= r * float64(nw[i])
		}
		half := D / 2
		rot := make([]float64, D)
		for i := range half {
			row := 0 // interleaved MRoPE, straight from the README's rule
			if i%3 == 1 && i < 3*cfg.MRopeSection[1] {
				row = 1
			} else if i%3 == 2 && i < 3*cfg.MRopeSection[2] {
				row = 2
			}
			ang := float64(pos[row][t]) * math.Pow(cfg.RopeTheta, -2*float64(i)/float64(D))
			c, s := math.Cos(ang), math.Sin(ang)
			rot[i] = vec[i]*c - vec[i+half]*s
			rot[i+half] = vec[i+half]*c + vec[i]*s
		}
		copy(vec, rot)
	}
	for t := range n {
		for h := range H {
			normRope(q[t][h*D:(h+1)*D], w.QNorm, t)
		}
		for g := range KH {
			normRope(k[t][g*D:(g+1)*D], w.KNorm, t)
		}
	}
	ctx := make([]float32, n*H*D)
	for t := range n {
		for h := range H {
			g := h / (H / KH)
			scores := make([]float64, t+1)
			mx := math.Inf(-1)
			for j := range t + 1 {
				var s float64
				for i := range D {
					s += q[t][h*D+i] * k[j][g*D+i]
				}
				scores[j] = s / math.Sqrt(float64(D))
				mx = max(mx, scores[j])
			}
			var sum float64
			for j := range scores {
				scores[j] = math.Exp(scores[j] - mx)
				sum += scores[j]
			}
			for i := range D {
				var acc float64
				for j := range scores {
					acc += scores[j] * v[j][g*D+i]
				}
				// Stored as float32 only to reuse lin; the rounding is far
				// below the tolerances used.
				ctx[(t*H+h)*D+i] = float32(acc / sum)
			}
		}
	}
	o := lin(ctx, w.O, hd, H*D)
	out := make([]float64, 0, n*hd)
	for t := range n {
		out = append(out, o[t]...)
	}
	return out
}

// relErr64 is RelErr against a float64 reference.
func relErr64(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var diff, ref float64
	for i, w := range want {
		e := float64(got[i]) - w
		diff += e * e
		ref += w * w
	}
	return math.Sqrt(diff / ref)
}
