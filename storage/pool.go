package storage

import (
	"fmt"
	"sync"

	"github.com/kvflow/kvflow/tensor"
)

// Pool allocates typed tensors out of an arena and frees them back: the
// buffers kvflow's stages work in (align's fresh K/V pages) come from one
// bounded, measured region instead of the Go heap. Safe for concurrent use.
type Pool struct {
	arena *Arena

	mu    sync.Mutex
	stats PoolStats // guarded by mu; Arena is filled in by Stats
}

// PoolStats are a pool's counters, with its arena's.
type PoolStats struct {
	LiveTensors int64  `json:"live_tensors"`
	LiveBytes   int64  `json:"live_bytes"` // requested bytes of live tensors
	Allocs      uint64 `json:"allocs"`
	Frees       uint64 `json:"frees"`
	Failures    uint64 `json:"failures"`
	Arena       BuddyStats
}

// NewPool returns a pool over a.
func NewPool(a *Arena) *Pool { return &Pool{arena: a} }

// Tensor is a tensor allocated from a Pool. Its Data is 64-byte aligned, and
// 4 KiB aligned when it is at least 4 KiB, so SIMD loads and page-sized
// copies never straddle a line or a page needlessly. Data is not zeroed.
type Tensor struct {
	tensor.Tensor
	off   int64
	n     int64 // bytes requested, whatever the caller does to Data
	pool  *Pool
	freed bool // guarded by pool.mu
}

// Memory returns the memory the pool's tensors live in (its arena), for
// registering with a device's DMA engines.
func (p *Pool) Memory() []byte { return p.arena.Memory() }

// Alloc returns a tensor of shape and dtype.
func (p *Pool) Alloc(shape []int, dt tensor.DType) (*Tensor, error) {
	n, err := tensor.Size(shape, dt)
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	align := int64(64)
	if n >= 4096 {
		align = 4096
	}
	// An empty tensor still takes a block of its own, so Free works the same.
	blk, err := p.arena.AllocAligned(max(n, 1), align)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.stats.Failures++
		return nil, fmt.Errorf("pool: tensor %v %v of %d bytes (%d live tensors, %d bytes): %w",
			shape, dt, n, p.stats.LiveTensors, p.stats.LiveBytes, err)
	}
	p.stats.Allocs++
	p.stats.LiveTensors++
	p.stats.LiveBytes += n
	t := &Tensor{off: blk.Off, n: n, pool: p}
	t.Shape = append([]int(nil), shape...)
	t.DType = dt
	t.Data = blk.Bytes[:n:n]
	return t, nil
}

// Free returns t's memory to the pool. Freeing twice, or a tensor of another
// pool, is an error; t's Data must not be used afterwards.
func (p *Pool) Free(t *Tensor) error {
	if t == nil || t.pool != p {
		return fmt.Errorf("pool: free of a tensor from another pool: %w", ErrInvalidFree)
	}
	// Mark first: freeing the offset twice could free a block the arena has
	// since handed to someone else.
	p.mu.Lock()
	if t.freed {
		p.mu.Unlock()
		return fmt.Errorf("pool: tensor freed twice: %w", ErrInvalidFree)
	}
	t.freed = true
	p.mu.Unlock()
	n := t.n
	if err := p.arena.Free(t.off); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	p.mu.Lock()
	p.stats.Frees++
	p.stats.LiveTensors--
	p.stats.LiveBytes -= n
	p.mu.Unlock()
	return nil
}

// Stats returns the pool's counters and its arena's.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	s := p.stats
	p.mu.Unlock()
	s.Arena = p.arena.Stats()
	return s
}
