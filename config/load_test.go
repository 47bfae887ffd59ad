package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

const minimal = `
model { preset = "qwen3-vl-2b" }
source "synthetic_chat" {}
cache {
  block_tokens = 16
  tier "host" { capacity = "1GiB" }
}
`

func TestLoadMinimal(t *testing.T) {
	f, diags := Load("p.hcl", []byte(minimal), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if *f.Model.Preset != "qwen3-vl-2b" || f.Source.Type != "synthetic_chat" || f.Cache.BlockTokens != 16 {
		t.Fatalf("decoded %+v %+v %+v", f.Model, f.Source, f.Cache)
	}
	if strings.Join(f.Stages, ",") != strings.Join(DefaultChain(), ",") {
		t.Fatalf("chain %v, want the default %v", f.Stages, DefaultChain())
	}
	if len(f.Cache.Tiers) != 1 || f.Cache.Tiers[0].Capacity != "1GiB" {
		t.Fatalf("tiers %+v", f.Cache.Tiers)
	}
}

func TestVariables(t *testing.T) {
	src := `
variable "n" { default = 16 }
variable "cap" { default = "1GiB" }
variable "name" {}
model {
  preset = var.name
  layers = var.n
}
source "synthetic_chat" {}
cache {
  block_tokens = var.n * 2
  tier "host" { capacity = var.cap }
}
`
	f, diags := Load("p.hcl", []byte(src), map[string]string{"name": "qwen3-vl-4b", "n": "8"})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if *f.Model.Preset != "qwen3-vl-4b" || *f.Model.Layers != 8 || f.Cache.BlockTokens != 16 || f.Cache.Tiers[0].Capacity != "1GiB" {
		t.Fatalf("variables not applied: preset %s layers %d block %d cap %s", *f.Model.Preset, *f.Model.Layers, f.Cache.BlockTokens, f.Cache.Tiers[0].Capacity)
	}
	if f.Values["n"] != "8" || f.Values["cap"] != "1GiB" {
		t.Fatalf("values %v", f.Values)
	}
}

// Every diagnostic the loader can give, with the place it must point at.
func TestDiagnostics(t *testing.T) {
	cases := []struct {
		name, src string
		vars      map[string]string
		summary   string
		line, col int
	}{
		{"syntax", "model {\n  preset = \n}\n", nil, "Invalid expression", 2, 12},
		{"unknown block", minimal + "\nsoftware {}\n", nil, "Unsupported block type", 9, 1},
		{"hardware attribute", minimal + "\nhardware { cores = 4 }\n", nil, "Unsupported argument", 9, 12},
		{"missing block_tokens", strings.Replace(minimal, "block_tokens = 16", "", 1), nil, "Missing block_tokens", 4, 1},
		{"missing ssd capacity", strings.Replace(minimal, `tier "host" { capacity = "1GiB" }`, `tier "host" { capacity = "1GiB" }
  tier "ssd" { path = "x" }`, 1) + "\nhardware {}\n", nil, "Missing capacity", 7, 3},
		{"unknown attribute", "model {\n  preset = \"x\"\n  colour = 1\n}\n", nil, "Unsupported argument", 3, 3},
		{"unknown top-level attribute", minimal + "speed = 3\n", nil, "Unsupported argument", 8, 1},
		{"wrong type", strings.Replace(minimal, "block_tokens = 16", `block_tokens = "many"`, 1), nil, "Unsuitable value type", 5, 19},
		{"missing capacity", strings.Replace(minimal, `capacity = "1GiB"`, "", 1), nil, "Missing capacity", 6, 3},
		{"missing model", strings.Replace(minimal, `model { preset = "qwen3-vl-2b" }`, "", 1), nil, "Missing model block", 1, 1},
		{"missing source", strings.Replace(minimal, `source "synthetic_chat" {}`, "", 1), nil, "Missing source block", 1, 1},
		{"missing cache", "model {}\nsource \"x\" {}\n", nil, "Missing cache block", 1, 1},
		{"duplicate model", minimal + "model {}\n", nil, "Duplicate model block", 8, 1},
		{"undefined variable", strings.Replace(minimal, `"qwen3-vl-2b"`, "var.nope", 1), nil, "Unsupported attribute", 2, 21},
		{"required variable unset", "variable \"x\" {}\n" + minimal, nil, "No value for required variable", 1, 1},
		{"var of wrong type", "variable \"x\" { default = 3 }\n" + minimal, map[string]string{"x": "three"}, "Invalid value for variable", 1, 1},
		{"undeclared var", minimal, map[string]string{"zzz": "1"}, "Undeclared variable", 1, 1},
		{"duplicate variable", "variable \"x\" { default = 1 }\nvariable \"x\" { default = 2 }\n" + minimal, nil, "Duplicate variable", 2, 1},
		{"unknown variable attribute", "variable \"x\" { type = string }\n" + minimal, nil, "Unsupported argument", 1, 16},
		{"duplicate stage in chain", minimal + "stages = [\"fetch\", \"attend\", \"fetch\"]\n", nil, "Duplicate stage", 8, 30},
		{"duplicate stage block", minimal + "stage \"fetch\" {}\nstage \"fetch\" {}\n", nil, "Duplicate stage block", 9, 1},
		{"stage not in chain", minimal + "stages = [\"fetch\"]\nstage \"attend\" {}\n", nil, "Stage not in the chain", 9, 1},
		{"workers", minimal + "stage \"attend\" {\n  workers = 0\n}\n", nil, "Invalid workers", 9, 13},
		{"queue", minimal + "stage \"attend\" {\n  queue = -1\n}\n", nil, "Invalid queue", 9, 11},
		{"empty stages", minimal + "stages = []\n", nil, "Empty stages", 8, 10},
		{"too many workers", minimal + "stage \"attend\" {\n  workers = 1e9\n}\n", nil, "Invalid workers", 9, 13},
		{"queue too long", minimal + "stage \"attend\" {\n  queue = 1e9\n}\n", nil, "Invalid queue", 9, 11},
		{"block_tokens too large", strings.Replace(minimal, "block_tokens = 16", "block_tokens = 1e12", 1), nil, "Invalid block_tokens", 5, 18},
		{"invalid variable name", "variable \"1x\" { default = 1 }\n" + minimal, nil, "Invalid variable name", 1, 10},
		{"block_tokens", strings.Replace(minimal, "block_tokens = 16", "block_tokens = 0", 1), nil, "Invalid block_tokens", 5, 18},
		{"no tier", "model {}\nsource \"x\" {}\ncache {\n  block_tokens = 4\n}\n", nil, "No cache tier", 3, 1},
		{"unknown tier", strings.Replace(minimal, `tier "host"`, `tier "tape"`, 1), nil, "Unknown tier", 6, 3},
		{"duplicate tier", strings.Replace(minimal, `tier "host" { capacity = "1GiB" }`, "tier \"host\" { capacity = \"1GiB\" }\n  tier \"host\" { capacity = \"1GiB\" }", 1), nil, "Duplicate tier", 7, 3},
		{"capacity", strings.Replace(minimal, `"1GiB"`, `"lots"`, 1), nil, "Invalid capacity", 6, 28},
		{"negative capacity", strings.Replace(minimal, `"1GiB"`, `"-1GiB"`, 1), nil, "Invalid capacity", 6, 28},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, diags := Load("p.hcl", []byte(c.src), c.vars)
			if !diags.HasErrors() {
				t.Fatalf("no error for\n%s", c.src)
			}
			d := find(diags, c.summary)
			if d == nil {
				t.Fatalf("no %q diagnostic in %v", c.summary, diags)
			}
			if d.Subject == nil {
				t.Fatalf("%q has no location", c.summary)
			}
			if d.Subject.Filename != "p.hcl" || d.Subject.Start.Line != c.line || d.Subject.Start.Column != c.col {
				t.Fatalf("%q at %s:%d:%d, want p.hcl:%d:%d", c.summary, d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, c.line, c.col)
			}
		})
	}
}

