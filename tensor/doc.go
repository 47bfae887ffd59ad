// Package tensor holds what the model and the memory systems share about
// tensors: element types (bf16, f16, f32) with their conversions and
// little-endian encodings, and zero-copy views of byte buffers.
//
// It imports only the standard library, so that both the attention kernels
// (package model) and the memory pool (package storage) can use it.
package tensor
