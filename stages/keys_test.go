package stages

import "testing"

func TestBlockKeys(t *testing.T) {
	r := textRequest("a", 20, 0)
	for i := range r.Tokens {
		r.Tokens[i] = int32(i)
	}
	keys := BlockKeys(r, 4)
	if len(keys) != 5 {
		t.Fatalf("%d keys for 20 tokens in blocks of 4", len(keys))
	}
	// A request that shares the first 10 tokens shares exactly 2 full blocks.
	o := textRequest("b", 20, 0)
	copy(o.Tokens, r.Tokens[:10])
	ok := BlockKeys(o, 4)
	if ok[0] != keys[0] || ok[1] != keys[1] || ok[2] == keys[2] {
		t.Fatalf("shared prefix of 10 tokens: keys %v vs %v", ok, keys)
	}
	// An image whose tokens fall in block 2 changes keys from block 2 on.
	img := *r
	img.Images = []ImageRun{{Start: 9, Len: 2, Hash: 42, Grid: [3]int{1, 1, 2}}}
	ik := BlockKeys(&img, 4)
	if ik[0] != keys[0] || ik[1] != keys[1] || ik[2] == keys[2] || ik[4] == keys[4] {
		t.Fatalf("image in block 2: keys %v vs %v", ik, keys)
	}
	// Another image content, or the same content at another grid, too.
	for _, im := range []ImageRun{{Start: 9, Len: 2, Hash: 43, Grid: [3]int{1, 1, 2}}, {Start: 9, Len: 2, Hash: 42, Grid: [3]int{1, 2, 1}}} {
		other := *r
		other.Images = []ImageRun{im}
		if k := BlockKeys(&other, 4); k[1] != keys[1] || k[2] == ik[2] {
			t.Fatalf("image %+v: block 2 key %s, same-image key %s", im, k[2], ik[2])
		}
	}
}
