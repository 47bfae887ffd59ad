package stages

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/dustin/go-humanize"
	"github.com/hashicorp/hcl/v2"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/gpu"
	"github.com/kvflow/kvflow/hwtune"
	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/pipeline"
	"github.com/kvflow/kvflow/storage"
)

// Plan is a validated pipeline, ready to run. Building it checks everything
// a file can get wrong without allocating the model or the cache.
type Plan struct {
	File *config.File
	// Model is the resolved model geometry; Model.NumLayers layers run.
	Model model.Config
	// ModelName is the preset or config.json the model came from, or
	// "custom".
	ModelName    string
	Seed         uint64
	DType        model.DType
	BlockTokens  int
	PrefillChunk int
	Limit        int
	// MaxActive is the number of requests whose steps are interleaved.
	MaxActive int
	// HostCapacity is the host tier's capacity in bytes: 0 when the file
	// disables it, storage.Unlimited when it has no bound.
	HostCapacity int64
	// PoolBytes is the size of the working pool's arena.
	PoolBytes int64
	// Metadata is set by payload = "metadata": pages are keys and sizes,
	// a block's layers move as one page, and nothing is computed.
	Metadata bool
	// SSD is the ssd tier, nil when the cache has none.
	SSD *SSDPlan
	// GPUCapacity is the gpu tier's capacity in bytes (the `cuda` build on
	// a machine with a GPU only); 0 without one.
	GPUCapacity int64
	// PrefetchWorkers is the number of page loads from the ssd tier run at
	// once: the prefetch stage's workers, or DefaultPrefetchWorkers.
	PrefetchWorkers int
	Source          Source
	Stages          []PlannedStage
	// Hardware is what the file's hardware block found (or the profile
	// it names), and Derived the settings derived from it; nil without a
	// hardware block. Settings the file sets explicitly win over Derived.
	Hardware *hwtune.Hardware
	Derived  *hwtune.Settings
}

// SSDPlan is the ssd tier of a plan.
type SSDPlan struct {
	Path     string
	Capacity int64
	Write    storage.WritePolicy
	Sync     bool
	MinFree  int64 // storage.SSDOptions.MinFree: 0 its default, < 0 no check
}

// DefaultPrefetchWorkers is the number of concurrent loads from the ssd tier
// when the prefetch stage sets no workers: loads wait on the disk, not the
// CPU, so even a 2-core machine runs several.
const DefaultPrefetchWorkers = 4

// PlannedStage is one stage of the chain, decoded but not yet constructed.
type PlannedStage struct {
	Name    string
	Options pipeline.Options
	build   func(*Env) (pipeline.Stage[*Step, *Step], error)
}

// Build checks a file decoded by config.Load or config.LoadFile against the
// registry and returns its plan. All problems come back as diagnostics that
// point into the file.
func Build(f *config.File, reg *Registry) (*Plan, hcl.Diagnostics) {
	p := &Plan{File: f}
	var diags hcl.Diagnostics
	if s := f.Source; s != nil && s.Payload != nil {
		switch *s.Payload {
		case "full":
		case "metadata":
			p.Metadata = true
		default:
			return nil, hcl.Diagnostics{config.ErrorAt(config.AttrRange(s.Body, "payload", s.DeclRange), "Invalid payload",
				fmt.Sprintf(`payload = %q: want "full" (pages hold bytes) or "metadata" (keys and sizes only).`, *s.Payload))}
		}
	}
	diags = append(diags, p.model(f.Model)...)
	if f.Hardware != nil && !diags.HasErrors() {
		diags = append(diags, p.hardware(f)...)
	}
	diags = append(diags, p.cache(f.Cache)...)
	diags = append(diags, p.source(f, reg)...)
	diags = append(diags, p.stages(f, reg)...)
	if diags.HasErrors() {
		return nil, diags
	}
	return p, diags
}

