package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/kvflow/kvflow/hwtune"
	"github.com/kvflow/kvflow/model"
)

// hwinfoCmd prints the hardware discovery found (or a named profile holds)
// and the settings derived from it for a model.
func hwinfoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("hwinfo", stderr)
	asJSON := fs.Bool("json", false, "print JSON: {\"hardware\": ..., \"settings\": ...}")
	profile := fs.String("profile", "", "a named profile instead of this machine: "+strings.Join(hwtune.Profiles(), ", "))
	preset := fs.String("model", "qwen3-vl-8b", "the model preset settings are derived for")
	measure := fs.Bool("measure", false, "measure this machine's memory read bandwidth (about a second)")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "flow hwinfo: unexpected argument %q\n%s", pos[0], usage)
		return exitUsage
	}
	cfg, err := model.Preset(*preset)
	if err != nil {
		fmt.Fprintf(stderr, "flow hwinfo: --model %q: want one of %s\n", *preset, strings.Join(model.PresetNames(), ", "))
		return exitUsage
	}
	var h *hwtune.Hardware
	if *profile != "" {
		if h, err = hwtune.Profile(*profile); err != nil {
			fmt.Fprintf(stderr, "flow hwinfo: --profile: %v\n", err)
			return exitUsage
		}
	} else {
		s, err := hwtune.Collect(ctx, hwtune.CollectOptions{MeasureMemory: *measure})
		if err == nil {
			h, err = hwtune.Parse(s)
			if err == nil {
				h.Source = "discovered"
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "flow hwinfo: %v\n", err)
			return exitFailed
		}
	}
	s := hwtune.Derive(h, hwtune.Model{HeadDim: cfg.HeadDim, KVHeads: cfg.NumKVHeads, Layers: cfg.NumLayers, DTypeSize: model.BF16.Size()})
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			Hardware *hwtune.Hardware `json:"hardware"`
			Settings hwtune.Settings  `json:"settings"`
		}{h, s}); err != nil {
			fmt.Fprintf(stderr, "flow hwinfo: %v\n", err)
			return exitFailed
		}
		return exitOK
	}
	if err := h.WriteText(stdout, s); err != nil {
		fmt.Fprintf(stderr, "flow hwinfo: %v\n", err)
		return exitFailed
	}
	return exitOK
}
