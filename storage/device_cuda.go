//go:build cuda

package storage

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/kvflow/kvflow/gpu"
)

// DeviceTier keeps pages in GPU memory: one large device allocation carved
// by a Buddy allocator, an exact LRU with pins over the pages, and
// promotion from host memory through a ring of pinned staging buffers, each
// with its own stream, so that the CPU copying a page into one buffer
// overlaps the DMA engine moving the previous one to the device. It is the
// GPU decode kernel's tier; pages stay addressable by device pointer while
// pinned.
type DeviceTier struct {
	ctx   *gpu.Context
	arena *gpu.Buffer
	buddy *Buddy
	cache *Cache[PageKey, DevicePage]
	// OnEvict receives the pages the LRU drops (nil: they are dropped).
	onEvict func(DevicePage)

	mu      sync.Mutex // serialises promotions: they share the staging ring
	staging []*gpu.Pinned
	streams []*gpu.Stream
	next    int
	// registered holds host memory page-locked with RegisterHost: pages
	// inside it are copied straight to the device. Guarded by mu.
	registered [][]byte
}

// RegisterHost page-locks host memory (the host tier's arena, say) so that
// pages in it are promoted by DMA straight from where they are, with no
// staging copy. mem must stay allocated until Close.
func (t *DeviceTier) RegisterHost(mem []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.ctx.RegisterHost(mem); err != nil {
		return fmt.Errorf("device tier: %w", err)
	}
	t.registered = append(t.registered, mem)
	return nil
}

// isRegistered reports whether b lies inside registered host memory.
func (t *DeviceTier) isRegistered(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(&b[0]))
	for _, r := range t.registered {
		lo := uintptr(unsafe.Pointer(&r[0]))
		if p >= lo && p+uintptr(len(b)) <= lo+uintptr(len(r)) {
			return true
		}
	}
	return false
}

// DevicePage is a page in device memory: K at K, V at V, Size bytes each.
type DevicePage struct {
	Key  PageKey
	K, V cu.DevicePtr
	Size int64
	off  int64 // the buddy block
}

// DeviceOptions configure NewDeviceTier.
type DeviceOptions struct {
	// Capacity bounds the device memory the tier allocates, in bytes: it
	// takes the largest power of two within it.
	Capacity int64
	// Staging is the number and size of the pinned staging buffers
	// (default 4 of 8 MiB).
	StagingBuffers int
	StagingBytes   int
	// OnEvict receives each page the LRU evicts, after it left the tier.
	OnEvict func(DevicePage)
}

// NewDeviceTier allocates the tier's device memory and staging buffers.
func NewDeviceTier(ctx *gpu.Context, o DeviceOptions) (*DeviceTier, error) {
	if o.Capacity < 1<<20 {
		return nil, fmt.Errorf("device tier: capacity %d bytes: want at least 1 MiB", o.Capacity)
	}
	if o.StagingBuffers == 0 {
		o.StagingBuffers = 4
	}
	if o.StagingBytes == 0 {
		o.StagingBytes = 8 << 20
	}
	// The buddy arena is a power of two: the largest within the capacity.
	size := int64(1) << (bits.Len64(uint64(o.Capacity)) - 1)
	b, err := NewBuddy(BuddyOptions{Size: size, MinBlock: 4096})
	if err != nil {
		return nil, fmt.Errorf("device tier: %w", err)
	}
	t := &DeviceTier{ctx: ctx, buddy: b, onEvict: o.OnEvict}
	if t.arena, err = ctx.Alloc(b.Stats().Size); err != nil {
		return nil, fmt.Errorf("device tier: %w", err)
	}
	for range o.StagingBuffers {
		p, err := ctx.AllocPinned(o.StagingBytes)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("device tier: %w", err)
		}
		s, err := ctx.NewStream()
		if err != nil {
			ctx.FreePinned(p)
			t.Close()
			return nil, fmt.Errorf("device tier: %w", err)
		}
		t.staging, t.streams = append(t.staging, p), append(t.streams, s)
	}
	t.cache, err = NewCache(CacheOptions[PageKey, DevicePage]{Capacity: b.Stats().Size, Shards: 1, OnEvict: t.evicted})
	if err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Close releases the device memory and staging buffers, and unregisters
