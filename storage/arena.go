package storage

import (
	"unsafe"

	"github.com/kvflow/kvflow/internal/hugepage"
)

// arenaAlign is the alignment of an Arena's memory: a page, so that blocks
// allocated with AllocateAligned(n, 4096) are page-aligned in memory, not
// only in offset.
const arenaAlign = 4096

// ArenaOptions configure an Arena; the fields mean what they mean in
// BuddyOptions.
type ArenaOptions struct {
	Size, MinBlock int64
}

// Arena is one contiguous, 4 KiB-aligned []byte whose blocks a Buddy hands
// out as byte slices. It is safe for concurrent use.
//
// The memory is allocated once, by NewArena, and stays reachable as long as
// the Arena is. Memory handed out again after a Free is not zeroed: the
// previous owner's bytes are still there, and callers overwrite what they
// read.
type Arena struct {
	buddy *Buddy
	mem   []byte // len and cap are buddy.size; &mem[0] is a multiple of arenaAlign
}

// Block is an allocation from an Arena: Size bytes at offset Off, of which
// Bytes are the Size requested. Bytes has len and cap n, so an append
// reallocates rather than writing over the neighbouring block.
type Block struct {
	Off, Size int64
	Bytes     []byte
}

// NewArena allocates an arena's memory and returns it with every byte free.
//
// The memory comes from one make, which returns zeroed memory. For an
// allocation this large the runtime normally takes fresh pages from the
// operating system, which are zero already, so make does not write them and
// the operating system commits physical memory page by page as blocks are
// first written; only memory the heap reuses is cleared by make itself. The
// caller bounds Size: it is reserved at once.
//
// On Linux the memory is advised to be backed by transparent huge pages
// (internal/hugepage) before it is first written: attention streams whole
// pages out of the arena, and decode read KV pages about 10% faster from
// huge pages in benchmarks/README.md's comparison.
func NewArena(o ArenaOptions) (*Arena, error) {
	b, err := NewBuddy(BuddyOptions(o))
	if err != nil {
		return nil, err
	}
	raw := make([]byte, b.size+arenaAlign-1)
	pad := int64(-uintptr(unsafe.Pointer(unsafe.SliceData(raw))) & (arenaAlign - 1))
	mem := raw[pad : pad+b.size : pad+b.size]
	hugepage.Advise(mem)
	return &Arena{buddy: b, mem: mem}, nil
}

// Alloc returns a block of n bytes. Its offset is a multiple of its size, so
// its address is a multiple of the size or of 4 KiB, whichever is smaller, and
// at least of MinBlock (64 bytes by default). See Buddy.Allocate.
func (a *Arena) Alloc(n int64) (Block, error) {
	off, size, err := a.buddy.Allocate(n)
	if err != nil {
		return Block{}, err
	}
	return Block{Off: off, Size: size, Bytes: a.mem[off : off+n : off+n]}, nil
}

// AllocAligned is Alloc with the block's offset a multiple of align, a power
// of two up to the arena size. The memory starts on a 4 KiB boundary, so for
// align up to 4096 (a page) the address is aligned too. See
// Buddy.AllocateAligned.
func (a *Arena) AllocAligned(n, align int64) (Block, error) {
	off, size, err := a.buddy.AllocateAligned(n, align)
	if err != nil {
		return Block{}, err
	}
	return Block{Off: off, Size: size, Bytes: a.mem[off : off+n : off+n]}, nil
}

// Free returns the block at off (a Block's Off) to the arena. The caller
// must not use the block's bytes afterwards. See Buddy.Free for the errors.
func (a *Arena) Free(off int64) error { return a.buddy.Free(off) }

// Stats returns the allocator's statistics; see Buddy.Stats.
func (a *Arena) Stats() BuddyStats { return a.buddy.Stats() }

// Memory returns the arena's whole memory, for registering it with a
// device's DMA engines (DeviceTier.RegisterHost); blocks alias it.
func (a *Arena) Memory() []byte { return a.mem }

// Size returns the arena's size in bytes, after rounding up to a power of two.
func (a *Arena) Size() int64 { return a.buddy.size }
