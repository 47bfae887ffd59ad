package model

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strings"
)

// Fixture is a reference case produced by transformers and stored as
// safetensors (see testdata/README.md): one layer's weights, a prefill of S
// tokens, some single-token decode steps, and the cache after the last step.
type Fixture struct {
	Name    string // file name without extension
	Config  Config // NumLayers is 1
	Weights *LayerWeights
	Meta    map[string]any // the JSON metadata stored in the file

	Prefill    FixtureStep
	PrefillCos []float32 // [S][D]: the rotary cos transformers produced for the prefill
	PrefillSin []float32 // [S][D]
	Decode     []FixtureStep

	// CacheK and CacheV are the cache after the last decode step, laid out
	// [KVHeads][S+len(Decode)][HeadDim]; keys after k_norm and rotary.
	CacheK, CacheV []float32
}

// FixtureStep is one Forward call of a fixture and its expected output.
type FixtureStep struct {
	Hidden []float32  // [tokens][HiddenSize]
	Pos    [3][]int64 // temporal, height and width positions, each [tokens]
	Output []float32  // [tokens][HiddenSize], reference output of the layer
}

// Tokens returns the number of tokens of the step.
func (s FixtureStep) Tokens() int { return len(s.Pos[0]) }

// fixtureMeta is the part of the metadata that fixes the geometry.
type fixtureMeta struct {
	HiddenSize       *int     `json:"hidden_size"`
	NumHeads         *int     `json:"num_attention_heads"`
	NumKVHeads       *int     `json:"num_key_value_heads"`
	HeadDim          *int     `json:"head_dim"`
	RopeTheta        *float64 `json:"rope_theta"`
	MRopeSection     []int    `json:"mrope_section"`
	MRopeInterleaved *bool    `json:"mrope_interleaved"`
	RMSNormEps       *float64 `json:"rms_norm_eps"`
	PrefillTokens    *int     `json:"prefill_tokens"`
	DecodeSteps      *int     `json:"decode_steps"`
	Scaling          *float64 `json:"scaling"`
}

// LoadFixture reads a fixture. It checks every tensor's presence and shape
// against the geometry in the file's metadata and reports the first problem
// as an error naming the tensor; it never panics, whatever the file holds.
func LoadFixture(path string) (*Fixture, error) {
	st, err := readSafetensors(path)
	if err != nil {
		return nil, fmt.Errorf("fixture: %w", err)
	}
	f, err := fixtureFrom(st)
	if err != nil {
		return nil, fmt.Errorf("fixture %s: %w", path, err)
	}
	f.Name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	return f, nil
}

