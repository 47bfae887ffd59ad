package hugepage

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Advise asks for the whole huge pages inside b to be backed by transparent
// huge pages (madvise MADV_HUGEPAGE) and reports whether the kernel took
// the advice: false when no huge page fits in b, when the kernel has no
// transparent huge pages, or off Linux. It is a hint: b's contents and
// lifetime are unchanged (the memory stays the Go heap's), and memory
// already touched is only collapsed into huge pages later, if at all, so
// call it before b is first written.
func Advise(b []byte) bool {
	off, n := Span(uintptr(unsafe.Pointer(unsafe.SliceData(b))), len(b))
	if n == 0 {
		return false
	}
	return unix.Madvise(b[off:off+n], unix.MADV_HUGEPAGE) == nil
}
