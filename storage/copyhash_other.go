//go:build !amd64

package storage

// useAVX2 is false off amd64: copyHashSeed copies, then hashes.
const useAVX2 = false

func copyAccumBlocksAVX2(acc *[8]uint64, dst, src, secret *byte, n uint64) {
	panic("copyAccumBlocksAVX2 without AVX2")
}

func copyAccumStripesAVX2(acc *[8]uint64, dst, src, secret *byte, n uint64) {
	panic("copyAccumStripesAVX2 without AVX2")
}