func (p *Plan) model(m *config.Model) hcl.Diagnostics {
	at := m.DeclRange
	attr := func(name string) hcl.Range { return config.AttrRange(m.Body, name, at) }
	var cfg model.Config
	switch {
	case m.Preset != nil && m.ConfigJSON != nil:
		return hcl.Diagnostics{config.ErrorAt(attr("config_json"), "Conflicting model sources", "Set preset or config_json, not both.")}
	case m.Preset != nil:
		c, err := model.Preset(*m.Preset)
		if err != nil {
			return hcl.Diagnostics{config.ErrorAt(attr("preset"), "Unknown model preset",
				fmt.Sprintf("%q is not a preset; known presets: %s.", *m.Preset, strings.Join(model.PresetNames(), ", ")))}
		}
		cfg, p.ModelName = c, *m.Preset
	case m.ConfigJSON != nil:
		// Relative paths are relative to the working directory, as in Terraform.
		path := filepath.Clean(*m.ConfigJSON)
		c, err := model.LoadHFConfig(path)
		if err != nil {
			return hcl.Diagnostics{config.ErrorAt(attr("config_json"), "Cannot load config.json", err.Error()+".")}
		}
		cfg, p.ModelName = c, path
	default:
		p.ModelName = "custom"
		cfg = model.Config{RopeTheta: 1e6, RMSNormEps: 1e-6, NumLayers: 1}
	}
	setInt := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	setInt(&cfg.HiddenSize, m.HiddenSize)
	setInt(&cfg.NumHeads, m.Heads)
	setInt(&cfg.NumKVHeads, m.KVHeads)
	setInt(&cfg.HeadDim, m.HeadDim)
	setInt(&cfg.NumLayers, m.Layers)
	if m.RopeTheta != nil {
		cfg.RopeTheta = *m.RopeTheta
	}
	if m.RMSNormEps != nil {
		cfg.RMSNormEps = *m.RMSNormEps
	}
	if m.MRopeSection != nil {
		if len(m.MRopeSection) != 3 {
			return hcl.Diagnostics{config.ErrorAt(attr("mrope_section"), "Invalid mrope_section",
				fmt.Sprintf("mrope_section has %d entries; want three: [temporal, height, width].", len(m.MRopeSection)))}
		}
		copy(cfg.MRopeSection[:], m.MRopeSection)
	}
	if m.Seed != nil {
		p.Seed = uint64(*m.Seed)
	}
	// Bounds first, each at its attribute, so that nothing below overflows
	// and no typo asks for more memory than a machine has.
	for _, b := range []struct {
		name     string
		v, hi    int
		explicit bool
	}{
		{"hidden_size", cfg.HiddenSize, maxHidden, m.HiddenSize != nil},
		{"heads", cfg.NumHeads, maxHeads, m.Heads != nil},
		{"kv_heads", cfg.NumKVHeads, maxHeads, m.KVHeads != nil},
		{"head_dim", cfg.HeadDim, maxHeadDim, m.HeadDim != nil},
		{"layers", cfg.NumLayers, maxLayers, m.Layers != nil},
	} {
		if b.v < 1 || b.v > b.hi {
			r := at
			if b.explicit {
				r = attr(b.name)
			}
			return hcl.Diagnostics{config.ErrorAt(r, "Invalid "+b.name,
				fmt.Sprintf("%s = %d: must be between 1 and %d.", b.name, b.v, b.hi))}
		}
	}
	for i, sec := range cfg.MRopeSection {
		if sec < 0 {
			return hcl.Diagnostics{config.ErrorAt(attr("mrope_section"), "Invalid mrope_section",
				fmt.Sprintf("mrope_section[%d] = %d: must not be negative.", i, sec))}
		}
	}
	if !(cfg.RopeTheta > 0) || math.IsInf(cfg.RopeTheta, 0) {
		return hcl.Diagnostics{config.ErrorAt(attr("rope_theta"), "Invalid rope_theta", fmt.Sprintf("rope_theta = %g: must be positive.", cfg.RopeTheta))}
	}
	if !(cfg.RMSNormEps > 0) || math.IsInf(cfg.RMSNormEps, 0) {
		return hcl.Diagnostics{config.ErrorAt(attr("rms_norm_eps"), "Invalid rms_norm_eps", fmt.Sprintf("rms_norm_eps = %g: must be positive.", cfg.RMSNormEps))}
	}
	// Point at the attribute a rule concerns when the file sets it.
	switch {
	case cfg.NumHeads > 0 && cfg.NumKVHeads > 0 && cfg.NumHeads%cfg.NumKVHeads != 0:
		r := attr("kv_heads")
		if m.KVHeads == nil {
			r = attr("heads")
		}
		return hcl.Diagnostics{config.ErrorAt(r, "Heads do not divide",
			fmt.Sprintf("heads = %d is not a multiple of kv_heads = %d: every KV head must serve the same number of query heads.", cfg.NumHeads, cfg.NumKVHeads))}
	case cfg.HeadDim > 0 && m.MRopeSection != nil && 2*(cfg.MRopeSection[0]+cfg.MRopeSection[1]+cfg.MRopeSection[2]) != cfg.HeadDim:
		return hcl.Diagnostics{config.ErrorAt(attr("mrope_section"), "MRoPE sections do not match head_dim",
			fmt.Sprintf("2 × sum(mrope_section) = %d, head_dim = %d: the sections must cover half the head dimension.",
				2*(cfg.MRopeSection[0]+cfg.MRopeSection[1]+cfg.MRopeSection[2]), cfg.HeadDim))}
	}
	if err := cfg.Validate(); err != nil {
		return hcl.Diagnostics{config.ErrorAt(at, "Invalid model", err.Error()+".")}
	}
	// The layers' float32 weights are the run's largest allocation; a
	// metadata run builds none.
	weights := weightBytes(cfg)
	if avail := availableMemory(); avail > 0 && weights > avail && !p.Metadata {
		r := at
		if m.Layers != nil {
			r = attr("layers")
		}
		return hcl.Diagnostics{config.ErrorAt(r, "Model too large for this machine",
			fmt.Sprintf("%d layers of float32 attention weights need %s; %s of memory is available. Run fewer layers.",
				cfg.NumLayers, humanize.IBytes(uint64(weights)), humanize.IBytes(uint64(avail))))}
	}
	p.Model = cfg
	return nil
}

