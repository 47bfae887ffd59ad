package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestKeyTileFor checks which caches get keys in tiles: bf16 pages of a
// multiple of 16 tokens for models whose query heads per KV head are a
// multiple of 4 and whose head_dim is a multiple of 16 up to 256 (what the
// one-call decode routines take); rows for the rest.
func TestKeyTileFor(t *testing.T) {
	cfg := func(heads, kv, d int) Config { return Config{NumHeads: heads, NumKVHeads: kv, HeadDim: d} }
	for _, c := range []struct {
		cfg   Config
		dtype DType
		bt    int
		want  int
	}{
		{cfg(32, 8, 128), BF16, 64, KeyTile}, // Qwen3-VL-8B
		{cfg(32, 4, 128), BF16, 16, KeyTile}, // 8:1
		{cfg(8, 2, 32), BF16, 32, KeyTile},
		{cfg(16, 8, 128), BF16, 64, 1}, // Qwen3-VL-2B: 2:1
		{cfg(4, 4, 128), BF16, 64, 1},  // MHA
		{cfg(32, 8, 128), F32, 64, 1},
		{cfg(32, 8, 128), F16, 64, 1},
		{cfg(32, 8, 128), BF16, 24, 1},
		{cfg(32, 8, 120), BF16, 64, 1},
		{cfg(32, 8, 512), BF16, 64, 1},
		{cfg(32, 0, 128), BF16, 64, 1},
	} {
		if got := KeyTileFor(c.cfg, c.dtype, c.bt); got != c.want {
			t.Errorf("KeyTileFor(%d heads over %d, d %d, %v, block %d) = %d, want %d",
				c.cfg.NumHeads, c.cfg.NumKVHeads, c.cfg.HeadDim, c.dtype, c.bt, got, c.want)
		}
		if kv := NewPagedKV(c.cfg, c.dtype, c.bt); kv.KeyTileTokens() != c.want {
			t.Errorf("NewPagedKV: KeyTileTokens() = %d, want %d", kv.KeyTileTokens(), c.want)
		}
	}
	for _, tile := range []int{-1, 8, 32} {
		kv := &PagedKV{DType: BF16, BlockTokens: 64, KVHeads: 1, HeadDim: 16, KeyTile: tile}
		if err := kv.Grow(1); err == nil {
			t.Errorf("KeyTile %d: Grow gave no error", tile)
		}
	}
	if err := (&PagedKV{DType: BF16, BlockTokens: 24, KVHeads: 1, HeadDim: 16, KeyTile: KeyTile}).Grow(1); err == nil {
		t.Error("KeyTile 16 over pages of 24: Grow gave no error")
	}
}

