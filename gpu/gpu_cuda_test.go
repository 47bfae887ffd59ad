//go:build cuda

package gpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gorgonia.org/cu"

	"github.com/kvflow/kvflow/model"
)

// testCtx is the context every test and benchmark of the package shares.
var testCtx *Context

func TestMain(m *testing.M) {
	c, err := Open(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu tests need a GPU:", err)
		os.Exit(1)
	}
	testCtx = c
	code := m.Run()
	c.Close()
	os.Exit(code)
}

// randomKV returns a cache of tokens tokens with random bf16 keys and
// values, and a random query for the token after them.
func randomKV(rng *rand.Rand, cfg model.Config, block, tokens int) (*model.PagedKV, []float32) {
	kv := model.NewPagedKV(cfg, model.BF16, block)
	kv.Grow(tokens)
	row := make([]float32, kv.PageBytes()/2)
	for p := range kv.K {
		for _, page := range [][]byte{kv.K[p], kv.V[p]} {
			for i := range row {
				row[i] = float32(rng.NormFloat64())
			}
			model.BF16.Encode(page, row)
		}
	}
	// The slots past the context hold NaN: no kernel may let them count.
	nan := make([]float32, cfg.HeadDim)
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	last := len(kv.K) - 1
	for slot := tokens - last*block; slot < block; slot++ {
		for g := range cfg.NumKVHeads {
			kv.PutKey(kv.K[last], g, slot, nan)
			off := (g*block + slot) * cfg.HeadDim * 2
			model.BF16.Encode(kv.V[last][off:off+cfg.HeadDim*2], nan)
		}
	}
	q := make([]float32, cfg.NumHeads*cfg.HeadDim)
	for i := range q {
		q[i] = float32(rng.NormFloat64())
	}
	return kv, q
}

// The GPU kernel against the CPU kernel over the same bf16 pages: every
// supported head layout, odd context lengths, a batch of different
// lengths.
func TestDecoderMatchesCPU(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for _, c := range []struct {
		name                string
		heads, kvHeads, dim int
		block               int
		lens                []int
	}{
		{"8B GQA 4:1", 32, 8, 128, 64, []int{1, 63, 64, 65, 1000, 4097}},
		{"2B GQA 2:1", 16, 8, 128, 16, []int{5, 117, 300}},
		{"MHA d64", 4, 4, 64, 16, []int{17, 33}},
		{"tiny GQA 4:1 d32", 8, 2, 32, 16, []int{36, 41}},
		{"GQA 8:1", 16, 2, 128, 32, []int{777}},
		{"keys in rows (block 24)", 32, 8, 128, 24, []int{1, 23, 25, 500}},
		{"keys in rows d64 (block 8)", 8, 2, 64, 8, []int{3, 41}},
		{"tiles d64, block 48 (not a power of two)", 8, 2, 64, 48, []int{47, 48, 49, 300}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := model.Config{HiddenSize: c.heads * c.dim, NumHeads: c.heads, NumKVHeads: c.kvHeads, HeadDim: c.dim, NumLayers: 1,
				RopeTheta: 1e4, MRopeSection: [3]int{c.dim / 2, 0, 0}, RMSNormEps: 1e-6}
			at, err := NewAttender(testCtx, cfg, c.block)
			if err != nil {
				t.Fatal(err)
			}
			defer at.Close()
			cpu, _ := model.NewKernel(cfg, model.Options{})
			var qs []model.Query
			var want [][]float32
			for _, n := range c.lens {
				kv, q := randomKV(rng, cfg, c.block, n)
				qq := model.Query{Q: q, KV: kv, Start: n - 1, Out: make([]float32, len(q))}
				if err := cpu.Attend(qq); err != nil {
					t.Fatal(err)
				}
				want = append(want, slices.Clone(qq.Out))
				clear(qq.Out)
				qs = append(qs, qq)
			}
			for _, variant := range Variants {
				at.d.Variant = variant
				for _, q := range qs {
					clear(q.Out)
				}
				if err := at.Attend(qs...); err != nil {
					t.Fatal(err)
				}
				for i, q := range qs {
					if e := model.RelErr(q.Out, want[i]); e > 1e-3 {
						t.Errorf("context %d, %s: GPU vs CPU relative error %.3g, want <= 1e-3", c.lens[i], variant, e)
					} else {
						t.Logf("context %d, %s: GPU vs CPU relative error %.3g", c.lens[i], variant, e)
					}
				}
			}
		})
	}
}