func fixtureFrom(st *stFile) (*Fixture, error) {
	metaJSON, ok := st.Meta["meta"]
	if !ok {
		return nil, fmt.Errorf("no __metadata__.meta in the header")
	}
	var meta fixtureMeta
	if err := json.Unmarshal([]byte(metaJSON), &meta); err != nil {
		return nil, fmt.Errorf("__metadata__.meta: %w", err)
	}
	f := &Fixture{}
	if err := json.Unmarshal([]byte(metaJSON), &f.Meta); err != nil {
		return nil, fmt.Errorf("__metadata__.meta: %w", err)
	}
	for _, m := range []struct {
		name string
		ok   bool
	}{
		{"hidden_size", meta.HiddenSize != nil},
		{"num_attention_heads", meta.NumHeads != nil},
		{"num_key_value_heads", meta.NumKVHeads != nil},
		{"head_dim", meta.HeadDim != nil},
		{"rope_theta", meta.RopeTheta != nil},
		{"mrope_section", meta.MRopeSection != nil},
		{"rms_norm_eps", meta.RMSNormEps != nil},
	} {
		if !m.ok {
			return nil, fmt.Errorf("metadata: missing %s", m.name)
		}
	}
	if len(meta.MRopeSection) != 3 {
		return nil, fmt.Errorf("metadata: mrope_section %v, want 3 entries", meta.MRopeSection)
	}
	if meta.MRopeInterleaved != nil && !*meta.MRopeInterleaved {
		return nil, fmt.Errorf("metadata: mrope_interleaved is false; only interleaved MRoPE is supported")
	}
	cfg := Config{
		HiddenSize:   *meta.HiddenSize,
		NumHeads:     *meta.NumHeads,
		NumKVHeads:   *meta.NumKVHeads,
		HeadDim:      *meta.HeadDim,
		NumLayers:    1,
		RopeTheta:    *meta.RopeTheta,
		MRopeSection: [3]int(meta.MRopeSection),
		RMSNormEps:   *meta.RMSNormEps,
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	// Tensor sizes come from the header; bound the geometry so that the
	// products below cannot overflow before shapes are compared.
	const limit = 1 << 20
	if cfg.HiddenSize > limit || cfg.NumHeads > limit || cfg.HeadDim > limit {
		return nil, fmt.Errorf("metadata: implausible geometry %+v", cfg)
	}
	if meta.Scaling != nil {
		if want := 1 / math.Sqrt(float64(cfg.HeadDim)); math.Abs(*meta.Scaling-want) > 1e-9*want {
			return nil, fmt.Errorf("metadata: scaling %v, want head_dim^-0.5 = %v", *meta.Scaling, want)
		}
	}
	f.Config = cfg
	hd, qd, kd, d := cfg.HiddenSize, cfg.QueryDim(), cfg.KVDim(), cfg.HeadDim

	var errs []error
	floats := func(name string, shape ...int) []float32 {
		v, err := st.floats(name, shape...)
		if err != nil {
			errs = append(errs, err)
		}
		return v
	}
	f.Weights = &LayerWeights{
		Q:     floats("q_proj.weight", qd, hd),
		K:     floats("k_proj.weight", kd, hd),
		V:     floats("v_proj.weight", kd, hd),
		O:     floats("o_proj.weight", hd, qd),
		QNorm: floats("q_norm.weight", d),
		KNorm: floats("k_norm.weight", d),
	}
	if len(errs) > 0 {
		return nil, errs[0]
	}

	hs, ok := st.Tensors["prefill.hidden_states"]
	if !ok {
		return nil, fmt.Errorf("missing tensor %q", "prefill.hidden_states")
	}
	if len(hs.Shape) != 3 || hs.Shape[0] != 1 || hs.Shape[2] != hd {
		return nil, fmt.Errorf("tensor %q: shape %v, want [1, S, %d]", "prefill.hidden_states", hs.Shape, hd)
	}
	S := hs.Shape[1]
	if meta.PrefillTokens != nil && *meta.PrefillTokens != S {
		return nil, fmt.Errorf("tensor %q: %d tokens, metadata prefill_tokens %d", "prefill.hidden_states", S, *meta.PrefillTokens)
	}
	step := func(prefix string, tokens int) FixtureStep {
		s := FixtureStep{
			Hidden: floats(prefix+".hidden_states", 1, tokens, hd),
			Output: floats(prefix+".output", 1, tokens, hd),
		}
		p, err := st.ints(prefix+".position_ids", 3, tokens)
		if err != nil {
			errs = append(errs, err)
			return s
		}
		for r := range 3 {
			s.Pos[r] = p[r*tokens : (r+1)*tokens]
		}
		return s
	}
	f.Prefill = step("prefill", S)
	f.PrefillCos = floats("prefill.cos", 1, S, d)
	f.PrefillSin = floats("prefill.sin", 1, S, d)
	for i := 0; ; i++ {
		prefix := fmt.Sprintf("decode.%d", i)
		if _, ok := st.Tensors[prefix+".hidden_states"]; !ok {
			break
		}
		f.Decode = append(f.Decode, step(prefix, 1))
		if len(errs) > 0 {
			break
		}
	}
	if len(errs) > 0 {
		return nil, errs[0]
	}
	if meta.DecodeSteps != nil && *meta.DecodeSteps != len(f.Decode) {
		return nil, fmt.Errorf("found %d decode steps, metadata decode_steps %d", len(f.Decode), *meta.DecodeSteps)
	}
	total := S + len(f.Decode)
	f.CacheK = floats("cache.keys", 1, cfg.NumKVHeads, total, d)
	f.CacheV = floats("cache.values", 1, cfg.NumKVHeads, total, d)
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return f, nil
}

// VerifyResult reports, per part of a fixture, the relative error
// ‖out−ref‖/‖ref‖ (Euclidean norms over the whole part).
type VerifyResult struct {
	Name           string
	DType          DType
	BlockTokens    int
	Prefill        float64
	Decode         []float64 // per decode step
	CacheK, CacheV float64
	Max            float64 // the largest of all the above
	// Out holds the outputs, the prefill's then each decode step's.
	Out []float32
}

func (r *VerifyResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%v pages of %d): prefill %.3g, decode [", r.Name, r.DType, r.BlockTokens, r.Prefill)
	for i, e := range r.Decode {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%.3g", e)
	}
	fmt.Fprintf(&b, "], cache K %.3g V %.3g, max %.3g", r.CacheK, r.CacheV, r.Max)
	return b.String()
}

// Verify runs the fixture through NewAttention and Forward with a PagedKV of
// the given page dtype and block size, the prefill as one Forward call over
// all its tokens and then one call per decode step, and compares the outputs
// and the final cache with the references.
func (f *Fixture) Verify(dtype DType, blockTokens int) (*VerifyResult, error) {
	return f.VerifyWith(dtype, blockTokens, Options{})
}

// VerifyWith is Verify with the attention kernel opts choose.
func (f *Fixture) VerifyWith(dtype DType, blockTokens int, opts Options) (*VerifyResult, error) {
	att, err := NewAttentionWith(f.Config, f.Weights, opts)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", f.Name, err)
	}
	return f.verify(att, dtype, blockTokens)
}