// registered host memory.
func (t *DeviceTier) Close() error {
	for i := range t.staging {
		t.ctx.Sync(t.streams[i])
	}
	for _, r := range t.registered {
		t.ctx.UnregisterHost(r)
	}
	t.registered = nil
	for i := range t.staging {
		t.ctx.DestroyStream(t.streams[i])
		t.ctx.FreePinned(t.staging[i])
	}
	t.staging, t.streams = nil, nil
	if t.arena != nil {
		t.ctx.Free(t.arena)
		t.arena = nil
	}
	return nil
}

func (t *DeviceTier) evicted(_ PageKey, p DevicePage) {
	t.buddy.Free(p.off)
	if t.onEvict != nil {
		t.onEvict(p)
	}
}

// Pin returns the device page of key and pins it, or false.
func (t *DeviceTier) Pin(key PageKey) (DevicePage, bool) { return t.cache.Pin(key) }

// Unpin releases one pin of key.
func (t *DeviceTier) Unpin(key PageKey) error { return t.cache.Unpin(key) }

// Name returns "gpu".
func (t *DeviceTier) Name() string { return "gpu" }

// Stats returns the tier's counters.
func (t *DeviceTier) Stats() TierStats {
	s := t.cache.Stats()
	return TierStats{Name: t.Name(), CapacityBytes: s.Capacity, UsedBytes: s.Weight, PinnedBytes: s.PinnedWeight,
		Pages: s.Entries, Hits: s.Hits, Misses: s.Misses}
}

// Load implements DeviceCache: Promote, keeping the pins.
func (t *DeviceTier) Load(pages []*Page) error {
	_, err := t.Promote(pages)
	return err
}

var _ DeviceCache = (*DeviceTier)(nil)

// Promote copies pages from host memory to the device and pins each; a
// page already there is pinned, not copied. It returns when every copy has
// landed. Pages go through the ring of pinned staging buffers: the CPU
// fills one (with several goroutines) while the DMA engine drains the ones
// before it on their own streams, and pieces that are adjacent both in the
// buffer and on the device (consecutive allocations) go as one copy.
func (t *DeviceTier) Promote(pages []*Page) ([]DevicePage, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]DevicePage, len(pages))
	fresh := map[PageKey]bool{} // pages this call added to the cache
	buf, fill := -1, 0
	// queued[b] is closed once buffer b's copies are handed to its stream;
	// its stream is synchronised before the buffer is filled again.
	queued := make([]chan error, len(t.staging))
	var fills []stagedCopy
	var copies []gpu.Piece
	flush := func() error {
		if buf < 0 || fill == 0 {
			return nil
		}
		t.fillParallel(t.staging[buf].Bytes, fills)
		// Queue the copies from another goroutine: handing them to the
		// context's thread takes as long as filling the next buffer.
		done, b, pieces := make(chan error, 1), buf, copies
		queued[b] = done
		go func() { done <- t.ctx.CopyInPieces(t.staging[b].Bytes, pieces, t.streams[b]) }()
		fills, copies, fill = fills[:0], nil, 0
		return nil
	}
	settle := func(b int) error { // buffer b's copies have landed
		if queued[b] == nil {
			return nil
		}
		err := <-queued[b]
		queued[b] = nil
		if err != nil {
			return err
		}
		return t.ctx.Sync(t.streams[b])
	}
	take := func() error { // the next staging buffer, once its copies landed
		t.next = (t.next + 1) % len(t.staging)
		buf = t.next
		return settle(buf)
	}
	var direct []gpu.Direct // copies straight from registered memory
	stage := func(src []byte, dst cu.DevicePtr) error {
		if t.isRegistered(src) {
			if k := len(direct) - 1; k >= 0 && direct[k].Dst+cu.DevicePtr(len(direct[k].Src)) == dst &&
				uintptr(unsafe.Pointer(&direct[k].Src[0]))+uintptr(len(direct[k].Src)) == uintptr(unsafe.Pointer(&src[0])) {
				direct[k].Src = unsafe.Slice(&direct[k].Src[0], len(direct[k].Src)+len(src))
			} else {
				direct = append(direct, gpu.Direct{Dst: dst, Src: src})
			}
			return nil
		}
		for done := 0; done < len(src); {
			if buf < 0 || fill == len(t.staging[buf].Bytes) {
				if err := flush(); err != nil {
					return err
				}
				if err := take(); err != nil {
					return err
				}
			}
			n := min(len(src)-done, len(t.staging[buf].Bytes)-fill)
			fills = append(fills, stagedCopy{src: src[done : done+n], at: fill})
			d := dst + cu.DevicePtr(done)
			if k := len(copies) - 1; k >= 0 && copies[k].At+copies[k].N == fill && copies[k].Dst+cu.DevicePtr(copies[k].N) == d {
				copies[k].N += n
			} else {
				copies = append(copies, gpu.Piece{Dst: d, At: fill, N: n})
			}
			fill += n
			done += n
		}
		return nil
	}
	var err error
	for i, p := range pages {
		if dp, ok := t.cache.Pin(p.Key); ok {
			out[i] = dp
			continue
		}
		size := int64(len(p.K))
		var off int64
		if off, _, err = t.allocate(2 * size); err != nil {
			break
		}
		dp := DevicePage{Key: p.Key, K: t.arena.Ptr + cu.DevicePtr(off), V: t.arena.Ptr + cu.DevicePtr(off+size), Size: size, off: off}
		if err = stage(p.K, dp.K); err == nil {
			err = stage(p.V, dp.V)
		}
		if err != nil {
			t.buddy.Free(off)
			break
		}
		stored, inserted, aerr := t.cache.Add(p.Key, dp, 2*size, true)
		if aerr != nil || !inserted {
			t.buddy.Free(off)
			if aerr == nil {
				aerr = fmt.Errorf("page %s: added twice", p.Key)
			}
			err = aerr
			break
		}
		out[i] = stored
		fresh[p.Key] = true
	}
	if ferr := flush(); err == nil {
		err = ferr
	}
	if len(direct) > 0 && err == nil {
		// Straight copies go on their own stream: the first staging
		// buffer's, after whatever it holds.
		if settleErr := settle(0); settleErr != nil {
			err = settleErr
		} else if err = t.ctx.CopyInDirect(direct, t.streams[0]); err == nil {
			err = t.ctx.Sync(t.streams[0])
		}
	}
	for b := range queued {
		if serr := settle(b); err == nil {
			err = serr
		}
	}
	if err != nil {
		// Every copy has settled. Pages this call added may hold no bytes
		// (their copies were never issued): drop them, so that no later
		// call finds them; the others only lose this call's pin.
		for _, dp := range out {
			if dp.Size > 0 {
				t.cache.Unpin(dp.Key)
			}
		}
		for key := range fresh {
			if dp, rerr := t.cache.Remove(key); rerr == nil {
				t.buddy.Free(dp.off)
			}
		}
		return nil, fmt.Errorf("device tier: promote: %w", err)
	}
	return out, nil
}

