//go:build cuda

// Package devicetest tests storage.DeviceTier on a GPU. It is its own
// package so that storage's tests (and their TestMain) build without CUDA.
package devicetest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/kvflow/kvflow/gpu"
	"github.com/kvflow/kvflow/storage"
)

var ctx *gpu.Context

func TestMain(m *testing.M) {
	c, err := gpu.Open(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "device tier tests need a GPU:", err)
		os.Exit(1)
	}
	ctx = c
	code := m.Run()
	c.Close()
	os.Exit(code)
}

func pages(n, size int, seed uint64) []*storage.Page {
	rng := rand.New(rand.NewPCG(seed, 3))
	var ps []*storage.Page
	for i := range n {
		k, v := make([]byte, size), make([]byte, size)
		for j := range k {
			k[j], v[j] = byte(rng.Uint32()), byte(rng.Uint32())
		}
		ps = append(ps, &storage.Page{Key: storage.PageKey{Block: storage.BlockKey(seed<<20 | uint64(i)), Layer: 0}, K: k, V: v})
	}
	return ps
}

// Promoted pages read back bit-exact; a page promoted again is pinned, not
// copied; a full tier evicts unpinned pages (in LRU order) and refuses when
// everything is pinned.
func TestDeviceTierPromote(t *testing.T) {
	var evicted []storage.PageKey
	tier, err := storage.NewDeviceTier(ctx, storage.DeviceOptions{Capacity: 8 << 20, StagingBuffers: 2, StagingBytes: 1 << 20,
		OnEvict: func(p storage.DevicePage) { evicted = append(evicted, p.Key) }})
	if err != nil {
		t.Fatal(err)
	}
	defer tier.Close()
	ps := pages(12, 256<<10, 1) // 12 × 512 KiB: 6 MiB, several staging buffers' worth
	dps, err := tier.Promote(ps)
	if err != nil {
		t.Fatal(err)
	}
	checkRoundTrip(t, tier, dps, ps)
	again, err := tier.Promote(ps[:2])
	if err != nil || again[0] != dps[0] || again[1] != dps[1] {
		t.Fatalf("promoting resident pages again: %v, %+v", err, again)
	}
	for _, p := range ps {
		tier.Unpin(p.Key)
	}
	tier.Unpin(ps[0].Key)
	tier.Unpin(ps[1].Key)
	// 8 more pages of 512 KiB need room: the least recently used go.
	more := pages(8, 256<<10, 2)
	if _, err := tier.Promote(more); err != nil {
		t.Fatal(err)
	}
	if len(evicted) == 0 {
		t.Fatal("nothing evicted for 4 MiB over an 8 MiB tier holding 6 MiB")
	}
	// Everything pinned now: 16 more pages cannot fit. The pages the failed
	// call did add are dropped (their bytes may never have been copied),
	// not left for a later call to find.
	failed := pages(16, 256<<10, 3)
	if _, err := tier.Promote(failed); !errors.Is(err, storage.ErrNoSpace) {
		t.Fatalf("promote into a tier full of pinned pages: %v, want ErrNoSpace", err)
	}
	for _, p := range failed {
		if _, ok := tier.Pin(p.Key); ok {
			t.Fatalf("page %s of a failed promotion is still in the tier", p.Key)
		}
	}
}

// checkRoundTrip reads each device page back and compares it with the
// host page it came from.
func checkRoundTrip(t *testing.T, tier *storage.DeviceTier, dps []storage.DevicePage, ps []*storage.Page) {
	t.Helper()
	for i, dp := range dps {
		k, v := make([]byte, dp.Size), make([]byte, dp.Size)
		if err := tier.Read(dp, k, v); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k, ps[i].K) || !bytes.Equal(v, ps[i].V) {
			t.Fatalf("page %d differs after the round trip", i)
		}
	}
}

