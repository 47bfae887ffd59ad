package config

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// TierNames returns the tiers this build knows, fastest first.
func TierNames() []string { return []string{"host", "ssd", "gpu"} }

// Upper bounds on settings, so that a typo cannot ask for more goroutines or
// memory than any machine has.
const (
	MaxBlockTokens = 1 << 16
	MaxWorkers     = 4096
	MaxQueue       = 1 << 20
)

// check reports what the schema alone cannot: missing blocks, values out of
// range, duplicates.
func (f *File) check(file hcl.Range) hcl.Diagnostics {
	var diags hcl.Diagnostics
	start := hcl.Range{Filename: file.Filename, Start: file.Start, End: file.Start}
	if f.Model == nil {
		diags = append(diags, errorAt(start, "Missing model block", `A pipeline needs a model block, e.g. model { preset = "qwen3-vl-2b" }.`))
	}
	if f.Source == nil {
		diags = append(diags, errorAt(start, "Missing source block", `A pipeline needs a source block, e.g. source "synthetic_chat" {}.`))
	}
	if f.Cache == nil {
		diags = append(diags, errorAt(start, "Missing cache block", `A pipeline needs a cache block with block_tokens and a tier "host".`))
	} else {
		diags = append(diags, f.Cache.check(f.Hardware != nil)...)
	}
	if len(f.Stages) == 0 {
		diags = append(diags, errorAt(AttrRange(f.Body, "stages", start), "Empty stages", "stages lists no stage; leave it out for the default chain."))
	}
	seen := map[string]bool{}
	for i, name := range f.Stages {
		r := ElementRange(f.Body, "stages", i, start)
		if seen[name] {
			diags = append(diags, errorAt(r, "Duplicate stage", fmt.Sprintf("Stage %q appears twice in stages.", name)))
		}
		seen[name] = true
	}
	blocks := map[string]bool{}
	for _, s := range f.StageBlocks {
		if blocks[s.Name] {
			diags = append(diags, errorAt(s.DeclRange, "Duplicate stage block", fmt.Sprintf("Stage %q is configured twice.", s.Name)))
		}
		blocks[s.Name] = true
		if !seen[s.Name] {
			diags = append(diags, errorAt(s.DeclRange, "Stage not in the chain",
				fmt.Sprintf("Stage %q is configured but not in stages = [%s].", s.Name, strings.Join(f.Stages, ", "))))
		}
		if s.Workers != nil && (*s.Workers < 1 || *s.Workers > MaxWorkers) {
			diags = append(diags, errorAt(AttrRange(s.Body, "workers", s.DeclRange), "Invalid workers",
				fmt.Sprintf("workers = %d: must be between 1 and %d.", *s.Workers, MaxWorkers)))
		}
		if s.Queue != nil && (*s.Queue < 1 || *s.Queue > MaxQueue) {
			diags = append(diags, errorAt(AttrRange(s.Body, "queue", s.DeclRange), "Invalid queue",
				fmt.Sprintf("queue = %d: must be between 1 and %d.", *s.Queue, MaxQueue)))
		}
	}
	return diags
}

// check validates the cache block; with a hardware block, block_tokens and
// the host tier's capacity may be left for it to derive.
func (c *Cache) check(hardware bool) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if c.BlockTokens == 0 && !hardware {
		if _, set := attrSet(c.Body, "block_tokens"); !set {
			diags = append(diags, errorAt(c.DeclRange, "Missing block_tokens",
				"The cache needs block_tokens (tokens per page), or a hardware block to derive it: hardware { profile = \"auto\" }."))
		} else {
			diags = append(diags, errorAt(AttrRange(c.Body, "block_tokens", c.DeclRange), "Invalid block_tokens",
				fmt.Sprintf("block_tokens = %d: must be between 1 and %d.", c.BlockTokens, MaxBlockTokens)))
		}
	} else if _, set := attrSet(c.Body, "block_tokens"); set && (c.BlockTokens < 1 || c.BlockTokens > MaxBlockTokens) {
		diags = append(diags, errorAt(AttrRange(c.Body, "block_tokens", c.DeclRange), "Invalid block_tokens",
			fmt.Sprintf("block_tokens = %d: must be between 1 and %d.", c.BlockTokens, MaxBlockTokens)))
	}
	if c.Pool != nil {
		if _, err := ParseSize(*c.Pool); err != nil {
			diags = append(diags, errorAt(AttrRange(c.Body, "pool", c.DeclRange), "Invalid pool", err.Error()+"."))
		}
	}
	if len(c.Tiers) == 0 {
		diags = append(diags, errorAt(c.DeclRange, "No cache tier", `The cache needs at least tier "host" { capacity = "..." }.`))
	}
	seen := map[string]bool{}
	for _, t := range c.Tiers {
		known := false
		for _, n := range TierNames() {
			known = known || n == t.Name
		}
		if !known {
			diags = append(diags, errorAt(t.DeclRange, "Unknown tier",
				fmt.Sprintf("Tier %q is not available; known tiers: %s.", t.Name, strings.Join(TierNames(), ", "))))
		}
		if seen[t.Name] {
			diags = append(diags, errorAt(t.DeclRange, "Duplicate tier", fmt.Sprintf("Tier %q is configured twice.", t.Name)))
		}
		seen[t.Name] = true
		if t.Capacity == "" {
			if _, set := attrSet(t.Body, "capacity"); !set {
				if t.Name != "host" || !hardware {
					detail := fmt.Sprintf(`Tier %q needs capacity = "..."`, t.Name)
					if t.Name == "host" {
						detail += `, or a hardware block to derive it: hardware { profile = "auto" }`
					}
					diags = append(diags, errorAt(t.DeclRange, "Missing capacity", detail+"."))
				}
				diags = append(diags, t.check()...)
				continue
			}
		}
		if _, err := ParseCapacity(t.Capacity); err != nil {
			diags = append(diags, errorAt(AttrRange(t.Body, "capacity", t.DeclRange), "Invalid capacity", err.Error()+"."))
		}
		diags = append(diags, t.check()...)
	}
	if len(c.Tiers) > 0 && !seen["host"] {
		diags = append(diags, errorAt(c.DeclRange, "No host tier",
			`The cache needs tier "host" { capacity = "..." }: requests use their pages in host memory, lower tiers only keep them.`))
	}
	return diags
}