// Upper bounds on the model geometry: well above any Qwen3-VL model, well
// below what overflows the page and weight arithmetic.
const (
	maxHidden  = 1 << 16
	maxHeads   = 1 << 10
	maxHeadDim = 1 << 10
	maxLayers  = 1 << 10
)

// hardware resolves the hardware block: discovery for "auto", else a named
// profile, and derives the settings the file may leave out.
func (p *Plan) hardware(f *config.File) hcl.Diagnostics {
	hb := f.Hardware
	name := hb.ProfileName()
	var h *hwtune.Hardware
	var err error
	if name == "auto" {
		h, err = hwtune.Discover(context.Background())
	} else {
		h, err = hwtune.Profile(name)
	}
	if err != nil {
		return hcl.Diagnostics{config.ErrorAt(config.AttrRange(hb.Body, "profile", hb.DeclRange), "Invalid hardware profile", err.Error()+".")}
	}
	dsize := model.BF16.Size()
	if c := f.Cache; c != nil && c.DType != nil {
		if d, err := model.ParseDType(*c.DType); err == nil {
			dsize = d.Size()
		}
	}
	s := hwtune.Derive(h, hwtune.Model{HeadDim: p.Model.HeadDim, KVHeads: p.Model.NumKVHeads, Layers: p.Model.NumLayers, DTypeSize: dsize})
	p.Hardware, p.Derived = h, &s
	return nil
}