// VerifyAttender is Verify with attention computed by at (built for the
// fixture's Config), a GPU kernel for instance.
func (f *Fixture) VerifyAttender(dtype DType, blockTokens int, at Attender) (*VerifyResult, error) {
	att, err := NewAttention(f.Config, f.Weights)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", f.Name, err)
	}
	return f.verify(att.WithAttender(at), dtype, blockTokens)
}

func (f *Fixture) verify(att *Attention, dtype DType, blockTokens int) (*VerifyResult, error) {
	kv := NewPagedKV(f.Config, dtype, blockTokens)
	S := f.Prefill.Tokens()
	total := S + len(f.Decode)
	if err := kv.Grow(total); err != nil {
		return nil, fmt.Errorf("verify %s: %w", f.Name, err)
	}
	res := &VerifyResult{Name: f.Name, DType: dtype, BlockTokens: blockTokens}
	out := make([]float32, S*f.Config.HiddenSize)
	if err := att.Forward(f.Prefill.Hidden, f.Prefill.Pos, kv, 0, out); err != nil {
		return nil, fmt.Errorf("verify %s: prefill: %w", f.Name, err)
	}
	res.Prefill = RelErr(out, f.Prefill.Output)
	res.Max = res.Prefill
	res.Out = append(res.Out, out...)
	for i, st := range f.Decode {
		out := out[:f.Config.HiddenSize]
		if err := att.Forward(st.Hidden, st.Pos, kv, S+i, out); err != nil {
			return nil, fmt.Errorf("verify %s: decode step %d: %w", f.Name, i, err)
		}
		res.Out = append(res.Out, out...)
		e := RelErr(out, st.Output)
		res.Decode = append(res.Decode, e)
		res.Max = max(res.Max, e)
	}
	k, v, err := kv.Gather(total)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", f.Name, err)
	}
	res.CacheK = RelErr(k, f.CacheK)
	res.CacheV = RelErr(v, f.CacheV)
	res.Max = max(res.Max, res.CacheK, res.CacheV)
	return res, nil
}

// RelErr returns ‖got−want‖/‖want‖ computed in float64, or +Inf if the
// lengths differ. A zero reference gives ‖got‖ (an absolute error).
func RelErr(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var diff, ref float64
	for i, w := range want {
		e := float64(got[i]) - float64(w)
		diff += e * e
		ref += float64(w) * float64(w)
	}
	if ref == 0 {
		return math.Sqrt(diff)
	}
	return math.Sqrt(diff / ref)
}