func find(diags hcl.Diagnostics, summary string) *hcl.Diagnostic {
	for _, d := range diags {
		if d.Summary == summary {
			return d
		}
	}
	return nil
}

func TestLoadFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.hcl")
	_, diags := LoadFile(path, nil)
	if d := find(diags, "Cannot read pipeline file"); d == nil || d.Subject.Filename != path {
		t.Fatalf("missing file: %v", diags)
	}
}

func TestLoadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.hcl")
	if err := os.WriteFile(path, []byte(minimal), 0o644); err != nil {
		t.Fatal(err)
	}
	f, diags := LoadFile(path, nil)
	if diags.HasErrors() || f.Filename != path {
		t.Fatalf("%v %v", diags, f)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "256MiB": 256 << 20, "1GB": 1e9, "1048576": 1 << 20, " 2KiB ": 2048} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "lots", "-1GiB", "0", "99999999999EiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestParseVar(t *testing.T) {
	if n, v, err := ParseVar("a=b=c"); err != nil || n != "a" || v != "b=c" {
		t.Fatalf("ParseVar: %q %q %v", n, v, err)
	}
	for _, bad := range []string{"novalue", "=x"} {
		if _, _, err := ParseVar(bad); err == nil {
			t.Errorf("ParseVar(%q) accepted", bad)
		}
	}
}

func TestLoadFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.hcl")
	if err := os.WriteFile(path, make([]byte, MaxFileSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	_, diags := LoadFile(path, nil)
	if d := find(diags, "Cannot read pipeline file"); d == nil || !strings.Contains(d.Detail, "larger than") {
		t.Fatalf("oversized file: %v", diags)
	}
}

func TestParseCapacity(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "unlimited": Unlimited, "2GiB": 2 << 30, " 0 ": 0} {
		if got, err := ParseCapacity(in); err != nil || got != want {
			t.Errorf("ParseCapacity(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1GiB", "infinite", "0B"} {
		if _, err := ParseCapacity(bad); err == nil {
			t.Errorf("ParseCapacity(%q): want an error", bad)
		}
	}
}
