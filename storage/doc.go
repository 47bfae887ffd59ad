// Package storage holds kvflow's memory systems: block keys, KV pages, the
// tiers that store pages within a byte capacity, and the KV cache manager
// that keeps one prefix index over all tiers.
//
// A block is block_tokens consecutive tokens of one sequence. Its key is a
// chained hash of its parent's key, its token ids and any extra keys (the
// content hash of an image whose tokens fall in the block), so two equal keys
// mean two equal prefixes. A page is the K and V of one block for one layer.
//
// The package knows nothing of pipelines or models: it stores bytes under
// keys, pins what is in use, and evicts what is cold.
package storage
