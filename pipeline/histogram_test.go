package pipeline

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketLayout(t *testing.T) {
	// Buckets tile [0, MaxInt64) without gaps.
	prevHi := int64(0)
	for i := range numBuckets {
		lo, hi := bucketBounds(i)
		if lo != prevHi || hi <= lo {
			t.Fatalf("bucket %d = [%d, %d), previous ended at %d", i, lo, hi, prevHi)
		}
		prevHi = hi
		if i > 0 && i < numBuckets-1 {
			if w := float64(hi-lo) / float64(lo); w > 1.0/subBuckets {
				t.Fatalf("bucket %d = [%d, %d) is %.2f%% wide", i, lo, hi, 100*w)
			}
		}
	}
	if prevHi != math.MaxInt64 {
		t.Fatalf("buckets end at %d", prevHi)
	}
	if lo, _ := bucketBounds(numBuckets - 1); time.Duration(lo) < time.Hour {
		t.Errorf("overflow starts at %v, want >= 1h", time.Duration(lo))
	}
	// Every value lands in the bucket that covers it.
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		v := int64(math.Exp(r.Float64() * math.Log(float64(1<<50))))
		lo, hi := bucketBounds(bucketOf(v))
		if v < lo || v >= hi {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, bucketOf(v), lo, hi)
		}
	}
	for _, v := range []int64{0, 1, 1<<minExp - 1, 1 << minExp, 1<<maxExp - 1, 1 << maxExp, math.MaxInt64} {
		lo, hi := bucketBounds(bucketOf(v))
		if v < lo || (v >= hi && hi != math.MaxInt64) {
			t.Errorf("value %d in bucket %d = [%d, %d)", v, bucketOf(v), lo, hi)
		}
	}
}

// TestQuantileAccuracy compares estimates with exact quantiles of log-uniform samples from 2µs
// to 10min: each must be within half a bucket, 1/64 relative.
func TestQuantileAccuracy(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var h histogram
	const n = 200000
	samples := make([]time.Duration, n)
	lo, hi := math.Log(2e3), math.Log(6e11)
	for i := range samples {
		samples[i] = time.Duration(math.Exp(lo + r.Float64()*(hi-lo)))
		h.record(samples[i])
	}
	slices.Sort(samples)
	qs := []float64{0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1}
	est, maxd := h.quantiles(qs...)
	if maxd != samples[n-1] {
		t.Errorf("max = %v, want %v", maxd, samples[n-1])
	}
	for i, q := range qs {
		exact := samples[int(math.Ceil(q*n))-1]
		if err := math.Abs(float64(est[i]-exact)) / float64(exact); err > 1.0/64 {
			t.Errorf("q%.3f: estimate %v, exact %v: error %.2f%%", q, est[i], exact, 100*err)
		}
	}
}

func TestQuantileEdges(t *testing.T) {
	var h histogram
	if est, maxd := h.quantiles(0.5); est[0] != 0 || maxd != 0 {
		t.Errorf("empty histogram: %v %v", est, maxd)
	}
	h.record(-time.Second) // a stepped clock counts as zero
	h.record(300 * time.Nanosecond)
	if est, maxd := h.quantiles(0.5, 1); est[0] > maxd || est[1] != maxd || maxd != 300*time.Nanosecond {
		t.Errorf("sub-µs values: estimates %v max %v", est, maxd)
	}
	h.record(2 * time.Hour) // beyond the range: reported as the max
	if est, maxd := h.quantiles(1); est[0] != 2*time.Hour || maxd != 2*time.Hour {
		t.Errorf("overflow: estimate %v max %v, want 2h", est[0], maxd)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h histogram
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(1)
		for pb.Next() {
			d = (d*7 + 13) & (1<<30 - 1)
			h.record(d)
		}
	})
}
