package storage

// Page is the K and V of one block for one layer. Each of K and V holds
// [kv_heads] blocks of block_tokens×head_dim values in the cache's dtype, as
// model.PagedKV lays them out (values in rows, keys in rows or in tiles of
// 16 tokens); the storage layer treats them as opaque bytes.
//
// A page handed out by a tier is shared: its bytes must not be written once it
// has been stored.
type Page struct {
	Key  PageKey
	K, V []byte
	// Meta is the size of a page that has no bytes: in a metadata-only run
	// (what-if studies), pages are sizes and keys, and the tiers that hold
	// them (MetaTier, MetaStore) make the same decisions without memory.
	Meta int64
}

// Size is the number of bytes the page occupies in a tier.
func (p *Page) Size() int64 {
	if p.K == nil && p.V == nil {
		return p.Meta
	}
	return int64(len(p.K) + len(p.V))
}
