package storage

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// BlockKey identifies a block of tokens together with everything before it:
// equal keys mean equal prefixes. It is a 64-bit chained hash, so two distinct
// prefixes collide with probability about n²/2⁶⁵ for n cached blocks
// (under 10⁻⁵ for ten million blocks).
type BlockKey uint64

// RootKey is the parent of a sequence's first block.
const RootKey BlockKey = 0

// String formats the key as 16 hex digits.
func (k BlockKey) String() string { return fmt.Sprintf("%016x", uint64(k)) }

// ChainKey returns the key of the block whose parent is parent, whose token ids
// are tokens, and whose extra keys (content hashes of images or videos whose
// tokens fall in the block) are extra. It is deterministic across processes
// and machines, so keys persisted by a tier stay valid after a restart.
func ChainKey(parent BlockKey, tokens []int32, extra []uint64) BlockKey {
	var d xxhash.Digest
	d.Reset()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(parent))
	d.Write(b[:])
	binary.LittleEndian.PutUint64(b[:], uint64(len(tokens)))
	d.Write(b[:])
	var tb [4]byte
	for _, t := range tokens {
		binary.LittleEndian.PutUint32(tb[:], uint32(t))
		d.Write(tb[:])
	}
	for _, e := range extra {
		binary.LittleEndian.PutUint64(b[:], e)
		d.Write(b[:])
	}
	return BlockKey(d.Sum64())
}

// PageKey names one layer's page of a block.
type PageKey struct {
	Block BlockKey
	Layer int
}

// String formats the key as block/layer.
func (k PageKey) String() string { return fmt.Sprintf("%s/L%d", k.Block, k.Layer) }
