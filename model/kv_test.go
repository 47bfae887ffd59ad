package model

import (
	"slices"
	"testing"
	"unsafe"
)

// TestGrowPages: Grow adds zeroed pages of PageBytes, K and V, from one
// allocation per call, each page capped at its end (an append to one never
// writes into the next), and leaves the pages it had.
func TestGrowPages(t *testing.T) {
	// Pages of 40,000 bytes: large objects, which separate allocations
	// never put exactly one after another.
	const bt = 1250
	kv := NewPagedKV(tinyConfig, BF16, bt)
	if err := kv.Grow(bt + 1); err != nil {
		t.Fatal(err)
	}
	first := kv.K[0]
	first[0] = 7
	if err := kv.Grow(4*bt + 1); err != nil {
		t.Fatal(err)
	}
	if len(kv.K) != 5 || len(kv.V) != 5 {
		t.Fatalf("%d K and %d V pages for 4 pages and a token, want 5", len(kv.K), len(kv.V))
	}
	if &kv.K[0][0] != &first[0] || kv.K[0][0] != 7 {
		t.Error("Grow replaced or cleared a page it had")
	}
	pb := kv.PageBytes()
	for i, pages := range [][][]byte{kv.K, kv.V} {
		for j, p := range pages {
			if len(p) != pb || cap(p) != pb {
				t.Errorf("page %d of %d: len %d cap %d, want %d", j, i, len(p), cap(p), pb)
			}
			if (i != 0 || j != 0) && slices.ContainsFunc(p, func(b byte) bool { return b != 0 }) {
				t.Errorf("page %d of %d is not zeroed", j, i)
			}
		}
	}
	// The pages of one Grow lie one after another in one allocation:
	// pages 2-4 of K, then 2-4 of V.
	base := uintptr(unsafe.Pointer(&kv.K[2][0]))
	for i, p := range [][]byte{kv.K[3], kv.K[4], kv.V[2], kv.V[3], kv.V[4]} {
		if uintptr(unsafe.Pointer(&p[0])) != base+uintptr((i+1)*pb) {
			t.Errorf("new page %d is not next to the one before it", i+1)
		}
	}
	_ = append(kv.K[2], 1, 2, 3)
	if kv.K[3][0] != 0 {
		t.Error("an append to one page wrote into the next")
	}
	if err := kv.Grow(3 * bt); err != nil || len(kv.K) != 5 {
		t.Errorf("Grow to fewer tokens: %v, %d pages", err, len(kv.K))
	}
}