func (p *Plan) cache(c *config.Cache) hcl.Diagnostics {
	if c.BlockTokens == 0 && p.Derived != nil {
		c.BlockTokens = p.Derived.BlockTokens
	}
	p.BlockTokens = c.BlockTokens
	p.DType = model.BF16
	if c.DType != nil {
		d, err := model.ParseDType(*c.DType)
		if err != nil {
			return hcl.Diagnostics{config.ErrorAt(config.AttrRange(c.Body, "dtype", c.DeclRange), "Invalid dtype", err.Error()+".")}
		}
		p.DType = d
	}
	pool := config.DefaultPool
	poolAt := c.DeclRange
	if c.Pool != nil {
		pool, poolAt = *c.Pool, config.AttrRange(c.Body, "pool", c.DeclRange)
	}
	p.PoolBytes, _ = config.ParseSize(pool) // checked by config
	if p.Model.HiddenSize > 0 {
		page := int64(2 * p.Model.NumKVHeads * c.BlockTokens * p.Model.HeadDim * p.DType.Size())
		if p.PoolBytes < page {
			return hcl.Diagnostics{config.ErrorAt(poolAt, "Pool below one page",
				fmt.Sprintf("pool %d bytes is smaller than one page (%d bytes).", p.PoolBytes, page))}
		}
	}
	if avail := availableMemory(); avail > 0 && p.PoolBytes > avail {
		return hcl.Diagnostics{config.ErrorAt(poolAt, "Pool exceeds memory",
			fmt.Sprintf("the pool of %s is more than the %s of memory available.", humanize.IBytes(uint64(p.PoolBytes)), humanize.IBytes(uint64(avail))))}
	}
	for _, t := range c.Tiers {
		capAt := config.AttrRange(t.Body, "capacity", t.DeclRange)
		if t.Capacity == "" && p.Derived != nil { // the host tier's, derived
			// The arena is the capacity rounded up to a power of two:
			// round the derived value down instead, so that the arena is
			// what was derived and still fits beside the pool and weights.
			t.Capacity = strconv.FormatInt(prevPow2(p.Derived.HostCapacity), 10)
		}
		n, _ := config.ParseCapacity(t.Capacity) // checked by config
		page := int64(2 * p.Model.NumKVHeads * c.BlockTokens * p.Model.HeadDim * p.DType.Size())
		if p.Metadata {
			page *= int64(max(p.Model.NumLayers, 1)) // a block's layers move as one
		}
		if n == config.Unlimited {
			if t.Name == "host" && !p.Metadata {
				return hcl.Diagnostics{config.ErrorAt(capAt, "Unlimited host tier",
					`An unlimited host tier needs payload = "metadata": with real bytes, the host tier is an arena in memory.`)}
			}
			n = storage.Unlimited
		}
		if t.Name == "gpu" {
			if why := gpuTierUnavailable(); why != "" {
				return hcl.Diagnostics{config.ErrorAt(t.DeclRange, "GPU tier unavailable", why)}
			}
			if n == storage.Unlimited || n < 1<<20 {
				return hcl.Diagnostics{config.ErrorAt(capAt, "Invalid capacity", "the gpu tier needs a capacity of at least 1MiB.")}
			}
			if why := gpuKernelUnavailable(p); why != "" {
				return hcl.Diagnostics{config.ErrorAt(t.DeclRange, "GPU tier unavailable", why)}
			}
			p.GPUCapacity = n
			continue
		}
		if t.Name == "ssd" {
			if n == 0 {
				continue // disabled
			}
			if p.Model.HiddenSize > 0 && n < page {
				return hcl.Diagnostics{config.ErrorAt(capAt, "Capacity below one page",
					fmt.Sprintf("capacity %d bytes is smaller than one page (%d bytes: K and V of %d tokens).", n, page, c.BlockTokens))}
			}
			ssd := &SSDPlan{Path: filepath.Clean(*t.Path), Capacity: n}
			if t.Write != nil {
				ssd.Write, _ = storage.ParseWritePolicy(*t.Write) // checked by config
			}
			if t.Sync != nil {
				ssd.Sync = *t.Sync
			}
			if t.MinFree != nil {
				ssd.MinFree, _ = config.ParseMinFree(*t.MinFree) // checked by config
			}
			if err := checkWritableDir(ssd.Path); err != nil {
				return hcl.Diagnostics{config.ErrorAt(config.AttrRange(t.Body, "path", t.DeclRange), "Unwritable path", err.Error()+".")}
			}
			p.SSD = ssd
			continue
		}
		p.HostCapacity = n
		if n == 0 || p.Metadata {
			continue // no arena: disabled, or sizes only
		}
		// The host tier and the pool hold their pages in arenas of the next
		// power of two, beside the model's weights, all in process memory.
		arenas := nextPow2(n) + nextPow2(p.PoolBytes)
		if avail := availableMemory(); avail > 0 && arenas+p.weightBytes() > avail {
			return hcl.Diagnostics{config.ErrorAt(capAt, "Capacity exceeds memory",
				fmt.Sprintf("the host tier's and the pool's arenas (%s, sizes rounded up to powers of two) and the weights (%s) need more than the %s of memory available.",
					humanize.IBytes(uint64(arenas)), humanize.IBytes(uint64(p.weightBytes())), humanize.IBytes(uint64(avail))))}
		}
		// A page occupies a buddy block: the next power of two.
		if p.Model.HiddenSize > 0 && n < nextPow2(page) {
			return hcl.Diagnostics{config.ErrorAt(capAt, "Capacity below one page",
				fmt.Sprintf("capacity %d bytes is smaller than one page (%d bytes: K and V of %d tokens).", n, nextPow2(page), c.BlockTokens))}
		}
	}
	return nil
}

