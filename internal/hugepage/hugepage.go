// Package hugepage asks the operating system to back large, long-lived
// buffers (the arenas KV pages live in) with transparent huge pages.
//
// Attention streams every KV page once per decode step; with 4 KiB pages
// that is a TLB miss every 64 cache lines. Go's heap does not ask for huge
// pages itself (it leaves the system's default, often "madvise"), so
// kvflow asks for the memory of its arenas.
//
// The advice belongs to the address range, not to the Go object: memory
// is committed 2 MiB at a time where it is first touched, the first touch
// may wait for the kernel to compact memory (the "defrag" setting), and if
// the object is collected the heap reuses the range with the advice still
// on. That suits kvflow's arenas, which are few, large, filled and kept for
// a process's life; it is not meant for short-lived buffers.
package hugepage

// Size is the huge page size the advice is aligned to: 2 MiB, the
// transparent huge page size of x86-64 and of arm64 with 4 KiB base pages.
const Size = 2 << 20

// Span returns the part of [start, start+n) that whole huge pages cover:
// its first byte's offset from start and its length, a multiple of Size
// (0, 0 when no huge page fits).
func Span(start uintptr, n int) (off, length int) {
	if n <= 0 {
		return 0, 0
	}
	first := (start + Size - 1) &^ (Size - 1)
	end := (start + uintptr(n)) &^ (Size - 1)
	if end <= first {
		return 0, 0
	}
	return int(first - start), int(end - first)
}