// TestKeyLayout checks the key page layout: PutKey then Key gives each key
// back, in every dtype; with KeyTile 16 channel c of slot t lies at tile
// t/16, offset c*16 + t%16 (one load holds a channel of 16 tokens),
// otherwise at row t; and untileKeys gives the rows of any prefix of a
// head's keys.
func TestKeyLayout(t *testing.T) {
	for _, c := range []struct {
		dtype     DType
		bt, heads int
		d         int
		tile      int
	}{
		{BF16, 64, 2, 128, KeyTile},
		{BF16, 32, 3, 16, KeyTile},
		{F32, 16, 1, 8, KeyTile},
		{F16, 48, 2, 24, KeyTile},
		{BF16, 24, 2, 16, 1},
		{BF16, 64, 2, 16, 0}, // 0: rows
		{F32, 5, 2, 8, 1},
	} {
		t.Run(fmt.Sprintf("%v_bt%d_d%d_tile%d", c.dtype, c.bt, c.d, c.tile), func(t *testing.T) {
			kv := &PagedKV{DType: c.dtype, BlockTokens: c.bt, KVHeads: c.heads, HeadDim: c.d, KeyTile: c.tile}
			c.tile = max(c.tile, 1)
			if got := kv.KeyTileTokens(); got != c.tile {
				t.Fatalf("KeyTileTokens() = %d, want %d", got, c.tile)
			}
			size := c.dtype.Size()
			page := make([]byte, kv.PageBytes())
			// Key (g, s) channel j holds a value exact in every dtype (at
			// most 8 significant bits), few of them equal.
			val := func(g, s, j int) float32 { return float32((g*37+s*5+j*3)%127) / 2 }
			row := make([]float32, c.d)
			for g := range c.heads {
				for s := range c.bt {
					for j := range row {
						row[j] = val(g, s, j)
					}
					kv.PutKey(page, g, s, row)
				}
			}
			for g := range c.heads {
				for s := range c.bt {
					kv.Key(row, page, g, s)
					for j, x := range row {
						if x != val(g, s, j) {
							t.Fatalf("Key(head %d, slot %d)[%d] = %v, want %v", g, s, j, x, val(g, s, j))
						}
						// Where the layout puts it.
						at := g*c.bt*c.d + (s/c.tile)*c.tile*c.d + j*c.tile + s%c.tile
						one := make([]float32, 1)
						c.dtype.Decode(one, page[at*size:(at+1)*size])
						if one[0] != val(g, s, j) {
							t.Fatalf("element %d holds %v, want head %d slot %d channel %d (%v)", at, one[0], g, s, j, val(g, s, j))
						}
					}
				}
			}
			// untileKeys of every prefix of the last head's keys: rows.
			headBytes := c.bt * c.d * size
			src := page[(c.heads-1)*headBytes : c.heads*headBytes]
			var buf []byte
			for n := 1; n <= c.bt; n++ {
				buf = untileKeys(buf, src, n, c.d, size, c.tile)
				got := make([]float32, n*c.d)
				c.dtype.Decode(got, buf)
				for s := range n {
					for j := range c.d {
						if got[s*c.d+j] != val(c.heads-1, s, j) {
							t.Fatalf("untileKeys(n=%d): row %d channel %d = %v, want %v", n, s, j, got[s*c.d+j], val(c.heads-1, s, j))
						}
					}
				}
			}
			if kb := keyBytes(c.bt-1, c.d, size, c.tile); kb > headBytes || kb < (c.bt-1)*c.d*size {
				t.Errorf("keyBytes(%d) = %d, outside [%d, %d]", c.bt-1, kb, (c.bt-1)*c.d*size, headBytes)
			}
		})
	}
}

// TestKeyPanicsOutside checks that PutKey and Key panic on a head, slot,
// row or page outside the geometry rather than writing or reading another
// key's bytes.
func TestKeyPanicsOutside(t *testing.T) {
	kv := &PagedKV{DType: BF16, BlockTokens: 16, KVHeads: 2, HeadDim: 8, KeyTile: KeyTile}
	page := make([]byte, kv.PageBytes())
	for _, c := range []struct {
		name    string
		g, slot int
		row     []float32
		page    []byte
	}{
		{"head", 2, 0, make([]float32, 8), page},
		{"slot", 0, 16, make([]float32, 8), page},
		{"negative slot", 0, -1, make([]float32, 8), page},
		{"row", 0, 0, make([]float32, 7), page},
		{"page", 0, 0, make([]float32, 8), page[:len(page)-2]},
	} {
		for _, op := range []string{"PutKey", "Key"} {
			t.Run(c.name+"/"+op, func(t *testing.T) {
				before := slices.Clone(page)
				defer func() {
					if recover() == nil {
						t.Errorf("%s did not panic", op)
					}
					if !slices.Equal(page, before) {
						t.Errorf("%s wrote the page before panicking", op)
					}
				}()
				if op == "PutKey" {
					kv.PutKey(c.page, c.g, c.slot, c.row)
				} else {
					kv.Key(c.row, c.page, c.g, c.slot)
				}
			})
		}
	}
}

