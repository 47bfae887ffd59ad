//go:build cuda

package stages

import (
	"strings"
	"testing"
)

// gpuTiny is tiny with a head_dim the GPU kernel takes and a gpu tier.
func gpuTiny() string {
	src := strings.Replace(tiny, "hidden_size   = 64", "hidden_size   = 128", 1)
	src = strings.Replace(src, "head_dim      = 16", "head_dim      = 32", 1)
	src = strings.Replace(src, "mrope_section = [4, 2, 2]", "mrope_section = [8, 4, 4]", 1)
	return strings.Replace(src, `tier "host" { capacity = "64MiB" }`, "tier \"host\" { capacity = \"64MiB\" }\n  tier \"gpu\" { capacity = \"64MiB\" }", 1)
}

// With a gpu tier, decode steps attend on the GPU over pages the device
// tier caches: every output still equals a from-scratch CPU pass, and the
// tier served pages.
func TestRunGPUTier(t *testing.T) {
	p, diags := plan(t, gpuTiny(), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if p.GPUCapacity != 64<<20 {
		t.Fatalf("gpu capacity %d", p.GPUCapacity)
	}
	rep, steps := collect(t, p)
	if checkOutputs(t, p, steps) == 0 {
		t.Fatal("no step computed over a cached prefix")
	}
	var found bool
	for _, tier := range rep.Tiers {
		if tier.Name == "gpu" {
			found = true
			if tier.Misses == 0 || tier.Hits == 0 || tier.Pages == 0 {
				t.Errorf("gpu tier %+v: want pages promoted (misses), reused (hits) and kept", tier)
			}
			t.Logf("gpu tier: %d pages, %d hits, %d misses", tier.Pages, tier.Hits, tier.Misses)
		}
	}
	if !found {
		t.Fatalf("no gpu tier in the report: %+v", rep.Tiers)
	}
}
