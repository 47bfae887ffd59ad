package model

import (
	"encoding/json"
	"fmt"
	"os"
)

// hfTextConfig holds the fields of a Hugging Face Qwen3-VL config that matter
// to text attention. Pointers tell a missing field from a zero one.
type hfTextConfig struct {
	HiddenSize        *int     `json:"hidden_size"`
	NumAttentionHeads *int     `json:"num_attention_heads"`
	NumKeyValueHeads  *int     `json:"num_key_value_heads"`
	HeadDim           *int     `json:"head_dim"`
	NumHiddenLayers   *int     `json:"num_hidden_layers"`
	RopeTheta         *float64 `json:"rope_theta"`
	RMSNormEps        *float64 `json:"rms_norm_eps"`
	// transformers 4.x keeps mrope_section under rope_scaling; 5.x moves
	// everything rotary (rope_theta included) to rope_parameters.
	RopeScaling    *hfRope `json:"rope_scaling"`
	RopeParameters *hfRope `json:"rope_parameters"`
}

type hfRope struct {
	RopeType         *string  `json:"rope_type"`
	Type             *string  `json:"type"` // legacy spelling of rope_type
	RopeTheta        *float64 `json:"rope_theta"`
	MRopeSection     []int    `json:"mrope_section"`
	MRopeInterleaved *bool    `json:"mrope_interleaved"`
}

type hfConfig struct {
	hfTextConfig
	TextConfig *hfTextConfig `json:"text_config"`
}

// LoadHFConfig reads the text-attention geometry from a Hugging Face
// Qwen3-VL config.json. Fields are taken from "text_config", falling back to
// the top level for each field missing there. head_dim defaults to
// hidden_size/num_attention_heads and num_key_value_heads to
// num_attention_heads, as in transformers; rope_theta may also sit in
// rope_scaling or rope_parameters, where mrope_section must be. Only the
// default (unscaled) rotary with interleaved MRoPE is supported. The result is
// validated; errors name the file and the field.
func LoadHFConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	var raw hfConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	fail := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%s: "+format, append([]any{path}, args...)...)
	}
	text, top := raw.TextConfig, &raw.hfTextConfig
	if text == nil {
		text = top
	}
	layers := []*hfTextConfig{text, top}
	var rope *hfRope
	for _, c := range layers {
		if c.RopeParameters != nil {
			rope = c.RopeParameters
			break
		}
		if c.RopeScaling != nil {
			rope = c.RopeScaling
			break
		}
	}

	var cfg Config
	var ok bool
	if cfg.HiddenSize, ok = pick(layers, func(c *hfTextConfig) *int { return c.HiddenSize }); !ok {
		return fail("missing hidden_size")
	}
	if cfg.NumHeads, ok = pick(layers, func(c *hfTextConfig) *int { return c.NumAttentionHeads }); !ok {
		return fail("missing num_attention_heads")
	}
	if cfg.NumKVHeads, ok = pick(layers, func(c *hfTextConfig) *int { return c.NumKeyValueHeads }); !ok {
		cfg.NumKVHeads = cfg.NumHeads
	}
	if cfg.HeadDim, ok = pick(layers, func(c *hfTextConfig) *int { return c.HeadDim }); !ok {
		if cfg.NumHeads <= 0 || cfg.HiddenSize%cfg.NumHeads != 0 {
			return fail("missing head_dim, and hidden_size %d is not a multiple of num_attention_heads %d", cfg.HiddenSize, cfg.NumHeads)
		}
		cfg.HeadDim = cfg.HiddenSize / cfg.NumHeads
	}
	if cfg.NumLayers, ok = pick(layers, func(c *hfTextConfig) *int { return c.NumHiddenLayers }); !ok {
		return fail("missing num_hidden_layers")
	}
	if cfg.RMSNormEps, ok = pick(layers, func(c *hfTextConfig) *float64 { return c.RMSNormEps }); !ok {
		return fail("missing rms_norm_eps")
	}
	if cfg.RopeTheta, ok = pick(layers, func(c *hfTextConfig) *float64 { return c.RopeTheta }); !ok {
		if rope == nil || rope.RopeTheta == nil {
			return fail("missing rope_theta (looked in text_config, the top level, rope_parameters and rope_scaling)")
		}
		cfg.RopeTheta = *rope.RopeTheta
	}
	if rope == nil {
		return fail("missing rope_scaling.mrope_section (neither rope_scaling nor rope_parameters is present)")
	}
	if rope.MRopeSection == nil {
		return fail("missing rope_scaling.mrope_section")
	}
	if len(rope.MRopeSection) != 3 {
		return fail("rope_scaling.mrope_section %v: want 3 entries (temporal, height, width)", rope.MRopeSection)
	}
	copy(cfg.MRopeSection[:], rope.MRopeSection)
	if rope.MRopeInterleaved != nil && !*rope.MRopeInterleaved {
		return fail("rope_scaling.mrope_interleaved is false: only the interleaved MRoPE of Qwen3-VL is supported")
	}
	for _, t := range []*string{rope.RopeType, rope.Type} {
		if t != nil && *t != "default" && *t != "mrope" {
			return fail("rope_scaling.rope_type %q: only the default rotary is supported", *t)
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// pick returns the first value get finds in cs.
func pick[T any](cs []*hfTextConfig, get func(*hfTextConfig) *T) (T, bool) {
	for _, c := range cs {
		if v := get(c); v != nil {
			return *v, true
		}
	}
	var zero T
	return zero, false
}
