package model

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// ErrInvalidConfig is wrapped by every error that reports an inconsistent
// Config.
var ErrInvalidConfig = errors.New("invalid model config")

// Config is the text-attention geometry of a Qwen3-VL model.
type Config struct {
	HiddenSize   int
	NumHeads     int // query heads
	NumKVHeads   int
	HeadDim      int
	NumLayers    int
	RopeTheta    float64
	MRopeSection [3]int // temporal, height, width; 2*sum == HeadDim
	RMSNormEps   float64
}

// Validate reports every inconsistency of c at once, in one error that wraps
// ErrInvalidConfig and names the offending fields.
func (c Config) Validate() error {
	var bad []string
	add := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	for _, f := range []struct {
		name string
		v    int
	}{
		{"HiddenSize", c.HiddenSize},
		{"NumHeads", c.NumHeads},
		{"NumKVHeads", c.NumKVHeads},
		{"HeadDim", c.HeadDim},
		{"NumLayers", c.NumLayers},
	} {
		if f.v <= 0 {
			add("%s = %d, must be > 0", f.name, f.v)
		}
	}
	if c.NumHeads > 0 && c.NumKVHeads > 0 && c.NumHeads%c.NumKVHeads != 0 {
		add("NumHeads = %d is not a multiple of NumKVHeads = %d", c.NumHeads, c.NumKVHeads)
	}
	if c.HeadDim > 0 && c.HeadDim%2 != 0 {
		add("HeadDim = %d, must be even", c.HeadDim)
	}
	sum, negative := 0, false
	for i, s := range c.MRopeSection {
		if s < 0 {
			add("MRopeSection[%d] = %d, must be >= 0", i, s)
			negative = true
		}
		sum += s
	}
	if !negative && 2*sum != c.HeadDim {
		add("MRopeSection %v sums to %d, want HeadDim/2 = %d/2", c.MRopeSection, sum, c.HeadDim)
	}
	if !(c.RopeTheta > 0) || math.IsInf(c.RopeTheta, 0) {
		add("RopeTheta = %v, must be > 0 and finite", c.RopeTheta)
	}
	if !(c.RMSNormEps > 0) || math.IsInf(c.RMSNormEps, 0) {
		add("RMSNormEps = %v, must be > 0 and finite", c.RMSNormEps)
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(bad, "; "))
}

// QueryDim returns NumHeads*HeadDim, the width of the query projection.
func (c Config) QueryDim() int { return c.NumHeads * c.HeadDim }

// KVDim returns NumKVHeads*HeadDim, the width of the key and value projections.
func (c Config) KVDim() int { return c.NumKVHeads * c.HeadDim }