// Both transformers fixtures, decode steps on the GPU over bf16 pages: the
// outputs stay within 1e-3 of the CPU kernel's on the same pages, and as
// close to transformers as the CPU's.
func TestFixturesOnGPU(t *testing.T) {
	paths, _ := filepath.Glob("../model/testdata/qwen3vl_attn_*.safetensors")
	if len(paths) != 2 {
		t.Fatalf("fixtures: %v", paths)
	}
	for _, path := range paths {
		f, err := model.LoadFixture(path)
		if err != nil {
			t.Fatal(err)
		}
		at, err := NewAttender(testCtx, f.Config, 16)
		if err != nil {
			t.Fatal(err)
		}
		gpu, err := f.VerifyAttender(model.BF16, 16, at)
		at.Close()
		if err != nil {
			t.Fatal(err)
		}
		cpu, err := f.VerifyWith(model.BF16, 16, model.Options{})
		if err != nil {
			t.Fatal(err)
		}
		hd := f.Config.HiddenSize
		s := f.Prefill.Tokens() * hd
		for i := range f.Decode {
			g, c := gpu.Out[s+i*hd:s+(i+1)*hd], cpu.Out[s+i*hd:s+(i+1)*hd]
			if e := model.RelErr(g, c); e > 1e-3 {
				t.Errorf("%s decode %d: GPU vs CPU %.3g, want <= 1e-3", f.Name, i, e)
			}
			if gpu.Decode[i] > cpu.Decode[i]+1e-3 {
				t.Errorf("%s decode %d: GPU %.3g from transformers, CPU %.3g", f.Name, i, gpu.Decode[i], cpu.Decode[i])
			}
		}
		t.Logf("%s (bf16 pages of 16): GPU decode errors vs transformers %v; CPU %v", f.Name, gpu.Decode, cpu.Decode)
	}
}

