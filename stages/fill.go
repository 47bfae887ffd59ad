package stages

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// FillPage writes the synthetic K and V of a replayed block: bytes derived
// from the page's key alone, so that any copy read back from any tier can be
// checked (VerifyPage). Every element is a finite number of magnitude in
// [0.5, 1) with a random sign and mantissa, so decode attention over such
// pages is well defined.
func FillPage(p *storage.Page, dt model.DType) {
	fillHalf(p.K, p.Key, 0, dt)
	fillHalf(p.V, p.Key, 1, dt)
}

// VerifyPage reports whether p holds exactly the bytes FillPage writes.
func VerifyPage(p *storage.Page, dt model.DType) error {
	for half, b := range [2][]byte{p.K, p.V} {
		if i := checkHalf(b, p.Key, half, dt); i >= 0 {
			return fmt.Errorf("page %s: byte %d of %s differs from the replayed contents", p.Key, 8*i, [2]string{"K", "V"}[half])
		}
	}
	return nil
}

// fillWord returns the i-th 8 bytes of a half page: a splitmix64 stream
// seeded by the key, masked to finite values of the dtype.
func fillWord(seed uint64, i int, mask, bits uint64) uint64 {
	z := seed + uint64(i+1)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	z ^= z >> 31
	return z&mask | bits
}

// fillMask returns, per dtype, the bits kept from the random word (sign
// and mantissa of each element) and the exponent bits set (2^-1).
func fillMask(dt model.DType) (mask, bits uint64) {
	switch dt {
	case model.F32:
		return 0x807fffff_807fffff, 0x3f000000_3f000000
	case model.F16:
		return 0x83ff83ff_83ff83ff, 0x38003800_38003800
	default: // bf16
		return 0x807f807f_807f807f, 0x3f003f00_3f003f00
	}
}

func fillSeed(key storage.PageKey, half int) uint64 {
	var b [20]byte
	binary.LittleEndian.PutUint64(b[:], uint64(key.Block))
	binary.LittleEndian.PutUint64(b[8:], uint64(key.Layer))
	binary.LittleEndian.PutUint32(b[16:], uint32(half))
	return xxhash.Sum64(b[:])
}

func fillHalf(b []byte, key storage.PageKey, half int, dt model.DType) {
	mask, bits := fillMask(dt)
	seed := fillSeed(key, half)
	for i := 0; 8*i+8 <= len(b); i++ {
		binary.LittleEndian.PutUint64(b[8*i:], fillWord(seed, i, mask, bits))
	}
}

// checkHalf returns the index of the first 8-byte word of b that differs
// from fillHalf's, or -1.
func checkHalf(b []byte, key storage.PageKey, half int, dt model.DType) int {
	mask, bits := fillMask(dt)
	seed := fillSeed(key, half)
	for i := 0; 8*i+8 <= len(b); i++ {
		if binary.LittleEndian.Uint64(b[8*i:]) != fillWord(seed, i, mask, bits) {
			return i
		}
	}
	return -1
}

// fill writes the synthetic K/V of the blocks a replayed prefill step
// covers. Blocks past the request's keys (its private tail) are filled under
// a key of the request's own, never shared.
func (e *Env) fill(s *Step) {
	seq, b := s.Seq, e.BlockTokens
	seq.mu.Lock()
	defer seq.mu.Unlock()
	pages := seq.pages[s.Layer]
	for i := s.Start / b; i < (s.End+b-1)/b && i < len(pages); i++ {
		pg := pages[i]
		if i >= len(seq.Keys) {
			// Private: mix the request's id into the key the fill uses.
			pk := storage.PageKey{Block: storage.BlockKey(xxhash.Sum64String(s.Req.ID) ^ uint64(i)), Layer: s.Layer}
			fillHalf(pg.K, pk, 0, e.DType)
			fillHalf(pg.V, pk, 1, e.DType)
			continue
		}
		FillPage(pg, e.DType)
	}
}