// checkWritableDir reports whether dir exists as a writable directory or can
// be created: it probes with a temporary file in dir or in its nearest
// existing parent, and removes it.
func checkWritableDir(dir string) error {
	probe := dir
	for {
		fi, err := os.Stat(probe)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", probe)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return err
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			return fmt.Errorf("no existing parent of %s", dir)
		}
		probe = parent
	}
	f, err := os.CreateTemp(probe, ".flow-probe-*")
	if err != nil {
		return fmt.Errorf("cannot write in %s: %w", probe, errors.Unwrap(err))
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func (p *Plan) source(f *config.File, reg *Registry) hcl.Diagnostics {
	s := f.Source
	at := s.DeclRange
	p.PrefillChunk = 4 * p.BlockTokens
	if s.PrefillChunk != nil {
		p.PrefillChunk = *s.PrefillChunk
		if p.BlockTokens > 0 && (p.PrefillChunk < p.BlockTokens || p.PrefillChunk%p.BlockTokens != 0) {
			return hcl.Diagnostics{config.ErrorAt(config.AttrRange(s.Body, "prefill_chunk", at), "Invalid prefill_chunk",
				fmt.Sprintf("prefill_chunk = %d is not a positive multiple of block_tokens = %d.", p.PrefillChunk, p.BlockTokens))}
		}
	}
	if s.Limit != nil {
		if *s.Limit < 1 {
			return hcl.Diagnostics{config.ErrorAt(config.AttrRange(s.Body, "limit", at), "Invalid limit", "limit must be at least 1.")}
		}
		p.Limit = *s.Limit
	}
	p.MaxActive = max(4, 2*runtime.GOMAXPROCS(0))
	if s.MaxActive != nil {
		if *s.MaxActive < 1 {
			return hcl.Diagnostics{config.ErrorAt(config.AttrRange(s.Body, "max_active", at), "Invalid max_active", "max_active must be at least 1.")}
		}
		p.MaxActive = *s.MaxActive
	}
	factory, ok := reg.sources[s.Type]
	if !ok {
		return hcl.Diagnostics{config.ErrorAt(at, "Unknown source",
			fmt.Sprintf("Source %q is not registered; known sources: %s.", s.Type, strings.Join(reg.Sources(), ", ")))}
	}
	src, diags := factory(s.Body, f.Ctx, at)
	p.Source = src
	// A trace's block hashes cover a fixed number of tokens: the cache's
	// blocks must be the same, or its keys would name other prefixes.
	if bt, ok := src.(interface{ BlockTokens() int }); ok && !diags.HasErrors() && p.BlockTokens > 0 && bt.BlockTokens() != p.BlockTokens {
		diags = append(diags, config.ErrorAt(config.AttrRange(s.Body, "block_tokens", at), "Block size mismatch",
			fmt.Sprintf("the source's blocks are %d tokens, the cache's block_tokens = %d: set them equal.", bt.BlockTokens(), p.BlockTokens)))
	}
	return diags
}

func (p *Plan) stages(f *config.File, reg *Registry) hcl.Diagnostics {
	var diags hcl.Diagnostics
	p.PrefetchWorkers = DefaultPrefetchWorkers
	blocks := map[string]*config.Stage{}
	for _, b := range f.StageBlocks {
		blocks[b.Name] = b
	}
	start := hcl.Range{Filename: f.Filename, Start: hcl.InitialPos, End: hcl.InitialPos}
	for i, name := range f.Stages {
		factory, ok := reg.stages[name]
		if !ok {
			diags = append(diags, config.ErrorAt(config.ElementRange(f.Body, "stages", i, start), "Unknown stage",
				fmt.Sprintf("Stage %q is not registered; known stages: %s.", name, strings.Join(reg.Stages(), ", "))))
			continue
		}
		ps := PlannedStage{Name: name}
		if d := p.Derived; d != nil {
			switch name {
			case "fetch", "align", "attend", "evict":
				ps.Options.Workers = d.StageWorkers
			case "prefetch":
				ps.Options.Workers, p.PrefetchWorkers = d.PrefetchWorkers, d.PrefetchWorkers
			}
		}
		var body hcl.Body
		at := start
		if b := blocks[name]; b != nil {
			body, at = b.Body, b.DeclRange
			if b.Workers != nil {
				ps.Options.Workers = *b.Workers
				if name == "prefetch" {
					// The stage only issues loads; its workers bound the
					// loads in flight.
					p.PrefetchWorkers = *b.Workers
				}
			}
			if b.Queue != nil {
				ps.Options.Queue = *b.Queue
			}
		}
		build, d := factory(body, f.Ctx, at)
		diags = append(diags, d...)
		ps.build = build
		p.Stages = append(p.Stages, ps)
	}
	diags = append(diags, checkOrder(f, start)...)
	return diags
}

// builtinOrder lists, for each built-in stage, the one that must run before
// it when both are in the chain, and why.
var builtinOrder = []struct{ before, after, why string }{
	{"prefetch", "align", "align assembles the pages prefetch makes resident"},
	{"align", "attend", "attend needs the paged K/V view align assembles"},
	{"attend", "evict", "evict commits the pages attend writes"},
}

// checkOrder checks that fetch comes first and that the built-in stages keep
// their relative order; custom stages may go anywhere after fetch.
func checkOrder(f *config.File, start hcl.Range) hcl.Diagnostics {
	at := map[string]int{}
	for i, name := range f.Stages {
		at[name] = i
	}
	if _, ok := at["fetch"]; !ok {
		return hcl.Diagnostics{config.ErrorAt(config.AttrRange(f.Body, "stages", start), "No fetch stage",
			"The chain needs the fetch stage first: it sets up each request's block keys and cached prefix.")}
	}
	if len(f.Stages) > 0 && f.Stages[0] != "fetch" {
		return hcl.Diagnostics{config.ErrorAt(config.ElementRange(f.Body, "stages", 0, start), "fetch must come first",
			"The fetch stage pins a request's cached prefix; every other stage depends on it.")}
	}
	var diags hcl.Diagnostics
	for _, o := range builtinOrder {
		a, hasA := at[o.after]
		b, hasB := at[o.before]
		switch {
		case hasA && !hasB && o.after != "align":
			diags = append(diags, config.ErrorAt(config.ElementRange(f.Body, "stages", a, start), "Missing stage",
				fmt.Sprintf("Stage %q needs %q before it: %s.", o.after, o.before, o.why)))
		case hasA && hasB && b > a:
			diags = append(diags, config.ErrorAt(config.ElementRange(f.Body, "stages", b, start), "Stages out of order",
				fmt.Sprintf("Stage %q must come before %q: %s.", o.before, o.after, o.why)))
		}
	}
	return diags
}

// weightBytes is the size of the float32 attention weights of every layer.
func weightBytes(cfg model.Config) int64 {
	return int64(cfg.NumLayers) * 4 * int64(cfg.HiddenSize) * 2 * int64(cfg.NumHeads+cfg.NumKVHeads) * int64(cfg.HeadDim)
}

func (p *Plan) weightBytes() int64 { return weightBytes(p.Model) }

// nextPow2 returns the least power of two >= n (n >= 1).
func nextPow2(n int64) int64 {
	b := int64(1)
	for b < n {
		b <<= 1
	}
	return b
}

// Namespace identifies what the pages of this plan's ssd tier depend on: the
// attention geometry, the weights' seed, the dtype and the block size. A
// directory written under another namespace holds pages that would be wrong
// here. The number of layers is not part of it: layer l's pages are the same
// whether 2 or 28 layers run.
func (p *Plan) Namespace() string {
	m := p.Model
	return fmt.Sprintf("kvflow-pages/1 hidden=%d heads=%d kv_heads=%d head_dim=%d rope_theta=%g mrope=%v rms_eps=%g seed=%d dtype=%s block_tokens=%d",
		m.HiddenSize, m.NumHeads, m.NumKVHeads, m.HeadDim, m.RopeTheta, m.MRopeSection, m.RMSNormEps, p.Seed, p.DType, p.BlockTokens)
}

// gpuKernelUnavailable says why the GPU decode kernel cannot run the
// plan's steps, or "" when it can.
func gpuKernelUnavailable(p *Plan) string {
	m, g := p.Model, 0
	if m.NumKVHeads > 0 {
		g = m.NumHeads / m.NumKVHeads
	}
	switch {
	case p.Metadata:
		return `payload = "metadata" computes nothing: a gpu tier has nothing to run.`
	case p.DType != model.BF16:
		return fmt.Sprintf("the GPU decode kernel reads bf16 pages; the cache's dtype is %s.", p.DType)
	case m.HeadDim != 32 && m.HeadDim != 64 && m.HeadDim != 128, g != 1 && g != 2 && g != 4 && g != 8:
		return fmt.Sprintf("the GPU decode kernel takes head_dim 32, 64 or 128 and 1, 2, 4 or 8 query heads per KV head; the model has head_dim %d and %d.", m.HeadDim, g)
	}
	return ""
}

// gpuTierUnavailable says why a pipeline cannot have a GPU tier here, or
// "" when it can: a `cuda` build on a machine with an NVIDIA GPU.
func gpuTierUnavailable() string {
	if !gpu.Built {
		return "this flow binary was built without CUDA. Build it with `go build -tags cuda ./cmd/flow` where the CUDA kit is installed (see the README's GPU section), and run it on a machine with an NVIDIA GPU."
	}
	if info := gpu.Discover(); len(info.Devices) == 0 {
		return info.Absent + "."
	}
	return ""
}

// prevPow2 returns the largest power of two not above n (n >= 1), or 0.
func prevPow2(n int64) int64 {
	if n < 1 {
		return 0
	}
	p := int64(1)
	for p <= n/2 {
		p <<= 1
	}
	return p
}
