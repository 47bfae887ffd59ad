package model

import "fmt"

// PagedKV is the KV cache of one layer of one sequence, in pages of
// BlockTokens tokens.
//
// Page i holds tokens [i*BlockTokens, (i+1)*BlockTokens). Each of K[i], V[i]
// holds a block of BlockTokens×HeadDim elements of DType, little-endian,
// per KV head, so len(K[i]) == len(V[i]) == PageBytes(). A value block is
// rows, [BlockTokens][HeadDim]; a key block is tiles of T = KeyTileTokens()
// tokens, [BlockTokens/T][HeadDim][T] (rows when T is 1; see KeyTile):
// write and read keys with PutKey and Key. Keys are stored after k_norm
// and rotary, as transformers caches them. Pages are plain byte slices so
// that storage layers can move, persist or share them without knowing
// their contents.
//
// A PagedKV is not safe for concurrent use: one Forward call at a time may
// use it.
type PagedKV struct {
	DType       DType
	BlockTokens int
	KVHeads     int
	HeadDim     int
	// KeyTile is the tokens per tile of the key pages: KeyTile or 0 or 1
	// (rows). NewPagedKV sets it with KeyTileFor; every PagedKV over the
	// same pages must have the same.
	KeyTile int
	K, V    [][]byte

	// Summaries holds the key summary of each page for block-sparse
	// attention; entries may be missing or nil. The kernel creates and
	// updates them as the pages fill, and Forward resets one whose rows
	// it overwrites. A caller that rebuilds a PagedKV over the same pages
	// may carry the summaries over.
	Summaries []*PageSummary
}

// NewPagedKV returns an empty cache with the geometry of cfg.
func NewPagedKV(cfg Config, dtype DType, blockTokens int) *PagedKV {
	return &PagedKV{DType: dtype, BlockTokens: blockTokens, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim,
		KeyTile: KeyTileFor(cfg, dtype, blockTokens)}
}

// PageBytes returns the size in bytes of one K or V page.
func (kv *PagedKV) PageBytes() int {
	return kv.KVHeads * kv.BlockTokens * kv.HeadDim * kv.DType.Size()
}

// Capacity returns the number of tokens the present pages cover: complete
// pairs of K and V pages times BlockTokens.
func (kv *PagedKV) Capacity() int {
	return min(len(kv.K), len(kv.V)) * kv.BlockTokens
}

// Pages returns the number of pages needed to hold tokens tokens.
func (kv *PagedKV) Pages(tokens int) int {
	if kv.BlockTokens <= 0 || tokens <= 0 {
		return 0
	}
	return (tokens + kv.BlockTokens - 1) / kv.BlockTokens
}

// Grow appends zeroed pages until the cache covers at least tokens tokens.
func (kv *PagedKV) Grow(tokens int) error {
	if err := kv.checkGeometry(); err != nil {
		return err
	}
	n := kv.Pages(tokens)
	nk, nv := max(0, n-len(kv.K)), max(0, n-len(kv.V))
	if nk+nv == 0 {
		return nil
	}
	// One allocation for the new pages, each capped at its end.
	pb := kv.PageBytes()
	slab := make([]byte, (nk+nv)*pb)
	for i := range nk + nv {
		page := slab[i*pb : (i+1)*pb : (i+1)*pb]
		if i < nk {
			kv.K = append(kv.K, page)
		} else {
			kv.V = append(kv.V, page)
		}
	}
	return nil
}

// Gather copies the first tokens tokens of the cache into contiguous float32
// slices laid out [KVHeads][tokens][HeadDim], like transformers' cache
// tensors. It is meant for inspection and tests; attention itself never
// gathers the cache.
func (kv *PagedKV) Gather(tokens int) (k, v []float32, err error) {
	if tokens < 0 {
		return nil, nil, fmt.Errorf("PagedKV: Gather of %d tokens", tokens)
	}
	if err := kv.checkPages(tokens); err != nil {
		return nil, nil, err
	}
	d, bt, size := kv.HeadDim, kv.BlockTokens, kv.DType.Size()
	k = make([]float32, kv.KVHeads*tokens*d)
	v = make([]float32, kv.KVHeads*tokens*d)
	for g := range kv.KVHeads {
		for t := range tokens {
			off := ((g*bt + t%bt) * d) * size
			dst := (g*tokens + t) * d
			kv.Key(k[dst:dst+d], kv.K[t/bt], g, t%bt)
			kv.DType.Decode(v[dst:dst+d], kv.V[t/bt][off:])
		}
	}
	return k, v, nil
}

func (kv *PagedKV) checkGeometry() error {
	switch {
	case kv == nil:
		return fmt.Errorf("nil PagedKV")
	case !kv.DType.Valid():
		return fmt.Errorf("PagedKV: invalid dtype %v", kv.DType)
	case kv.BlockTokens <= 0 || kv.KVHeads <= 0 || kv.HeadDim <= 0:
		return fmt.Errorf("PagedKV: BlockTokens %d, KVHeads %d, HeadDim %d must all be > 0", kv.BlockTokens, kv.KVHeads, kv.HeadDim)
	case kv.KeyTile > 1 && (kv.KeyTile != KeyTile || kv.BlockTokens%kv.KeyTile != 0):
		return fmt.Errorf("PagedKV: KeyTile %d with BlockTokens %d: want 0, 1 or %d dividing BlockTokens", kv.KeyTile, kv.BlockTokens, KeyTile)
	case kv.KeyTile < 0:
		return fmt.Errorf("PagedKV: KeyTile %d < 0", kv.KeyTile)
	}
	return nil
}

// checkPages verifies the geometry and that the pages holding tokens tokens
// are present and of the right size.
func (kv *PagedKV) checkPages(tokens int) error {
	if err := kv.checkGeometry(); err != nil {
		return err
	}
	n := kv.Pages(tokens)
	if len(kv.K) < n || len(kv.V) < n {
		return fmt.Errorf("%w: %d tokens need %d pages of %d, have %d K and %d V pages", ErrShortKV, tokens, n, kv.BlockTokens, len(kv.K), len(kv.V))
	}
	want := kv.PageBytes()
	for i := range n {
		if len(kv.K[i]) != want {
			return fmt.Errorf("PagedKV: K page %d has %d bytes, want %d", i, len(kv.K[i]), want)
		}
		if len(kv.V[i]) != want {
			return fmt.Errorf("PagedKV: V page %d has %d bytes, want %d", i, len(kv.V[i]), want)
		}
	}
	return nil
}
