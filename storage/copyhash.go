package storage

import (
	"encoding/binary"
	"math/bits"

	"github.com/zeebo/xxh3"
)

//go:generate sh -c "cd ../internal/asm && go run ./copyhash -out ../../storage/copyhash_amd64.s"

// copyHashSeed copies src to dst (len(dst) >= len(src)) and returns
// xxh3.HashSeed(src, seed), touching each byte once where the CPU allows.
//
// A verified read of a page is a copy out of Badger's buffer and a hash of
// every byte: done one after the other, the hash costs a third as much again
// as the copy. Fused (AVX2, copyhash_amd64.s, generated with avo), the hash's
// arithmetic hides under the copy's loads and stores. Inputs of XXH3's short
// forms (240 bytes or less) and CPUs without AVX2 take the two-pass path,
// which gives the same result.
func copyHashSeed(dst, src []byte, seed uint64) uint64 {
	n := len(src)
	if n <= xxh3MidMax || !useAVX2 {
		copy(dst, src)
		return xxh3.HashSeed(src, seed)
	}
	dst = dst[:n]
	secret := &xxh3Secret
	if seed != 0 {
		var s [xxh3SecretSize]byte
		xxh3InitSecret(&s, seed)
		secret = &s
	}
	acc := [8]uint64{prime32_3, prime64_1, prime64_2, prime64_3, prime64_4, prime32_2, prime64_5, prime32_1}
	blocks := (n - 1) / xxh3Block
	if blocks > 0 {
		copyAccumBlocksAVX2(&acc, &dst[0], &src[0], &secret[0], uint64(blocks))
	}
	off := blocks * xxh3Block
	if stripes := (n - 1 - off) / xxh3Stripe; stripes > 0 {
		copyAccumStripesAVX2(&acc, &dst[off], &src[off], &secret[0], uint64(stripes))
	}
	// The bytes after the last whole stripe, then the last stripe (which
	// may overlap the previous one) read back from dst.
	tail := off + (n-1-off)/xxh3Stripe*xxh3Stripe
	copy(dst[tail:], src[tail:])
	xxh3Accumulate512(&acc, dst[n-xxh3Stripe:], secret[xxh3SecretSize-xxh3Stripe-7:])
	return xxh3Merge(&acc, secret, uint64(n)*prime64_1)
}

// XXH3's constants and the pieces of its long hash that run outside the
// assembly, as in the reference implementation (xxhash.h, XXH3_hashLong_64b).
const (
	xxh3MidMax     = 240
	xxh3Stripe     = 64
	xxh3Block      = 1024 // 16 stripes: (secret size - stripe) / 8
	xxh3SecretSize = 192

	prime32_1 = 2654435761
	prime32_2 = 2246822519
	prime32_3 = 3266489917
	prime64_1 = 11400714785074694791
	prime64_2 = 14029467366897019727
	prime64_3 = 1609587929392839161
	prime64_4 = 9650029242287828579
	prime64_5 = 2870177450012600261
)

// xxh3Secret is XXH3's default secret (kSecret).
var xxh3Secret = [xxh3SecretSize]byte{
	0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
	0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
	0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
	0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
	0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
	0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
	0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
	0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
	0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
	0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
	0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
	0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
}

// xxh3InitSecret derives the secret of a seed (XXH3_initCustomSecret).
func xxh3InitSecret(dst *[xxh3SecretSize]byte, seed uint64) {
	le := binary.LittleEndian
	for i := 0; i < xxh3SecretSize; i += 16 {
		le.PutUint64(dst[i:], le.Uint64(xxh3Secret[i:])+seed)
		le.PutUint64(dst[i+8:], le.Uint64(xxh3Secret[i+8:])-seed)
	}
}

// xxh3Accumulate512 folds one stripe into acc (XXH3_accumulate_512).
func xxh3Accumulate512(acc *[8]uint64, stripe, secret []byte) {
	le := binary.LittleEndian
	for i := range 8 {
		v := le.Uint64(stripe[8*i:])
		k := v ^ le.Uint64(secret[8*i:])
		acc[i^1] += v
		acc[i] += (k & 0xffffffff) * (k >> 32)
	}
}

// xxh3Merge folds the accumulators into the hash (XXH3_mergeAccs).
func xxh3Merge(acc *[8]uint64, secret *[xxh3SecretSize]byte, start uint64) uint64 {
	le := binary.LittleEndian
	h := start
	for i := range 4 {
		hi, lo := bits.Mul64(acc[2*i]^le.Uint64(secret[11+16*i:]), acc[2*i+1]^le.Uint64(secret[19+16*i:]))
		h += hi ^ lo
	}
	h ^= h >> 37
	h *= 0x165667919e3779f9
	return h ^ h>>32
}