// stagedCopy is host bytes bound for offset at of a staging buffer.
type stagedCopy struct {
	src []byte
	at  int
}

// fillParallel copies each fill into dst, split among goroutines: one core
// copies memory at a fraction of the DMA engine's rate.
func (t *DeviceTier) fillParallel(dst []byte, fills []stagedCopy) {
	workers := min(runtime.GOMAXPROCS(0), 16)
	total := 0
	for _, f := range fills {
		total += len(f.src)
	}
	if workers <= 1 || total < 1<<20 {
		for _, f := range fills {
			copy(dst[f.at:], f.src)
		}
		return
	}
	// Cut the byte range [0, total) into equal spans, one per worker.
	var wg sync.WaitGroup
	span := (total + workers - 1) / workers
	for w := range workers {
		lo, hi := w*span, min(total, (w+1)*span)
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pos := 0
			for _, f := range fills {
				a, b := max(lo, pos), min(hi, pos+len(f.src))
				if a < b {
					copy(dst[f.at+a-pos:], f.src[a-pos:b-pos])
				}
				pos += len(f.src)
			}
		}()
	}
	wg.Wait()
}

// allocate takes n bytes from the arena, evicting unpinned pages until
// they fit.
func (t *DeviceTier) allocate(n int64) (int64, int64, error) {
	for {
		off, size, err := t.buddy.Allocate(n)
		if err == nil {
			return off, size, nil
		}
		if !errors.Is(err, ErrOutOfMemory) || !t.cache.EvictOne() {
			return 0, 0, fmt.Errorf("%d bytes: %w", n, ErrNoSpace)
		}
	}
}

// Drop evicts every unpinned page.
func (t *DeviceTier) Drop() {
	for t.cache.EvictOne() {
	}
}

// Read copies a device page back to host memory (K then V into k and v).
func (t *DeviceTier) Read(dp DevicePage, k, v []byte) error {
	if err := t.ctx.CopyOutSync(k[:dp.Size], dp.K); err != nil {
		return err
	}
	return t.ctx.CopyOutSync(v[:dp.Size], dp.V)
}
