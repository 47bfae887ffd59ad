package storage

// Page is the K and V of one block for one layer. Each of K and V is laid out
// [kv_heads][block_tokens][head_dim] in the cache's dtype; the storage layer
// treats them as opaque bytes.
//
// A page handed out by a tier is shared: its bytes must not be written once it
// has been stored.
type Page struct {
	Key  PageKey
	K, V []byte
}

// Size is the number of bytes the page occupies in a tier.
func (p *Page) Size() int64 { return int64(len(p.K) + len(p.V)) }