// arenaPages carves n pages of K and V halves of size bytes out of one
// allocation, as the host tier's arena holds them.
func arenaPages(n, size int, seed uint64) ([]byte, []*storage.Page) {
	mem := make([]byte, 2*n*size)
	rng := rand.New(rand.NewPCG(seed, 5))
	for i := 0; i < len(mem); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			mem[i+j] = byte(v >> (8 * j))
		}
	}
	var ps []*storage.Page
	for i := range n {
		k := mem[2*i*size : (2*i+1)*size : (2*i+1)*size]
		v := mem[(2*i+1)*size : (2*i+2)*size : (2*i+2)*size]
		ps = append(ps, &storage.Page{Key: storage.PageKey{Block: storage.BlockKey(seed<<20 | uint64(i))}, K: k, V: v})
	}
	return mem, ps
}

// Pages in registered host memory go to the device by DMA straight from
// where they are, and read back bit-exact; unregistered ones in the same
// call still go through the staging buffers.
func TestDeviceTierPromoteRegistered(t *testing.T) {
	tier, err := storage.NewDeviceTier(ctx, storage.DeviceOptions{Capacity: 16 << 20, StagingBuffers: 2, StagingBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer tier.Close()
	mem, ps := arenaPages(8, 256<<10, 7)
	if err := tier.RegisterHost(mem); err != nil {
		t.Fatal(err)
	}
	mixed := append(ps, pages(4, 256<<10, 8)...)
	dps, err := tier.Promote(mixed)
	if err != nil {
		t.Fatal(err)
	}
	checkRoundTrip(t, tier, dps, mixed)
}

// BenchmarkPromote promotes 1 GiB of 8B-shaped pages (128 KiB K + 128 KiB
// V) from ordinary host memory to the device through the tier, against a
// 1 GiB copy from pinned memory measured in the same run. Metrics:
// promote_GB/s, pinned_GB/s, ratio.
func BenchmarkPromote(b *testing.B) {
	const total, half = 1 << 30, 128 << 10
	ps := pages(total/(2*half), half, 4)
	dst, err := ctx.Alloc(total)
	if err != nil {
		b.Fatal(err)
	}
	pinned, err := ctx.AllocPinned(total)
	if err != nil {
		b.Fatal(err)
	}
	s, _ := ctx.NewStream()
	pinnedRate := 0.0
	tm, _ := ctx.NewTimer()
	for range 3 {
		ctx.Start(tm, s)
		if err := ctx.CopyIn(dst.Ptr, pinned.Bytes, s); err != nil {
			b.Fatal(err)
		}
		secs, err := ctx.Stop(tm, s)
		if err != nil {
			b.Fatal(err)
		}
		pinnedRate = max(pinnedRate, total/secs)
	}
	ctx.DestroyStream(s)
	ctx.FreePinned(pinned)
	ctx.Free(dst)
	mem, regPages := arenaPages(total/(2*half), half, 9)
	for _, st := range []struct {
		n, size    int
		registered bool
	}{{4, 64 << 20, false}, {4, 128 << 20, false}, {8, 64 << 20, false}, {4, 64 << 20, true}} {
		name := fmt.Sprintf("staging%dx%dMiB", st.n, st.size>>20)
		src := ps
		if st.registered {
			name, src = "registered", regPages
		}
		b.Run(name, func(b *testing.B) {
			tier, err := storage.NewDeviceTier(ctx, storage.DeviceOptions{Capacity: 2 << 30, StagingBuffers: st.n, StagingBytes: st.size})
			if err != nil {
				b.Fatal(err)
			}
			defer tier.Close()
			if st.registered {
				if err := tier.RegisterHost(mem); err != nil {
					b.Fatal(err)
				}
			}
			ps := src
			b.SetBytes(total)
			for b.Loop() {
				b.StopTimer()
				for _, p := range ps { // make room: promotion must copy every page
					tier.Unpin(p.Key)
				}
				tier.Drop()
				b.StartTimer()
				if _, err := tier.Promote(ps); err != nil {
					b.Fatal(err)
				}
			}
			rate := float64(total) * float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(rate/1e9, "promote_GB/s")
			b.ReportMetric(pinnedRate/1e9, "pinned_GB/s")
			b.ReportMetric(rate/pinnedRate, "ratio")
		})
	}
}
