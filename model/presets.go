package model

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrUnknownPreset is wrapped by the error Preset returns for a name it does
// not know.
var ErrUnknownPreset = errors.New("unknown model preset")

// presets are the text configs of the published Qwen3-VL checkpoints on
// Hugging Face (text_config of each config.json). All share head_dim 128,
// rope_theta 5e6, interleaved mrope_section [24, 20, 20] and rms_norm_eps 1e-6.
var presets = map[string]Config{
	"qwen3-vl-2b":      qwen3VL(2048, 16, 8, 28),
	"qwen3-vl-4b":      qwen3VL(2560, 32, 8, 36),
	"qwen3-vl-8b":      qwen3VL(4096, 32, 8, 36),
	"qwen3-vl-30b-a3b": qwen3VL(2048, 32, 4, 48),
}

func qwen3VL(hidden, heads, kvHeads, layers int) Config {
	return Config{
		HiddenSize:   hidden,
		NumHeads:     heads,
		NumKVHeads:   kvHeads,
		HeadDim:      128,
		NumLayers:    layers,
		RopeTheta:    5e6,
		MRopeSection: [3]int{24, 20, 20},
		RMSNormEps:   1e-6,
	}
}

// Preset returns the attention geometry of a published Qwen3-VL model by
// name (see PresetNames). Names are matched case-insensitively.
func Preset(name string) (Config, error) {
	if c, ok := presets[strings.ToLower(strings.TrimSpace(name))]; ok {
		return c, nil
	}
	return Config{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownPreset, name, strings.Join(PresetNames(), ", "))
}

// PresetNames returns the names Preset accepts, sorted.
func PresetNames() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
