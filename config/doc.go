// Package config decodes kvflow pipeline files written in HCL.
//
// A file declares variables, one model, one source, the cache and its tiers,
// the stage chain and per-stage settings. Decoding happens in two passes, as
// in Terraform: the variable blocks first, whose values (defaults overridden
// by --var) form the evaluation context for `var.x` in the rest of the file.
// Unknown blocks and attributes are errors, and every error is an
// hcl.Diagnostic that points at the file, line and column it concerns.
//
// The bodies of source and stage blocks are left undecoded here: their
// settings belong to the source or stage named, which decodes them itself
// with the same evaluation context (see package stages).
package config
