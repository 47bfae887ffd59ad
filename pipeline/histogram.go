package pipeline

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram is a fixed log-linear latency histogram with lock-free recording.
//
// Durations are bucketed in nanoseconds: every power-of-two range [2^e, 2^(e+1)) between
// 2^minExp ns (~1µs) and 2^maxExp ns (~73min) is split into subBuckets equal-width buckets,
// so a bucket is at most 1/subBuckets (~3%) as wide as its lower bound. Values below the range
// share bucket 0, values above it the last bucket. Reporting a bucket's midpoint therefore
// errs by at most half that, ~1.6%, for values within the range.
//
// The fixed layout (8 KiB of counters) keeps record to a few instructions and one atomic add,
// which matters because every Process call records.
type histogram struct {
	counts [numBuckets]atomic.Uint64
	max    atomic.Int64 // largest value recorded, in ns
}

const (
	subBits    = 5
	subBuckets = 1 << subBits
	minExp     = 10 // 2^10 ns = 1.024µs
	maxExp     = 42 // 2^42 ns ≈ 73min
	numBuckets = 1 + (maxExp-minExp)*subBuckets + 1
)

// bucketOf returns the index of the bucket holding ns.
func bucketOf(ns int64) int {
	if ns < 1<<minExp {
		return 0
	}
	e := bits.Len64(uint64(ns)) - 1 // 2^e <= ns < 2^(e+1)
	if e >= maxExp {
		return numBuckets - 1
	}
	sub := int(ns>>(e-subBits)) & (subBuckets - 1)
	return 1 + (e-minExp)*subBuckets + sub
}

// bucketBounds returns the half-open range [lo, hi) of bucket i in ns.
func bucketBounds(i int) (lo, hi int64) {
	switch {
	case i <= 0:
		return 0, 1 << minExp
	case i >= numBuckets-1:
		return 1 << maxExp, math.MaxInt64
	}
	e := (i-1)/subBuckets + minExp
	sub := int64((i - 1) % subBuckets)
	shift := e - subBits
	return (subBuckets + sub) << shift, (subBuckets + sub + 1) << shift
}

// record adds one observation. Negative durations (a clock that stepped) count as zero.
func (h *histogram) record(d time.Duration) {
	ns := max(int64(d), 0)
	h.counts[bucketOf(ns)].Add(1)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			return
		}
	}
}

// quantiles returns an estimate for each q in qs (0 < q <= 1) and the maximum. The estimate is
// the midpoint of the bucket holding the observation of rank ceil(q*n), capped at the maximum.
// Concurrent records may or may not be included; the result is consistent with the counts read.
func (h *histogram) quantiles(qs ...float64) (est []time.Duration, maxd time.Duration) {
	var counts [numBuckets]uint64
	var n uint64
	for i := range counts {
		counts[i] = h.counts[i].Load()
		n += counts[i]
	}
	maxd = time.Duration(h.max.Load())
	est = make([]time.Duration, len(qs))
	if n == 0 {
		return est, maxd
	}
	for j, q := range qs {
		rank := max(uint64(math.Ceil(q*float64(n))), 1)
		var cum uint64
		for i, c := range counts {
			cum += c
			if cum < rank {
				continue
			}
			lo, hi := bucketBounds(i)
			v := time.Duration(lo + (hi-lo)/2)
			if i == numBuckets-1 || v > maxd {
				v = maxd
			}
			est[j] = v
			break
		}
	}
	return est, maxd
}