func TestDecoderErrors(t *testing.T) {
	if _, err := NewDecoder(testCtx, 32, 8, 96, 64); err == nil {
		t.Error("head_dim 96 accepted")
	}
	if _, err := NewDecoder(testCtx, 24, 8, 128, 64); err == nil {
		t.Error("3 query heads per KV head accepted")
	}
	d, err := NewDecoder(testCtx, 32, 8, 128, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b, err := d.NewBatch(1, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer d.FreeBatch(b)
	if err := d.SetPages(b, [][]cu.DevicePtr{{b.q.Ptr}}, [][]cu.DevicePtr{{b.q.Ptr}}, []int{200}); err == nil {
		t.Error("a context longer than the batch's pages accepted")
	}
}

// BenchmarkDecodeGPU measures decode attention on the GPU (Qwen3-VL-8B
// text shape, bf16 pages of 64 tokens, resident in device memory) against
// the device's memory bandwidth measured in the same run by a 1 GiB
// device-to-device copy (read plus write bytes over time, as
// bandwidthTest counts). Rows: ctx<N>/batch<B>/<variant>/f<split factor>.
// Metrics: us/decode, kv_GB/s, copy_GB/s, bw_ratio.
func BenchmarkDecodeGPU(b *testing.B) {
	copyRate := deviceCopyRate(b)
	const heads, kvHeads, dim, block = 32, 8, 128, 64
	d, err := NewDecoder(testCtx, heads, kvHeads, dim, block)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for _, batch := range []int{1, 8} {
		for _, ctx := range []int{8192, 32768} {
			pages := ctx / block
			pageBytes := int64(kvHeads * block * dim * 2)
			kvBytes := int64(batch) * int64(pages) * 2 * pageBytes
			arena, err := testCtx.Alloc(kvBytes)
			if err != nil {
				b.Fatal(err)
			}
			fillDevice(b, arena)
			kt, vt := make([][]cu.DevicePtr, batch), make([][]cu.DevicePtr, batch)
			lens := make([]int, batch)
			for s := range batch {
				for p := range pages {
					base := arena.Ptr + cu.DevicePtr((int64(s*pages+p)*2)*pageBytes)
					kt[s] = append(kt[s], base)
					vt[s] = append(vt[s], base+cu.DevicePtr(pageBytes))
				}
				lens[s] = ctx
			}
			q := make([]float32, batch*heads*dim)
			for i := range q {
				q[i] = float32(i%7) * 0.01
			}
			for _, variant := range Variants {
				for _, factor := range []int{8, 16} {
					b.Run(fmt.Sprintf("ctx%d/batch%d/%s/f%d", ctx, batch, variant, factor), func(b *testing.B) {
						d.Variant, d.SplitFactor = variant, factor
						bt, err := d.NewBatch(batch, pages, d.Splits(batch, pages))
						if err != nil {
							b.Fatal(err)
						}
						defer d.FreeBatch(bt)
						if err := d.SetPages(bt, kt, vt, lens); err != nil {
							b.Fatal(err)
						}
						if err := d.SetQueries(bt, q); err != nil {
							b.Fatal(err)
						}
						tm, err := testCtx.NewTimer()
						if err != nil {
							b.Fatal(err)
						}
						if err := d.Launch(bt, batch, nil); err != nil { // warm-up
							b.Fatal(err)
						}
						const reps = 20
						var secs float64
						for b.Loop() {
							testCtx.Start(tm, nil)
							for range reps {
								if err := d.Launch(bt, batch, nil); err != nil {
									b.Fatal(err)
								}
							}
							s, err := testCtx.Stop(tm, nil)
							if err != nil {
								b.Fatal(err)
							}
							secs += s
						}
						per := secs / float64(b.N*reps)
						b.ReportMetric(per*1e6, "us/decode")
						b.ReportMetric(float64(kvBytes)/per/1e9, "kv_GB/s")
						b.ReportMetric(copyRate/1e9, "copy_GB/s")
						b.ReportMetric(float64(kvBytes)/per/copyRate, "bw_ratio")
					})
				}
			}
			testCtx.Free(arena)
		}
	}
}

// deviceCopyRate times a 1 GiB device-to-device copy and returns its rate
// in bytes (read plus written) per second, the best of five.
func deviceCopyRate(b *testing.B) float64 {
	const n = 1 << 30
	src, err := testCtx.Alloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer testCtx.Free(src)
	dst, err := testCtx.Alloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer testCtx.Free(dst)
	tm, err := testCtx.NewTimer()
	if err != nil {
		b.Fatal(err)
	}
	best := 0.0
	for range 5 {
		testCtx.Start(tm, nil)
		if err := testCtx.Do(func() error { return cu.MemcpyAsync(dst.Ptr, src.Ptr, n, cu.NoStream) }); err != nil {
			b.Fatal(err)
		}
		s, err := testCtx.Stop(tm, nil)
		if err != nil {
			b.Fatal(err)
		}
		best = max(best, 2*n/s)
	}
	return best
}

// fillDevice fills buf with bf16 values from a 64 MiB random pattern.
func fillDevice(b *testing.B, buf *Buffer) {
	rng := rand.New(rand.NewPCG(1, 2))
	pat := make([]byte, min(buf.Size, 64<<20))
	f := make([]float32, len(pat)/2)
	for i := range f {
		f[i] = float32(rng.NormFloat64())
	}
	model.BF16.Encode(pat, f)
	for off := int64(0); off < buf.Size; off += int64(len(pat)) {
		n := min(int64(len(pat)), buf.Size-off)
		if err := testCtx.CopyInSync(buf.Ptr+cu.DevicePtr(off), pat[:n]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHostToDevice measures 1 GiB host-to-device copies from pinned
// and from pageable (Go) memory.
func BenchmarkHostToDevice(b *testing.B) {
	const n = 1 << 30
	dst, err := testCtx.Alloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer testCtx.Free(dst)
	pinned, err := testCtx.AllocPinned(n)
	if err != nil {
		b.Fatal(err)
	}
	defer testCtx.FreePinned(pinned)
	pageable := make([]byte, n)
	for _, c := range []struct {
		name string
		src  []byte
	}{{"pinned", pinned.Bytes}, {"pageable", pageable}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(n)
			for b.Loop() {
				if err := testCtx.CopyInSync(dst.Ptr, c.src); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
