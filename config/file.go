package config

import (
	"github.com/hashicorp/hcl/v2"
)

// File is a decoded pipeline file.
type File struct {
	Variables []*Variable `hcl:"variable,block"`
	Model     *Model      `hcl:"model,block"`
	Source    *Source     `hcl:"source,block"`
	Cache     *Cache      `hcl:"cache,block"`
	// Hardware, when present, derives the settings the file leaves out
	// from the machine (or a named profile); see package hwtune.
	Hardware *Hardware `hcl:"hardware,block"`
	// Stages lists the chain's stages in order; it defaults to
	// DefaultChain().
	Stages      []string `hcl:"stages,optional"`
	StageBlocks []*Stage `hcl:"stage,block"`

	// Body is the file's whole body, for diagnostics that point at attributes.
	Body hcl.Body `hcl:",body"`

	// Filename is the path the file was read from.
	Filename string
	// Values holds every variable's final value.
	Values map[string]string
	// Ctx evaluates expressions in source and stage bodies; it defines var.
	Ctx *hcl.EvalContext
}

// DefaultChain returns the built-in stage chain.
func DefaultChain() []string { return []string{"fetch", "prefetch", "align", "attend", "evict"} }

// Variable is a `variable "name" { default = ... }` block. A variable without
// a default must be set with --var.
type Variable struct {
	Name        string         `hcl:"name,label"`
	Default     hcl.Expression `hcl:"default,optional"`
	Description string         `hcl:"description,optional"`
	DeclRange   hcl.Range      `hcl:",def_range"`
}

// Model names the model whose attention the pipeline runs: a preset, a
// Hugging Face config.json, or explicit dimensions. Explicit attributes
// override what the preset or config.json gives.
type Model struct {
	Preset       *string   `hcl:"preset,optional"`
	ConfigJSON   *string   `hcl:"config_json,optional"`
	HiddenSize   *int      `hcl:"hidden_size,optional"`
	Heads        *int      `hcl:"heads,optional"`
	KVHeads      *int      `hcl:"kv_heads,optional"`
	HeadDim      *int      `hcl:"head_dim,optional"`
	Layers       *int      `hcl:"layers,optional"`
	RopeTheta    *float64  `hcl:"rope_theta,optional"`
	MRopeSection []int     `hcl:"mrope_section,optional"`
	RMSNormEps   *float64  `hcl:"rms_norm_eps,optional"`
	Seed         *int64    `hcl:"seed,optional"`
	Body         hcl.Body  `hcl:",body"`
	DeclRange    hcl.Range `hcl:",def_range"`
}

// Source is a `source "type" { ... }` block; its body belongs to the source
// type named by the label.
type Source struct {
	Type string `hcl:"type,label"`
	// PrefillChunk is the number of prompt tokens per prefill step; it
	// defaults to four blocks.
	PrefillChunk *int `hcl:"prefill_chunk,optional"`
	// Limit stops the source after this many requests.
	Limit *int `hcl:"limit,optional"`
	// MaxActive bounds the requests whose steps are interleaved at once.
	MaxActive *int `hcl:"max_active,optional"`
	// Payload is "full" (pages hold real bytes, the default) or "metadata"
	// (pages are keys and sizes: the same cache decisions, no memory and no
	// attention, for what-if studies of full-size models).
	Payload   *string   `hcl:"payload,optional"`
	Body      hcl.Body  `hcl:",remain"`
	DeclRange hcl.Range `hcl:",def_range"`
}

// Hardware is a `hardware { profile = "auto" }` block: "auto" discovers
// this machine; a profile name plans for another (flow hwinfo lists them).
type Hardware struct {
	Profile   *string   `hcl:"profile,optional"`
	Body      hcl.Body  `hcl:",body"`
	DeclRange hcl.Range `hcl:",def_range"`
}

// ProfileName returns the profile the block names, "auto" by default.
func (h *Hardware) ProfileName() string {
	if h == nil || h.Profile == nil {
		return "auto"
	}
	return *h.Profile
}

// Cache configures blocks, pages and tiers.
type Cache struct {
	// BlockTokens is the tokens per block and page; 0 (unset) is allowed
	// only with a hardware block, which derives it.
	BlockTokens int     `hcl:"block_tokens,optional"`
	DType       *string `hcl:"dtype,optional"`
	// Pool is the size of the arena that holds the pages of requests in
	// flight until the tier copies them; it defaults to DefaultPool.
	Pool      *string   `hcl:"pool,optional"`
	Tiers     []*Tier   `hcl:"tier,block"`
	Body      hcl.Body  `hcl:",body"`
	DeclRange hcl.Range `hcl:",def_range"`
}

// DefaultPool is the size of the cache's working pool when a file sets none.
const DefaultPool = "256MiB"

// Tier is a `tier "name" { capacity = "2GiB" }` block. The ssd tier also
// takes a directory, a write policy and whether writes are synced.
type Tier struct {
	Name string `hcl:"name,label"`
	// Capacity is required, except for the host tier of a file with a
	// hardware block, which derives it.
	Capacity string `hcl:"capacity,optional"`
	// Path is the ssd tier's directory, created if missing. Pages in it
	// survive the run: the next run over the same directory starts warm.
	Path *string `hcl:"path,optional"`
	// Write is how pages reach the tier from the one above: "write_back"
	// (when evicted there, the default) or "write_through" (as soon as a
	// request completes them).
	Write *string `hcl:"write,optional"`
	// Sync makes every write durable before it returns (fsync).
	Sync *bool `hcl:"sync,optional"`
	// MinFree is the free space the ssd tier leaves on its disk (a size,
	// or "0": no check); unset, storage.SSDOptions.MinFree's default.
	MinFree   *string   `hcl:"min_free,optional"`
	Body      hcl.Body  `hcl:",body"`
	DeclRange hcl.Range `hcl:",def_range"`
}

// Stage is a `stage "name" { ... }` block: the settings every stage has,
// plus a body that the named stage decodes.
type Stage struct {
	Name      string    `hcl:"name,label"`
	Workers   *int      `hcl:"workers,optional"`
	Queue     *int      `hcl:"queue,optional"`
	Body      hcl.Body  `hcl:",remain"`
	DeclRange hcl.Range `hcl:",def_range"`
}
