package stages

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/kvflow/kvflow/config"
)

// tiny is a small but complete pipeline: a custom model small enough to run
// under the race detector.
const tiny = `
model {
  hidden_size   = 64
  heads         = 4
  kv_heads      = 2
  head_dim      = 16
  layers        = 2
  rope_theta    = 10000
  mrope_section = [4, 2, 2]
  seed          = 3
}
source "synthetic_chat" {
  sessions        = 3
  turns           = 3
  system_tokens   = 40
  user_tokens     = 12
  response_tokens = 5
  image_every     = 2
  image_grid      = [1, 2, 3]
  prefill_chunk   = 16
}
cache {
  block_tokens = 8
  dtype        = "bf16"
  tier "host" { capacity = "64MiB" }
}
`

func plan(t testing.TB, src string, vars map[string]string) (*Plan, hcl.Diagnostics) {
	t.Helper()
	f, diags := config.Load("p.hcl", []byte(src), vars)
	if diags.HasErrors() {
		return nil, diags
	}
	return Build(f, DefaultRegistry())
}

func TestBuildTiny(t *testing.T) {
	p, diags := plan(t, tiny, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if p.Model.HiddenSize != 64 || p.Model.NumLayers != 2 || p.BlockTokens != 8 || p.PrefillChunk != 16 || p.HostCapacity != 64<<20 {
		t.Fatalf("plan %+v", p)
	}
	if len(p.Stages) != 5 || p.Stages[3].Name != "attend" {
		t.Fatalf("stages %+v", p.Stages)
	}
}

func TestBuildPresetAndConfigJSON(t *testing.T) {
	src := strings.Replace(tiny, "hidden_size   = 64", `preset = "qwen3-vl-8b"
  hidden_size = 64`, 1)
	p, diags := plan(t, src, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if p.ModelName != "qwen3-vl-8b" || p.Model.HiddenSize != 64 || p.Model.NumHeads != 4 {
		t.Fatalf("explicit attributes must override the preset: %+v", p.Model)
	}
	cfg := filepath.Join(t.TempDir(), "config.json")
	json := `{"text_config": {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
	  "num_hidden_layers": 3, "rope_theta": 10000, "rms_norm_eps": 1e-6,
	  "rope_scaling": {"mrope_section": [4, 2, 2], "mrope_interleaved": true}}}`
	if err := os.WriteFile(cfg, []byte(json), 0o644); err != nil {
		t.Fatal(err)
	}
	src = strings.Replace(tiny, "hidden_size   = 64", `config_json = "`+cfg+`"`, 1)
	p, diags = plan(t, src, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if p.Model.HiddenSize != 128 || p.Model.NumLayers != 2 {
		t.Fatalf("config.json model: %+v", p.Model)
	}
}

// Every diagnostic Build can give, with the place it must point at.
func TestBuildDiagnostics(t *testing.T) {
	repl := func(old, new string) string {
		if !strings.Contains(tiny, old) {
			t.Fatalf("%q not in tiny", old)
		}
		return strings.Replace(tiny, old, new, 1)
	}
	cases := []struct {
		name, src string
		summary   string
		line, col int
	}{
		{"unknown preset", repl("hidden_size   = 64", `preset = "gpt-5"`), "Unknown model preset", 3, 12},
		{"preset and config_json", repl("hidden_size   = 64", "preset = \"qwen3-vl-2b\"\n  config_json = \"c.json\""), "Conflicting model sources", 4, 17},
		{"missing config.json", repl("hidden_size   = 64", `config_json = "/nonexistent/config.json"`), "Cannot load config.json", 3, 17},
		{"mrope entries", repl("[4, 2, 2]", "[4, 4]"), "Invalid mrope_section", 9, 19},
		{"heads do not divide", repl("kv_heads      = 2", "kv_heads      = 3"), "Heads do not divide", 5, 19},
		{"mrope vs head_dim", repl("[4, 2, 2]", "[4, 2, 1]"), "MRoPE sections do not match head_dim", 9, 19},
		{"hidden_size", repl("hidden_size   = 64", "hidden_size   = 0"), "Invalid hidden_size", 3, 19},
		{"kv_heads", repl("kv_heads      = 2", "kv_heads      = 0"), "Invalid kv_heads", 5, 19},
		{"layers", repl("layers        = 2", "layers        = 100000"), "Invalid layers", 7, 19},
		{"rope_theta", repl("rope_theta    = 10000", "rope_theta    = -1"), "Invalid rope_theta", 8, 19},
		{"rms_norm_eps", repl("seed          = 3", "rms_norm_eps = 0"), "Invalid rms_norm_eps", 10, 18},
		{"negative mrope", repl("[4, 2, 2]", "[-2, 6, 4]"), "Invalid mrope_section", 9, 19},
		{"invalid model", withModel("preset = \"qwen3-vl-2b\"\n  head_dim = 127"), "Invalid model", 2, 1},
		{"model too large", withModel("preset = \"qwen3-vl-2b\"\n  hidden_size = 65536\n  heads = 1024\n  kv_heads = 1024\n  head_dim = 1024\n  layers = 1024\n  mrope_section = [200, 156, 156]"), "Model too large for this machine", 8, 12},
		{"max_active", repl("prefill_chunk   = 16", "max_active = 0"), "Invalid max_active", 20, 16},
		{"turns", repl("turns           = 3", "turns           = 0"), "Invalid turns", 14, 21},
		{"system_tokens", repl("system_tokens   = 40", "system_tokens   = -1"), "Invalid system_tokens", 15, 21},
		{"user_tokens", repl("user_tokens     = 12", "user_tokens     = 0"), "Invalid user_tokens", 16, 21},
		{"response_tokens", repl("response_tokens = 5", "response_tokens = -5"), "Invalid response_tokens", 17, 21},
		{"image_every", repl("image_every     = 2", "image_every     = -1"), "Invalid image_every", 18, 21},
		{"too many sessions", repl("sessions        = 3", "sessions        = 1e9"), "Invalid sessions", 13, 21},
		{"too long", repl("system_tokens   = 40", "system_tokens   = 1e12"), "Invalid system_tokens", 15, 21},
		{"conversation too long", repl("turns           = 3", "turns           = 100000"), "Invalid turns", 14, 21},
		{"huge image", repl("[1, 2, 3]", "[4294967296, 4294967296, 4]"), "Invalid image_grid", 19, 21},
		{"conversations too large", strings.Replace(repl("sessions        = 3", "sessions        = 1000000"), "system_tokens   = 40", "system_tokens   = 1000", 1), "Invalid sessions", 13, 21},
		{"pool", repl(`dtype        = "bf16"`, `pool = "lots"`), "Invalid pool", 24, 10},
		{"pool below a page", repl(`dtype        = "bf16"`, `pool = "512"`), "Pool below one page", 24, 10},
		{"missing align", tiny + "stages = [\"fetch\", \"attend\", \"evict\"]\n", "Missing stage", 27, 20},
		{"missing attend", tiny + "stages = [\"fetch\", \"align\", \"evict\"]\n", "Missing stage", 27, 29},
		{"out of order", tiny + "stages = [\"fetch\", \"evict\", \"prefetch\", \"align\", \"attend\"]\n", "Stages out of order", 27, 50},
		{"dtype", repl(`dtype        = "bf16"`, `dtype        = "int3"`), "Invalid dtype", 24, 18},
		{"capacity below a page", repl(`"64MiB"`, `"512"`), "Capacity below one page", 25, 28},
		{"prefill_chunk", repl("prefill_chunk   = 16", "prefill_chunk   = 12"), "Invalid prefill_chunk", 20, 21},
		{"limit", repl("prefill_chunk   = 16", "limit = 0"), "Invalid limit", 20, 11},
		{"unknown source", repl(`source "synthetic_chat"`, `source "kafka"`), "Unknown source", 12, 1},
		{"source setting", repl("sessions        = 3", "sessions        = 0"), "Invalid sessions", 13, 21},
		{"source attribute", repl("sessions        = 3", "colour = 3"), "Unsupported argument", 13, 3},
		{"image grid", repl("[1, 2, 3]", "[1, 2]"), "Invalid image_grid", 19, 21},
		{"unknown stage", tiny + "stages = [\"fetch\", \"warp\"]\n", "Unknown stage", 27, 20},
		{"kernel", tiny + "stage \"attend\" {\n  kernel = \"magic\"\n}\n", "Invalid kernel", 28, 12},
		{"gpu tier", strings.Replace(tiny, `tier "host" { capacity = "64MiB" }`, "tier \"host\" { capacity = \"64MiB\" }\n  tier \"gpu\" { capacity = \"8GiB\" }", 1), "GPU tier unavailable", 26, 3},
		{"policy", tiny + "stage \"evict\" {\n  policy = \"random\"\n}\n", "Invalid policy", 28, 12},
		{"top_k on dense", tiny + "stage \"attend\" {\n  top_k = 4\n}\n", "Invalid top_k", 28, 11},
		{"block_sparse without top_k", tiny + "stage \"attend\" {\n  kernel = \"block_sparse\"\n}\n", "Invalid kernel", 28, 12},
		{"top_k", tiny + "stage \"attend\" {\n  kernel = \"block_sparse\"\n  top_k = 0\n}\n", "Invalid top_k", 29, 11},
		{"recent", tiny + "stage \"attend\" {\n  kernel = \"block_sparse\"\n  top_k = 4\n  recent = 0\n}\n", "Invalid recent", 30, 12},
		{"threads", tiny + "stage \"attend\" {\n  threads = 0\n}\n", "Invalid threads", 28, 13},
		{"linger", tiny + "stage \"attend\" {\n  linger = \"soon\"\n}\n", "Invalid linger", 28, 12},
		{"negative linger", tiny + "stage \"attend\" {\n  linger = \"-1ms\"\n}\n", "Invalid linger", 28, 12},
		{"router file", tiny + "stage \"attend\" {\n  kernel = \"block_sparse\"\n  top_k = 4\n  router = \"/nonexistent/router.safetensors\"\n}\n", "Invalid router", 30, 12},
		{"stage attribute", tiny + "stage \"prefetch\" {\n  depth = 4\n}\n", "Unsupported argument", 28, 3},
		{"no fetch", tiny + "stages = [\"attend\"]\n", "No fetch stage", 27, 10},
		{"fetch not first", tiny + "stages = [\"align\", \"fetch\"]\n", "fetch must come first", 27, 11},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, diags := plan(t, c.src, nil)
			var d *hcl.Diagnostic
			for _, x := range diags {
				if x.Summary == c.summary {
					d = x
				}
			}
			if d == nil {
				t.Fatalf("no %q diagnostic in %v", c.summary, diags)
			}
			if d.Subject == nil || d.Subject.Filename != "p.hcl" || d.Subject.Start.Line != c.line || d.Subject.Start.Column != c.col {
				t.Fatalf("%q at %v, want p.hcl:%d:%d", c.summary, d.Subject, c.line, c.col)
			}
		})
	}
}

// A source whose settings fail with a plain error gets a diagnostic at its
// block.
func TestBuildInvalidSettings(t *testing.T) {
	reg := DefaultRegistry()
	type settings struct {
		N int `hcl:"n,optional"`
	}
	err := RegisterSource(reg, "picky", func() settings { return settings{} }, func(s settings) (Source, error) {
		return nil, fmt.Errorf("n = %d is not prime", s.N)
	})
	if err != nil {
		t.Fatal(err)
	}
	src := "model {\n  preset = \"qwen3-vl-2b\"\n}\nsource \"picky\" {\n  n = 4\n}\ncache {\n  block_tokens = 8\n  tier \"host\" { capacity = \"1GiB\" }\n}\n"
	cf, diags := config.Load("p.hcl", []byte(src), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	_, diags = Build(cf, reg)
	if len(diags) != 1 || diags[0].Summary != "Invalid settings" || diags[0].Subject.Start.Line != 4 || !strings.Contains(diags[0].Detail, "not prime") {
		t.Fatalf("diagnostics %v", diags)
	}
}

// withModel returns tiny with its model block's body replaced.
func withModel(body string) string {
	return "\nmodel {\n  " + body + "\n}\n" + tiny[strings.Index(tiny, "source"):]
}

func TestBuildCapacityBeyondMemory(t *testing.T) {
	if availableMemory() == 0 {
		t.Skip("no /proc/meminfo: available memory unknown")
	}
	_, diags := plan(t, strings.Replace(tiny, `"64MiB"`, `"1EiB"`, 1), nil)
	if len(diags) != 1 || diags[0].Summary != "Capacity exceeds memory" || diags[0].Subject.Start.Line != 25 {
		t.Fatalf("diagnostics %v", diags)
	}
}

func TestRegistryDuplicate(t *testing.T) {
	r := DefaultRegistry()
	if err := RegisterSource(r, "synthetic_chat", DefaultChatSettings, func(s ChatSettings) (Source, error) { return NewChat(s) }); err == nil {
		t.Fatal("duplicate source accepted")
	}
	if got := strings.Join(r.Stages(), ","); got != "align,attend,evict,fetch,prefetch" {
		t.Fatalf("stages %s", got)
	}
}

// FuzzBuild checks that any file either builds or gives located diagnostics,
// never a panic.
func FuzzBuild(f *testing.F) {
	f.Add([]byte(tiny))
	f.Add([]byte(tiny + "stages = [\"fetch\", \"attend\"]\nstage \"attend\" { kernel = \"x\" }\n"))
	if paths, _ := filepath.Glob("../pipelines/*.hcl"); len(paths) > 0 {
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		p, diags := plan(t, string(src), nil)
		if diags.HasErrors() {
			for _, d := range diags {
				if d.Subject == nil {
					t.Fatalf("diagnostic without a location: %s", d.Summary)
				}
			}
			return
		}
		if p == nil || p.Source == nil || len(p.Stages) == 0 || p.Model.Validate() != nil {
			t.Fatalf("built an invalid plan: %+v", p)
		}
	})
}

func loadTiny(t *testing.T, src string) (*config.File, hcl.Diagnostics) {
	t.Helper()
	f, diags := config.Load("p.hcl", []byte(src), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f, diags
}

// withHardware returns tiny with a hardware block naming profile, and
// without block_tokens and the host tier's capacity for it to derive.
func withHardware(profile string) string {
	src := strings.Replace(tiny, "  block_tokens = 8\n", "", 1)
	src = strings.Replace(src, "  prefill_chunk   = 16\n", "", 1) // the default follows block_tokens
	src = strings.Replace(src, `tier "host" { capacity = "64MiB" }`, `tier "host" {}`, 1)
	return src + "hardware {\n  profile = \"" + profile + "\"\n}\n"
}

// A hardware block fills in what the file leaves out from the profile's
// derived settings; what the file sets wins.
func TestBuildHardwareProfile(t *testing.T) {
	p, diags := plan(t, withHardware("i5-10210u-sm61"), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := p.Derived
	if p.Hardware == nil || d == nil || p.Hardware.CPU.PhysicalCores != 4 {
		t.Fatalf("hardware %+v, derived %+v", p.Hardware, d)
	}
	if p.BlockTokens != d.BlockTokens || p.HostCapacity != prevPow2(d.HostCapacity) || p.HostCapacity*2 <= d.HostCapacity || p.PrefetchWorkers != d.PrefetchWorkers {
		t.Errorf("block_tokens %d, host capacity %d, prefetch workers %d; derived %d, %d, %d",
			p.BlockTokens, p.HostCapacity, p.PrefetchWorkers, d.BlockTokens, d.HostCapacity, d.PrefetchWorkers)
	}
	for _, s := range p.Stages {
		want := d.StageWorkers
		if s.Name == "prefetch" {
			want = d.PrefetchWorkers
		}
		if s.Options.Workers != want {
			t.Errorf("stage %s: %d workers, derived %d", s.Name, s.Options.Workers, want)
		}
	}
	if got := p.tuning(); got.Lookahead != d.Lookahead || got.AttendThreads != d.AttendThreads {
		t.Errorf("tuning %+v from %+v", got, d)
	}

	// Explicit settings win.
	src := strings.Replace(withHardware("i5-10210u-sm61"), "cache {", "cache {\n  block_tokens = 8", 1) +
		"stage \"attend\" {\n  workers = 1\n}\n"
	p, diags = plan(t, strings.Replace(src, `tier "host" {}`, `tier "host" { capacity = "64MiB" }`, 1), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if p.BlockTokens != 8 || p.HostCapacity != 64<<20 {
		t.Errorf("explicit block_tokens 8 and capacity 64MiB became %d and %d", p.BlockTokens, p.HostCapacity)
	}
	for _, s := range p.Stages {
		if s.Name == "attend" && s.Options.Workers != 1 {
			t.Errorf("explicit attend workers 1 became %d", s.Options.Workers)
		}
	}
}

// profile = "auto" discovers this machine, and the derived pipeline runs.
func TestBuildHardwareAuto(t *testing.T) {
	p, diags := plan(t, strings.Replace(withHardware("auto"), `tier "host" {}`, `tier "host" { capacity = "64MiB" }`, 1), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if p.Hardware.Source != "discovered" || p.Hardware.CPU.Threads < 1 || p.BlockTokens != p.Derived.BlockTokens {
		t.Fatalf("hardware %+v, block_tokens %d", p.Hardware, p.BlockTokens)
	}
	rep, _ := collect(t, p)
	if rep.Requests == 0 || rep.Tokens.Computed == 0 || rep.Model.BlockTokens != p.Derived.BlockTokens {
		t.Fatalf("the derived pipeline did not run: %d requests, %d tokens, pages of %d", rep.Requests, rep.Tokens.Computed, rep.Model.BlockTokens)
	}
}

func TestBuildHardwareDiagnostics(t *testing.T) {
	_, diags := plan(t, withHardware("cray-1"), nil)
	if len(diags) != 1 || diags[0].Summary != "Invalid hardware profile" || diags[0].Subject.Start.Line != 26 || diags[0].Subject.Start.Column != 13 ||
		!strings.Contains(diags[0].Detail, "i5-10210u-sm61") {
		t.Fatalf("unknown profile: %v", diags)
	}
}
