//go:build cuda

package gpu

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"gorgonia.org/cu"
)

// ErrClosed is returned by a Context's methods after Close.
var ErrClosed = errors.New("gpu: context closed")

// Context is one CUDA context on one device. A CUDA context is current on
// one OS thread at a time, so a Context runs every CUDA call on a goroutine
// locked to its own thread; its methods hand the call over and wait. It is
// safe for concurrent use.
type Context struct {
	Device cu.Device
	calls  chan call
	quit   chan struct{}
	done   chan struct{}
	once   sync.Once
}

type call struct {
	fn   func() error
	done chan error
}

// Open creates a context on GPU ordinal.
func Open(ordinal int) (*Context, error) {
	c := &Context{calls: make(chan call), quit: make(chan struct{}), done: make(chan struct{})}
	ready := make(chan error, 1)
	go c.loop(ordinal, ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Context) loop(ordinal int, ready chan<- error) {
	defer close(c.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dev, err := cu.GetDevice(ordinal)
	if err != nil {
		ready <- fmt.Errorf("gpu: device %d: %w", ordinal, err)
		return
	}
	ctx, err := dev.MakeContext(cu.SchedAuto)
	if err != nil {
		ready <- fmt.Errorf("gpu: context on device %d: %w", ordinal, err)
		return
	}
	c.Device = dev
	ready <- nil
	for {
		select {
		case cl := <-c.calls:
			cl.done <- cl.fn()
		case <-c.quit:
			ctx.Destroy()
			return
		}
	}
}

// Do runs fn on the context's thread and returns its error.
func (c *Context) Do(fn func() error) error {
	cl := call{fn: fn, done: make(chan error, 1)}
	select {
	case c.calls <- cl:
		return <-cl.done
	case <-c.done:
		return ErrClosed
	}
}

// Close destroys the context; memory allocated in it is released with it.
func (c *Context) Close() error {
	c.once.Do(func() { close(c.quit) })
	<-c.done
	return nil
}

// Buffer is device memory.
type Buffer struct {
	Ptr  cu.DevicePtr
	Size int64
}

// Alloc allocates n bytes of device memory.
func (c *Context) Alloc(n int64) (*Buffer, error) {
	var p cu.DevicePtr
	err := c.Do(func() (err error) { p, err = cu.MemAlloc(n); return err })
	if err != nil {
		return nil, fmt.Errorf("gpu: alloc %d bytes: %w", n, err)
	}
	return &Buffer{Ptr: p, Size: n}, nil
}

// Free releases b.
func (c *Context) Free(b *Buffer) error {
	return c.Do(func() error { return cu.MemFree(b.Ptr) })
}

// Pinned is page-locked host memory: the DMA engines copy it without a
// staging copy, and copies from it can be asynchronous. Bytes aliases C
// memory, not Go's: it must not be used after Free.
type Pinned struct {
	ptr   unsafe.Pointer
	Bytes []byte
}

// AllocPinned allocates n bytes of page-locked host memory (cuMemHostAlloc,
// which gorgonia.org/cu does not wrap).
func (c *Context) AllocPinned(n int) (*Pinned, error) {
	var p unsafe.Pointer
	err := c.Do(func() error {
		if r := C.cuMemHostAlloc(&p, C.size_t(n), C.CU_MEMHOSTALLOC_PORTABLE); r != C.CUDA_SUCCESS {
			return fmt.Errorf("cuMemHostAlloc: CUresult %d", int(r))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gpu: pinned alloc %d bytes: %w", n, err)
	}
	return &Pinned{ptr: p, Bytes: unsafe.Slice((*byte)(p), n)}, nil
}

// FreePinned releases p.
func (c *Context) FreePinned(p *Pinned) error {
	return c.Do(func() error {
		if r := C.cuMemFreeHost(p.ptr); r != C.CUDA_SUCCESS {
			return fmt.Errorf("cuMemFreeHost: CUresult %d", int(r))
		}
		p.Bytes = nil
		return nil
	})
}

// RegisterHost page-locks existing host memory (cuMemHostRegister) so the
// DMA engines copy straight from it, as from AllocPinned memory: a host
// tier whose arena is registered needs no staging copy. b must stay alive
// and must not move (Go's heap does not move objects) until UnregisterHost.
func (c *Context) RegisterHost(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return c.Do(func() error {
		if r := C.cuMemHostRegister(unsafe.Pointer(&b[0]), C.size_t(len(b)), C.CU_MEMHOSTREGISTER_PORTABLE); r != C.CUDA_SUCCESS {
			return fmt.Errorf("gpu: cuMemHostRegister of %d bytes: CUresult %d", len(b), int(r))
		}
		return nil
	})
}

// UnregisterHost undoes RegisterHost.
func (c *Context) UnregisterHost(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return c.Do(func() error {
		if r := C.cuMemHostUnregister(unsafe.Pointer(&b[0])); r != C.CUDA_SUCCESS {
			return fmt.Errorf("gpu: cuMemHostUnregister: CUresult %d", int(r))
		}
		return nil
	})
}

// Direct is a copy of Src (page-locked host memory) to Dst.
type Direct struct {
	Dst cu.DevicePtr
	Src []byte
}

// CopyInDirect queues the copies on s in one hand-over to the context's
// thread; the sources must stay unchanged until s is synchronised.
func (c *Context) CopyInDirect(copies []Direct, s *Stream) error {
	return c.Do(func() error {
		for _, d := range copies {
			if len(d.Src) == 0 {
				continue
			}
			if err := cu.MemcpyHtoDAsync(d.Dst, unsafe.Pointer(&d.Src[0]), int64(len(d.Src)), s.s); err != nil {
				return err
			}
		}
		return nil
	})
}

// Stream is a CUDA stream: work queued on it runs in order, concurrently
// with other streams and with the host.
type Stream struct{ s cu.Stream }

// NewStream creates a non-blocking stream.
func (c *Context) NewStream() (*Stream, error) {
	var s cu.Stream
	err := c.Do(func() (err error) { s, err = cu.MakeStream(cu.NonBlocking); return err })
	if err != nil {
		return nil, fmt.Errorf("gpu: stream: %w", err)
	}
	return &Stream{s: s}, nil
}

// Sync waits for the work queued on s.
func (c *Context) Sync(s *Stream) error { return c.Do(func() error { return s.s.Synchronize() }) }

// DestroyStream destroys s.
func (c *Context) DestroyStream(s *Stream) error { return c.Do(func() error { return s.s.Destroy() }) }

// CopyIn queues a copy of src (pinned memory) to dst+off on s. It returns
// at once; src must stay unchanged until s is synchronised.
func (c *Context) CopyIn(dst cu.DevicePtr, src []byte, s *Stream) error {
	if len(src) == 0 {
		return nil
	}
	return c.Do(func() error {
		return cu.MemcpyHtoDAsync(dst, unsafe.Pointer(&src[0]), int64(len(src)), s.s)
	})
}

// Piece is a copy of N bytes at offset At of a pinned buffer to Dst.
type Piece struct {
	Dst cu.DevicePtr
	At  int
	N   int
}

// CopyInPieces queues the copies of pieces of src (pinned memory) on s, in
// one hand-over to the context's thread. It returns at once; src must stay
// unchanged until s is synchronised.
func (c *Context) CopyInPieces(src []byte, pieces []Piece, s *Stream) error {
	return c.Do(func() error {
		for _, p := range pieces {
			if p.N == 0 {
				continue
			}
			if err := cu.MemcpyHtoDAsync(p.Dst, unsafe.Pointer(&src[p.At]), int64(p.N), s.s); err != nil {
				return err
			}
		}
		return nil
	})
}

// CopyOut queues a copy of len(dst) bytes at src to dst (pinned memory) on s.
func (c *Context) CopyOut(dst []byte, src cu.DevicePtr, s *Stream) error {
	if len(dst) == 0 {
		return nil
	}
	return c.Do(func() error {
		return cu.MemcpyDtoHAsync(unsafe.Pointer(&dst[0]), src, int64(len(dst)), s.s)
	})
}

// CopyInSync copies src (any host memory) to dst and waits.
func (c *Context) CopyInSync(dst cu.DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return c.Do(func() error { return cu.MemcpyHtoD(dst, unsafe.Pointer(&src[0]), int64(len(src))) })
}

// CopyOutSync copies len(dst) bytes at src to dst (any host memory) and waits.
func (c *Context) CopyOutSync(dst []byte, src cu.DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	return c.Do(func() error { return cu.MemcpyDtoH(unsafe.Pointer(&dst[0]), src, int64(len(dst))) })
}

// CopyDevice copies n bytes from src to dst on the device and waits.
func (c *Context) CopyDevice(dst, src cu.DevicePtr, n int64) error {
	return c.Do(func() error {
		if err := cu.MemcpyDtoD(dst, src, n); err != nil {
			return err
		}
		return cu.Synchronize()
	})
}

// Timer measures GPU time between two points of a stream with events.
type Timer struct{ start, stop cu.Event }

// NewTimer creates the timer's events.
func (c *Context) NewTimer() (*Timer, error) {
	t := &Timer{}
	err := c.Do(func() (err error) {
		if t.start, err = cu.MakeEvent(cu.DefaultEvent); err != nil {
			return err
		}
		t.stop, err = cu.MakeEvent(cu.DefaultEvent)
		return err
	})
	return t, err
}

// Start records the start event on s (nil: the default stream).
func (c *Context) Start(t *Timer, s *Stream) error {
	return c.Do(func() error { return t.start.Record(stream(s)) })
}

// Stop records the stop event on s, waits for it and returns the seconds
// since Start.
func (c *Context) Stop(t *Timer, s *Stream) (float64, error) {
	var ms float64
	err := c.Do(func() error {
		if err := t.stop.Record(stream(s)); err != nil {
			return err
		}
		if err := t.stop.Synchronize(); err != nil {
			return err
		}
		var err error
		ms, err = t.start.Elapsed(t.stop)
		return err
	})
	return ms / 1e3, err
}

func stream(s *Stream) cu.Stream {
	if s == nil {
		return cu.NoStream
	}
	return s.s
}