// TestAttendEitherKeyLayout checks that the kernel gives the same attention
// whichever way the keys are laid out: the same keys written with PutKey
// into pages in rows and into pages in tiles (also for dtypes and groups
// whose NewPagedKV would not choose tiles), decode and prefill, vector and
// Go loops: within 1e-5 of each other.
func TestAttendEitherKeyLayout(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 7))
	for _, c := range []attendCase{
		{"GQA4/bf16/decode", 8, 2, 128, BF16, 64, 200, 1},
		{"GQA4/bf16/prefill", 8, 2, 64, BF16, 32, 40, 30},
		{"GQA2/bf16/decode", 8, 4, 64, BF16, 16, 77, 1},
		{"MHA/f32/prefill", 4, 4, 32, F32, 16, 9, 20},
		{"GQA4/f16/decode", 8, 2, 32, F16, 32, 100, 1},
	} {
		for _, scalar := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/scalar%v", c.name, scalar), func(t *testing.T) {
				tiles, cfg := kernelInput(t, c, rng)
				tiles.KV.KeyTile = KeyTile
				rows := tiles
				rows.KV = &PagedKV{DType: c.dtype, BlockTokens: c.block, KVHeads: c.kvHeads, HeadDim: c.dim, KeyTile: 1}
				if err := rows.KV.Grow(c.start + c.n); err != nil {
					t.Fatal(err)
				}
				key := make([]float32, c.dim)
				for p := range tiles.KV.K {
					copy(rows.KV.V[p], tiles.KV.V[p])
					for g := range c.kvHeads {
						for s := range c.block {
							// kernelInput wrote with NewPagedKV's layout: read
							// those keys back, then write them as tiles.
							NewPagedKV(cfg, c.dtype, c.block).Key(key, tiles.KV.K[p], g, s)
							rows.KV.PutKey(rows.KV.K[p], g, s, key)
						}
					}
					for g := range c.kvHeads {
						for s := range c.block {
							rows.KV.Key(key, rows.KV.K[p], g, s)
							tiles.KV.PutKey(tiles.KV.K[p], g, s, key)
						}
					}
				}
				// Slots past the context hold NaN keys and values: no
				// layout may let them count.
				nan := make([]float32, c.dim)
				for i := range nan {
					nan[i] = float32(math.NaN())
				}
				last, size := len(tiles.KV.K)-1, c.dtype.Size()
				for _, kv := range []*PagedKV{tiles.KV, rows.KV} {
					for slot := c.start + c.n - last*c.block; slot < c.block; slot++ {
						for g := range c.kvHeads {
							kv.PutKey(kv.K[last], g, slot, nan)
							off := (g*c.block + slot) * c.dim * size
							c.dtype.Encode(kv.V[last][off:off+c.dim*size], nan)
						}
					}
				}
				rows.Out = make([]float32, len(tiles.Out))
				k, err := NewKernel(cfg, Options{Scalar: scalar})
				if err != nil {
					t.Fatal(err)
				}
				if err := k.Attend(tiles); err != nil {
					t.Fatal(err)
				}
				if err := k.Attend(rows); err != nil {
					t.Fatal(err)
				}
				for i, x := range tiles.Out {
					if math.IsNaN(float64(x)) {
						t.Fatalf("output %d is NaN: a slot past the context counted", i)
					}
				}
				if e := RelErr(tiles.Out, rows.Out); e > 1e-5 {
					t.Errorf("keys in tiles vs rows: relative error %.3g", e)
				}
				if slices.Equal(tiles.KV.K[0], rows.KV.K[0]) {
					t.Error("the two layouts hold the same bytes: the test compares nothing")
				}
			})
		}
	}
}

// BenchmarkKeyLayoutWrite measures writing a page's keys with PutKey and
// folding them into a PageSummary, for the 8B shape's pages (8 KV heads of
// 128, 64 tokens, bf16) with keys in tiles against the same in rows (the
// baseline). Metric: ns/key for each.
func BenchmarkKeyLayoutWrite(b *testing.B) {
	for _, tile := range []int{1, KeyTile} {
		kv := &PagedKV{DType: BF16, BlockTokens: 64, KVHeads: 8, HeadDim: 128, KeyTile: tile}
		page := make([]byte, kv.PageBytes())
		row := randF32(rand.New(rand.NewPCG(1, 2)), kv.HeadDim)
		b.Run(fmt.Sprintf("tile%d/PutKey", tile), func(b *testing.B) {
			for b.Loop() {
				for g := range kv.KVHeads {
					for s := range kv.BlockTokens {
						kv.PutKey(page, g, s, row)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*kv.KVHeads*kv.BlockTokens), "ns/key")
		})
		b.Run(fmt.Sprintf("tile%d/SummaryUpdate", tile), func(b *testing.B) {
			var s PageSummary
			kv.K = [][]byte{page}
			for b.Loop() {
				s.Reset()
				s.Update(kv, 0, kv.BlockTokens)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*kv.KVHeads*kv.BlockTokens), "ns/key")
		})
	}
}