// check reports the attributes a tier does not take and bad values of those
// it does.
func (t *Tier) check() hcl.Diagnostics {
	var diags hcl.Diagnostics
	if t.Name != "ssd" {
		for _, a := range []struct {
			name string
			set  bool
		}{{"path", t.Path != nil}, {"write", t.Write != nil}, {"sync", t.Sync != nil}, {"min_free", t.MinFree != nil}} {
			if a.set {
				diags = append(diags, errorAt(AttrRange(t.Body, a.name, t.DeclRange), "Unsupported argument",
					fmt.Sprintf("%s applies to the ssd tier; the %s tier is process memory.", a.name, t.Name)))
			}
		}
		return diags
	}
	if t.Path == nil {
		diags = append(diags, errorAt(t.DeclRange, "Missing path", `The ssd tier needs a directory: path = ".flow/kv".`))
	} else if *t.Path == "" {
		diags = append(diags, errorAt(AttrRange(t.Body, "path", t.DeclRange), "Invalid path", "path is empty."))
	}
	if t.MinFree != nil {
		if _, err := ParseMinFree(*t.MinFree); err != nil {
			diags = append(diags, errorAt(AttrRange(t.Body, "min_free", t.DeclRange), "Invalid min_free", err.Error()+"."))
		}
	}
	if t.Write != nil && *t.Write != "write_back" && *t.Write != "write_through" {
		diags = append(diags, errorAt(AttrRange(t.Body, "write", t.DeclRange), "Invalid write policy",
			fmt.Sprintf(`write = %q: want "write_back" or "write_through".`, *t.Write)))
	}
	return diags
}

// attrSet reports whether body sets attribute name.
func attrSet(body hcl.Body, name string) (*hclsyntax.Attribute, bool) {
	if sb, ok := body.(*hclsyntax.Body); ok {
		a, ok := sb.Attributes[name]
		return a, ok
	}
	return nil, false
}

func errorAt(r hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: r.Ptr()}
}

// ErrorAt returns an error diagnostic for the range r.
func ErrorAt(r hcl.Range, summary, detail string) *hcl.Diagnostic { return errorAt(r, summary, detail) }

// AttrRange returns the range of the value of attribute name in body, or
// fallback when the body does not set it (or is not native syntax).
func AttrRange(body hcl.Body, name string, fallback hcl.Range) hcl.Range {
	if sb, ok := body.(*hclsyntax.Body); ok {
		if a, ok := sb.Attributes[name]; ok {
			return a.Expr.Range()
		}
	}
	return fallback
}

// ElementRange returns the range of element i of the list attribute name in
// body, or the attribute's range, or fallback.
func ElementRange(body hcl.Body, name string, i int, fallback hcl.Range) hcl.Range {
	sb, ok := body.(*hclsyntax.Body)
	if !ok {
		return fallback
	}
	a, ok := sb.Attributes[name]
	if !ok {
		return fallback
	}
	if t, ok := a.Expr.(*hclsyntax.TupleConsExpr); ok && i < len(t.Exprs) {
		return t.Exprs[i].Range()
	}
	return a.Expr.Range()
}
