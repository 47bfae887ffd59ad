package tensor

import (
	"encoding/binary"
	"unsafe"
)

// nativeLittleEndian reports whether float32s in memory are laid out as the
// little-endian bytes of KV pages.
var nativeLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// ViewF32 returns the first n float32s of the little-endian bytes b without
// copying, if the host is little-endian and b is 4-byte aligned; otherwise it
// returns ok == false and the caller decodes. Reading f32 pages in place
// saves a copy of every cached key and value on each Forward.
func ViewF32(b []byte, n int) (v []float32, ok bool) {
	if !nativeLittleEndian || n == 0 || len(b) < 4*n || uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), true
}

// ViewU16 is ViewF32 for 2-byte elements (bf16 and f16 pages).
func ViewU16(b []byte, n int) (v []uint16, ok bool) {
	if !nativeLittleEndian || n == 0 || len(b) < 2*n || uintptr(unsafe.Pointer(&b[0]))%2 != 0 {
		return nil, false
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n), true
}
