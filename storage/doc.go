// Package storage holds kvflow's memory systems: block keys, KV pages, the
// tiers that store pages within a byte capacity, and the KV cache manager
// that keeps one prefix index over all tiers.
//
// A block is block_tokens consecutive tokens of one sequence. Its key is a
// chained hash of its parent's key, its token ids and any extra keys (the
// content hash of an image whose tokens fall in the block), so two equal keys
// mean two equal prefixes. A page is the K and V of one block for one layer.
//
// Pages live in a hierarchy. A memory Tier (HostTier: a buddy-allocated
// arena indexed by a pinning block cache) holds the pages requests use in
// place; a Store below it (SSDTier: Badger, with a checksum verified on every
// read) keeps pages across evictions and restarts. The Manager looks up the
// longest cached prefix across both and pins it through a Lease; Promote
// copies a stored page up on use, Demote writes an evicted page down
// (write_back), and Commit writes through (write_through). A Prefetcher runs
// promotions on a bounded pool of workers, most urgent first, one load per
// page in flight.
//
// The package knows nothing of pipelines or models: it stores bytes under
// keys, pins what is in use, and evicts what is cold.
package storage
