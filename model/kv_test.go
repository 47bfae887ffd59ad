package model

import (
	"slices"
	"testing"
)

// TestGrowPages: Grow adds zeroed pages of PageBytes, K and V, from one
// allocation per call, each page capped at its end (an append to one never
// writes into the next), and leaves the pages it had.
func TestGrowPages(t *testing.T) {
	kv := NewPagedKV(tinyConfig, BF16, 4)
	if err := kv.Grow(5); err != nil {
		t.Fatal(err)
	}
	first := kv.K[0]
	first[0] = 7
	if err := kv.Grow(17); err != nil {
		t.Fatal(err)
	}
	if len(kv.K) != 5 || len(kv.V) != 5 {
		t.Fatalf("%d K and %d V pages for 17 tokens of 4, want 5", len(kv.K), len(kv.V))
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
	_ = append(kv.K[2], 1, 2, 3)
	if kv.K[3][0] != 0 {
		t.Error("an append to one page wrote into the next")
	}
	if err := kv.Grow(3); err != nil || len(kv.K) != 5 {
		t.Errorf("Grow to fewer tokens: %v, %d pages", err, len(kv.K))
	}
}
