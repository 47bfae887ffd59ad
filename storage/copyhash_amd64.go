package storage

import "golang.org/x/sys/cpu"

// useAVX2 selects the fused copy-and-hash kernel.
var useAVX2 = cpu.X86.HasAVX2

// copyAccumBlocksAVX2 copies n blocks of 1024 bytes from src to dst and
// folds them into acc as XXH3's long hash does, scrambling after each block.
//
//go:noescape
func copyAccumBlocksAVX2(acc *[8]uint64, dst, src, secret *byte, n uint64)

// copyAccumStripesAVX2 copies n stripes of 64 bytes from src to dst and
// folds them into acc, the secret advancing 8 bytes a stripe; n < 16.
//
//go:noescape
func copyAccumStripesAVX2(acc *[8]uint64, dst, src, secret *byte, n uint64)
