package model

import (
	"encoding/binary"
	"fmt"
)

// KeyTile is the number of tokens in a tile of a key page laid out in
// tiles. Within each KV head's block of such a page, the keys of KeyTile
// consecutive tokens are stored channel by channel, [HeadDim][KeyTile]:
// one 32-byte load of bf16 then holds one channel of 16 tokens, so the
// decode kernel's vector lanes are tokens and a score needs no horizontal
// sum (about 10% of a page's cycles with keys in rows). Values stay in
// rows, which is how their weighted sum reads them.
const KeyTile = 16

// KeyTileFor returns the tokens per tile of the key pages of a cache of
// dtype pages of blockTokens tokens for the model cfg: KeyTile where the
// one-call decode routines read tiles (bf16, query heads per KV head a
// multiple of 4, head_dim a multiple of 16 up to 256, pages a multiple of
// 16 tokens), else 1: rows, which the loops for the other shapes read in
// place. It does not depend on the CPU, so that every tier and the GPU
// agree on it.
func KeyTileFor(cfg Config, dtype DType, blockTokens int) int {
	kh, d := cfg.NumKVHeads, cfg.HeadDim
	if dtype == BF16 && kh > 0 && cfg.NumHeads%kh == 0 && (cfg.NumHeads/kh)%4 == 0 &&
		d > 0 && d%16 == 0 && d <= pairSlot && blockTokens > 0 && blockTokens%KeyTile == 0 {
		return KeyTile
	}
	return 1
}

// KeyTileTokens returns the tokens per tile of kv's key pages: KeyTile
// tokens or 1 (rows; also for a KeyTile field of 0).
func (kv *PagedKV) KeyTileTokens() int { return max(kv.KeyTile, 1) }

// keyIndex returns the element index of channel c of slot t within one KV
// head's block of a key page of d channels in tiles of tile tokens.
func keyIndex(t, c, d, tile int) int {
	t0 := t - t%tile
	return t0*d + c*tile + t - t0
}

// keyBytes returns the bytes of the first n keys of one KV head's block of
// a key page of d channels of size bytes in tiles of tile tokens: whole
// tiles.
func keyBytes(n, d, size, tile int) int {
	return (n + tile - 1) / tile * tile * d * size
}

// keyChunk is how many channels PutKey and Key convert at a time: their
// buffer lives on the stack.
const keyChunk = 64

// PutKey writes row (HeadDim values) as the key of slot slot of KV head g
// into the K page page, in the page's layout (see KeyTile).
func (kv *PagedKV) PutKey(page []byte, g, slot int, row []float32) {
	d, bt, size, tile := kv.HeadDim, kv.BlockTokens, kv.DType.Size(), kv.KeyTileTokens()
	kv.checkKey(page, g, slot, row)
	base := g * bt * d
	if tile == 1 {
		kv.DType.Encode(page[(base+slot*d)*size:(base+slot*d+d)*size], row)
		return
	}
	// Channel c of the slot is at first + c*tile elements.
	first := base + keyIndex(slot, 0, d, tile)
	var buf [keyChunk * 4]byte
	for c0 := 0; c0 < d; c0 += keyChunk {
		n := min(keyChunk, d-c0)
		kv.DType.Encode(buf[:n*size], row[c0:c0+n])
		at := (first + c0*tile) * size
		switch size {
		case 2:
			for c := range n {
				binary.LittleEndian.PutUint16(page[at+c*tile*2:], binary.LittleEndian.Uint16(buf[c*2:]))
			}
		case 4:
			for c := range n {
				binary.LittleEndian.PutUint32(page[at+c*tile*4:], binary.LittleEndian.Uint32(buf[c*4:]))
			}
		default:
			for c := range n {
				copy(page[at+c*tile*size:at+c*tile*size+size], buf[c*size:])
			}
		}
	}
}

// Key decodes the key of slot slot of KV head g in the K page page into
// row (HeadDim values).
func (kv *PagedKV) Key(row []float32, page []byte, g, slot int) {
	d, bt, size, tile := kv.HeadDim, kv.BlockTokens, kv.DType.Size(), kv.KeyTileTokens()
	kv.checkKey(page, g, slot, row)
	base := g * bt * d
	if tile == 1 {
		kv.DType.Decode(row, page[(base+slot*d)*size:(base+slot*d+d)*size])
		return
	}
	first := base + keyIndex(slot, 0, d, tile)
	var buf [keyChunk * 4]byte
	for c0 := 0; c0 < d; c0 += keyChunk {
		n := min(keyChunk, d-c0)
		at := (first + c0*tile) * size
		switch size {
		case 2:
			for c := range n {
				binary.LittleEndian.PutUint16(buf[c*2:], binary.LittleEndian.Uint16(page[at+c*tile*2:]))
			}
		case 4:
			for c := range n {
				binary.LittleEndian.PutUint32(buf[c*4:], binary.LittleEndian.Uint32(page[at+c*tile*4:]))
			}
		default:
			for c := range n {
				copy(buf[c*size:(c+1)*size], page[at+c*tile*size:])
			}
		}
		kv.DType.Decode(row[c0:c0+n], buf[:n*size])
	}
}

func (kv *PagedKV) checkKey(page []byte, g, slot int, row []float32) {
	if g < 0 || g >= kv.KVHeads || slot < 0 || slot >= kv.BlockTokens || len(row) != kv.HeadDim || len(page) != kv.PageBytes() {
		panic(fmt.Sprintf("PagedKV: key of head %d slot %d (row of %d, page of %d bytes) outside %d heads, %d slots, %d channels, %d bytes",
			g, slot, len(row), len(page), kv.KVHeads, kv.BlockTokens, kv.HeadDim, kv.PageBytes()))
	}
}

// untileKeys writes the first n keys of one KV head's block of a key page
// (src, tiles of tile tokens of d channels of size bytes) to dst as rows
// of d: what the loops that read key rows take.
func untileKeys(dst, src []byte, n, d, size, tile int) []byte {
	dst = resize(dst, n*d*size)
	if tile == 1 {
		copy(dst, src[:n*d*size])
		return dst
	}
	for t0 := 0; t0 < n; t0 += tile {
		w := min(tile, n-t0)
		tb := src[t0*d*size:]
		for c := range d {
			ch := tb[c*tile*size:]
			switch size {
			case 2:
				for j := range w {
					binary.LittleEndian.PutUint16(dst[((t0+j)*d+c)*2:], binary.LittleEndian.Uint16(ch[j*2:]))
				}
			default:
				for j := range w {
					copy(dst[((t0+j)*d+c)*size:((t0+j)*d+c+1)*size], ch[j*size:])
				}
			}
		}
	}
	return dst
}
