// Package membw measures memory read bandwidth, the yardstick for kernels
// that should run at the speed of memory (attention over KV pages).
package membw

import (
	"encoding/binary"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvflow/kvflow/internal/hugepage"
)

//go:generate sh -c "cd ../asm && go run ./membw -out ../../internal/membw/membw_amd64.s"

// Read reads every byte of buf once with the widest loads the CPU has (AVX2
// where present, else a Go loop of uint64 loads with several accumulators)
// and returns a value derived from all of them, so the reads cannot be
// elided: the sum, mod 2^64, of buf's little-endian uint64 words, the last
// partial word (len(buf)%8 bytes) zero-extended. len(buf) any.
func Read(buf []byte) uint64 {
	n := len(buf) &^ 31
	var s uint64
	if n > 0 {
		s = sum32(buf[:n])
	}
	return s + sumTail(buf[n:])
}

// ReadBusy reads buf as Read does and, after each 256 bytes, computes for
// rounds steps of dependent multiply-adds (two chains: a step lasts one
// multiply-add latency, 4 cycles on current x86 cores), asking for each
// line 2 KiB ahead of its loads: a loop that spends a set time computing
// per byte it reads, as an attention kernel does, so that what the memory
// delivers to such a loop can be measured apart from any kernel. It
// returns Read's value of the first len(buf) &^ 255 bytes, which are all
// it reads.
func ReadBusy(buf []byte, rounds int) uint64 {
	n := len(buf) &^ 255
	if n == 0 {
		return 0
	}
	return sumBusy(buf[:n], max(rounds, 0))
}

// sumBusyGo is the portable body of ReadBusy, len(b) a multiple of 256.
func sumBusyGo(b []byte, rounds int) uint64 {
	var s uint64
	var c0, c1 float64
	for len(b) >= 256 {
		s += sumGo(b[:256])
		for range rounds {
			c0 = math.FMA(0, 0, c0)
			c1 = math.FMA(0, 0, c1)
		}
		b = b[256:]
	}
	return s + uint64(c0+c1) // c0 and c1 stay 0
}

// sumGo is the portable body of Read for len(b) a multiple of 32.
func sumGo(b []byte) uint64 {
	var s0, s1, s2, s3 uint64
	for len(b) >= 32 {
		w := b[:32:32]
		s0 += binary.LittleEndian.Uint64(w[0:])
		s1 += binary.LittleEndian.Uint64(w[8:])
		s2 += binary.LittleEndian.Uint64(w[16:])
		s3 += binary.LittleEndian.Uint64(w[24:])
		b = b[32:]
	}
	return (s0 + s1) + (s2 + s3)
}

// sumTail sums the words of b (len(b) < 32), the last one zero-extended.
func sumTail(b []byte) uint64 {
	var s uint64
	for len(b) >= 8 {
		s += binary.LittleEndian.Uint64(b)
		b = b[8:]
	}
	var last [8]byte
	copy(last[:], b)
	return s + binary.LittleEndian.Uint64(last[:])
}

// Bandwidth measures the read bandwidth in bytes/second of workers
// goroutines each reading its own share of a buffer of size bytes
// (allocated and touched once beforehand), repeating passes for at least
// minDuration, and returns the best pass rate. A pass is timed from the
// workers' common start to the last one's end. size < 1 counts as 1,
// workers < 1 as 1.
func Bandwidth(size int, workers int, minDuration time.Duration) float64 {
	return BandwidthOf(size, workers, minDuration, Read)
}

// BandwidthOf is Bandwidth with read in place of Read: the rate in
// bytes/second at which workers goroutines running read over their shares
// of the buffer get through it.
func BandwidthOf(size int, workers int, minDuration time.Duration, read func([]byte) uint64) float64 {
	p := NewPass(size, workers, read)
	defer p.Close()
	best := 0.0
	for begin := time.Now(); ; {
		best = max(best, p.Rate())
		if time.Since(begin) >= minDuration && best > 0 {
			return best
		}
	}
}

// A Pass is a buffer and the goroutines that read it, one share each, kept
// for measuring the bandwidth again and again: next to each run of a
// kernel, on a machine whose other tenants change what memory delivers
// from one second to the next. Its methods must not be called
// concurrently.
type Pass struct {
	size  int
	read  func([]byte) uint64
	start []chan struct{} // one per worker: get ready to read your share once
	// A pass starts in two steps, so that it is timed from a moment all
	// its workers are running: a goroutine woken on an idle core starts
	// 70–100 µs later on a VM (up to 1 ms), 1–15% of a 256 MiB pass, and
	// what is measured is the memory, not the scheduler. Each worker
	// counts itself ready, then spins until begun reaches the pass's number.
	ready atomic.Int32
	begun atomic.Uint64
	wg    sync.WaitGroup
	sums  []uint64 // what each worker's reads returned, so that they are not elided
}

// NewPass allocates and touches a buffer of size bytes (at least 1) and
// starts workers goroutines (at least 1) that read it with read, each its
// own share of whole 64-byte lines where possible, at each call of Rate.
// Close stops them.
func NewPass(size, workers int, read func([]byte) uint64) *Pass {
	size = max(size, 1)
	workers = max(workers, 1)
	buf := make([]byte, size)
	// The backing the arenas that hold KV pages get, so that a kernel
	// reading them is held against memory read the same way.
	hugepage.Advise(buf)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = byte(i >> 12)
	}
	p := &Pass{size: size, read: read}
	share := (size/workers + 63) &^ 63
	for off := 0; off < size; off += share {
		part := buf[off:min(off+share, size)]
		i := len(p.start)
		c := make(chan struct{})
		p.start = append(p.start, c)
		p.sums = append(p.sums, 0)
		go func() {
			for range c {
				want := p.begun.Load() + 1
				p.ready.Add(1)
				spinUntil(func() bool { return p.begun.Load() >= want })
				p.sums[i] += p.read(part)
				p.wg.Done()
			}
		}()
	}
	return p
}

// Rate reads the whole buffer once and returns the rate in bytes/second,
// timed from the workers' common start, once all are running, to the last
// one's end (0 if the clock did not move).
func (p *Pass) Rate() float64 {
	p.wg.Add(len(p.start))
	p.ready.Store(0)
	for _, c := range p.start {
		c <- struct{}{}
	}
	n := int32(len(p.start))
	spinUntil(func() bool { return p.ready.Load() == n })
	t0 := time.Now()
	p.begun.Add(1)
	p.wg.Wait()
	el := time.Since(t0).Seconds()
	if el <= 0 {
		return 0
	}
	return float64(p.size) / el
}

// spinUntil polls done, yielding to the scheduler now and then so that
// the goroutines it waits for can run on this P.
func spinUntil(done func() bool) {
	for i := 1; !done(); i++ {
		if i%64 == 0 {
			runtime.Gosched()
		}
	}
}

// Close stops the workers.
func (p *Pass) Close() {
	for _, c := range p.start {
		close(c)
	}
	runtime.KeepAlive(p.sums)
}
