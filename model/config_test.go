package model

import (
	"errors"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	if err := tinyConfig.Validate(); err != nil {
		t.Fatalf("tinyConfig: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		fields []string // each must appear in the message
	}{
		{"zero hidden", func(c *Config) { c.HiddenSize = 0 }, []string{"HiddenSize"}},
		{"negative heads", func(c *Config) { c.NumHeads = -4 }, []string{"NumHeads"}},
		{"zero kv heads", func(c *Config) { c.NumKVHeads = 0 }, []string{"NumKVHeads"}},
		{"zero head dim", func(c *Config) { c.HeadDim = 0 }, []string{"HeadDim"}},
		{"zero layers", func(c *Config) { c.NumLayers = 0 }, []string{"NumLayers"}},
		{"heads not multiple", func(c *Config) { c.NumKVHeads = 3 }, []string{"NumHeads", "NumKVHeads"}},
		{"odd head dim", func(c *Config) { c.HeadDim = 9; c.MRopeSection = [3]int{2, 1, 1} }, []string{"HeadDim", "even"}},
		{"section sum", func(c *Config) { c.MRopeSection = [3]int{2, 2, 1} }, []string{"MRopeSection"}},
		{"negative section", func(c *Config) { c.MRopeSection = [3]int{6, -1, -1} }, []string{"MRopeSection[1]", "MRopeSection[2]"}},
		{"zero theta", func(c *Config) { c.RopeTheta = 0 }, []string{"RopeTheta"}},
		{"NaN theta", func(c *Config) { c.RopeTheta = math.NaN() }, []string{"RopeTheta"}},
		{"negative eps", func(c *Config) { c.RMSNormEps = -1e-6 }, []string{"RMSNormEps"}},
		{"several", func(c *Config) { c.HiddenSize = 0; c.RMSNormEps = 0 }, []string{"HiddenSize", "RMSNormEps"}},
	}
	for _, c := range cases {
		cfg := tinyConfig
		c.mutate(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: got %v, want ErrInvalidConfig", c.name, err)
			continue
		}
		for _, f := range c.fields {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s: error %q does not name %s", c.name, err, f)
			}
		}
	}
}

func TestPresets(t *testing.T) {
	names := PresetNames()
	want := []string{"qwen3-vl-2b", "qwen3-vl-30b-a3b", "qwen3-vl-4b", "qwen3-vl-8b"}
	if !slices.Equal(names, want) {
		t.Errorf("PresetNames() = %v, want %v", names, want)
	}
	for _, n := range names {
		c, err := Preset(n)
		if err != nil {
			t.Fatalf("Preset(%q): %v", n, err)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("Preset(%q) invalid: %v", n, err)
		}
	}
	c, _ := Preset("Qwen3-VL-8B")
	if c.HiddenSize != 4096 || c.NumHeads != 32 || c.NumKVHeads != 8 || c.NumLayers != 36 {
		t.Errorf("qwen3-vl-8b = %+v", c)
	}
	c, _ = Preset("qwen3-vl-30b-a3b")
	if c.HiddenSize != 2048 || c.NumHeads != 32 || c.NumKVHeads != 4 || c.NumLayers != 48 {
		t.Errorf("qwen3-vl-30b-a3b = %+v", c)
	}
	_, err := Preset("qwen3-vl-1t")
	if !errors.Is(err, ErrUnknownPreset) || !strings.Contains(err.Error(), "qwen3-vl-2b") {
		t.Errorf("unknown preset: got %v, want ErrUnknownPreset listing the known names", err)
	}
}

func TestLoadHFConfig(t *testing.T) {
	got, err := LoadHFConfig("testdata/qwen3-vl-2b-config.json")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Preset("qwen3-vl-2b")
	if got != want {
		t.Errorf("LoadHFConfig = %+v\nwant the preset %+v", got, want)
	}

	write := func(body string) string { return writeFile(t, "config.json", []byte(body)) }
	ok := []struct {
		name, body string
		want       Config
	}{
		{"transformers 5 rope_parameters", `{"text_config": {"hidden_size": 2048, "num_attention_heads": 16,
			"num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 28, "rms_norm_eps": 1e-6,
			"rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": true}}}`, want},
		{"flat, defaults for kv heads and head_dim", `{"hidden_size": 256, "num_attention_heads": 8,
			"num_hidden_layers": 2, "rms_norm_eps": 1e-5, "rope_theta": 1e4,
			"rope_scaling": {"type": "mrope", "mrope_section": [6, 5, 5]}}`,
			Config{HiddenSize: 256, NumHeads: 8, NumKVHeads: 8, HeadDim: 32, NumLayers: 2, RopeTheta: 1e4, MRopeSection: [3]int{6, 5, 5}, RMSNormEps: 1e-5}},
		{"text_config falls back to top level", `{"rms_norm_eps": 1e-6, "rope_theta": 1e4, "text_config": {"hidden_size": 64,
			"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1, "rope_scaling": {"mrope_section": [4, 2, 2]}}}`,
			Config{HiddenSize: 64, NumHeads: 4, NumKVHeads: 2, HeadDim: 16, NumLayers: 1, RopeTheta: 1e4, MRopeSection: [3]int{4, 2, 2}, RMSNormEps: 1e-6}},
	}
	for _, c := range ok {
		got, err := LoadHFConfig(write(c.body))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
		} else if got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}

	const base = `"hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 8, "num_hidden_layers": 28`
	bad := []struct{ name, body, field string }{
		{"not JSON", `{"text_config": `, "unexpected end"},
		{"missing hidden_size", `{"text_config": {"num_attention_heads": 16, "num_hidden_layers": 1, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"mrope_section": [24,20,20]}}}`, "hidden_size"},
		{"missing heads", `{"hidden_size": 2048, "num_hidden_layers": 1, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"mrope_section": [24,20,20]}}`, "num_attention_heads"},
		{"missing layers", `{"hidden_size": 2048, "num_attention_heads": 16, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"mrope_section": [24,20,20]}}`, "num_hidden_layers"},
		{"missing eps", `{` + base + `, "rope_theta": 1, "rope_scaling": {"mrope_section": [24,20,20]}}`, "rms_norm_eps"},
		{"missing theta", `{` + base + `, "rms_norm_eps": 1e-6, "rope_scaling": {"mrope_section": [24,20,20]}}`, "rope_theta"},
		{"missing rope_scaling", `{` + base + `, "rms_norm_eps": 1e-6, "rope_theta": 1}`, "mrope_section"},
		{"missing mrope_section", `{` + base + `, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"rope_type": "default"}}`, "mrope_section"},
		{"short mrope_section", `{` + base + `, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"mrope_section": [64, 0]}}`, "mrope_section"},
		{"not interleaved", `{` + base + `, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"mrope_section": [16,24,24], "mrope_interleaved": false}}`, "mrope_interleaved"},
		{"yarn", `{` + base + `, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"mrope_section": [24,20,20], "rope_type": "yarn"}}`, "rope_type"},
		{"string size", `{"text_config": {"hidden_size": "2048"}}`, "hidden_size"},
		{"invalid geometry", `{` + base + `, "head_dim": 100, "rms_norm_eps": 1e-6, "rope_theta": 1, "rope_scaling": {"mrope_section": [24,20,20]}}`, "MRopeSection"},
	}
	for _, c := range bad {
		p := write(c.body)
		_, err := LoadHFConfig(p)
		if err == nil || !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: got error %v, want one naming the file and %q", c.name, err, c.field)
		}
	}
	if _, err := LoadHFConfig("testdata/no-such-config.json"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
}
