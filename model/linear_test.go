package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"testing"
)

// TestLinear checks both sets' projections against float64 sums: token
// counts around the vector blocks' 4 and the tile of 32 (with and without
// tokens past the last 4), row counts around the blocks of 3 and of 8 (with
// and without rows past the last block), in a multiple of 8 (the vector
// blocks) or not (the Go loops).
func TestLinear(t *testing.T) {
	r := kernelRand(t)
	sets := []*kernels{goKernels}
	if vecKernels != nil {
		sets = append(sets, vecKernels)
	}
	for _, ks := range sets {
		for _, c := range []struct{ n, in, out int }{
			{1, 8, 1}, {1, 64, 4}, {2, 64, 5}, {3, 16, 7}, {5, 2048, 9},
			{33, 128, 12}, {70, 40, 6}, {4, 12, 3}, {1, 2048, 1024},
			{4, 64, 7}, {8, 64, 8}, {36, 64, 10}, {6, 8, 17}, {67, 32, 11},
		} {
			t.Run(fmt.Sprintf("%s/n%d_in%d_out%d", ks.name, c.n, c.in, c.out), func(t *testing.T) {
				x := randF32(r, c.n*c.in)
				w := randF32(r, c.out*c.in)
				y := make([]float32, c.n*c.out+1)
				y[len(y)-1] = 42 // past the end: must stay
				ks.linear(y[:c.n*c.out], x, w, c.n, c.in, c.out)
				for tk := range c.n {
					for o := range c.out {
						var want float64
						for i := range c.in {
							want += float64(x[tk*c.in+i]) * float64(w[o*c.in+i])
						}
						got := float64(y[tk*c.out+o])
						if math.Abs(got-want) > 1e-5*math.Sqrt(float64(c.in)) {
							t.Fatalf("y[%d][%d] = %v, want %v", tk, o, got, want)
						}
					}
				}
				if y[len(y)-1] != 42 {
					t.Errorf("linear wrote past y[:n*out]")
				}
			})
		}
	}
}

// TestAssemblyRegisters checks that the generated assembly names no vector
// register above 15: avo allocates the AVX-512 ones when it runs out, and
// their encodings fault on AVX2-only CPUs, which the vector set targets.
func TestAssemblyRegisters(t *testing.T) {
	src, err := os.ReadFile("kernels_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`\b[XYZ](1[6-9]|2[0-9]|3[01])\b|\bZ[0-9]+\b|\bK[1-7]\b`).Find(src); m != nil {
		t.Errorf("kernels_amd64.s uses %s, which needs AVX-512", m)
	}
}

// BenchmarkLinear times the q projection of Qwen3-VL-2B (2,048 by 2,048
// float32 weights, 16 MiB) for 1 token (decode: the weights stream from
// memory once), 7 (a short chunk: 4 tokens and 3 more in one pass over the
// weights) and 64 and 256 (a prefill chunk: the arithmetic), with
// the Go loops (the baseline) and the vector ones, in the same run;
// GFLOP/s counts 2 per multiply-add.
func BenchmarkLinear(b *testing.B) {
	const in, out = 2048, 2048
	r := rand.New(rand.NewPCG(1, 2))
	w := randF32(r, out*in)
	for _, n := range []int{1, 7, 64, 256} {
		x := randF32(r, n*in)
		y := make([]float32, n*out)
		for _, ks := range []*kernels{goKernels, vecKernels} {
			if ks == nil {
				continue
			}
			b.Run(fmt.Sprintf("%s/n%d", ks.name, n), func(b *testing.B) {
				for b.Loop() {
					ks.linear(y, x, w, n, in, out)
				}
				b.ReportMetric(2*float64(n*in*out)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// TestScalarProjections checks that Options.Scalar reaches the
// projections: a layer built with it computes them with the Go loops, bit
// for bit, and one built without with the vector loops where the CPU has
// them (the two sum in different orders, so on random inputs their
// results differ in the last bits).
func TestScalarProjections(t *testing.T) {
	cfg := Config{HiddenSize: 256, NumHeads: 4, NumKVHeads: 2, HeadDim: 64, NumLayers: 1,
		RopeTheta: 5e6, MRopeSection: [3]int{12, 10, 10}, RMSNormEps: 1e-6}
	w := RandomWeights(cfg, 0, 3)
	const n = 5
	x := randFloats(n*cfg.HiddenSize, 9)
	for _, c := range []struct {
		opts Options
		want *kernels
	}{{Options{Scalar: true}, goKernels}, {Options{}, defaultKernels()}} {
		a, err := NewAttentionWith(cfg, w, c.opts)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]float32, n*cfg.QueryDim())
		want := make([]float32, len(got))
		a.linear(got, x, w.Q, n, cfg.HiddenSize, cfg.QueryDim())
		c.want.linear(want, x, w.Q, n, cfg.HiddenSize, cfg.QueryDim())
		if !slices.Equal(got, want) {
			t.Errorf("Scalar %v: the layer's projections are not the %s loops'", c.opts.Scalar, c.want.name)
		}
	}
	// WithKernel gives the layer the kernel's loops.
	base, err := NewAttention(cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewKernel(cfg, Options{Scalar: true})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, n*cfg.QueryDim())
	want := make([]float32, len(got))
	base.WithKernel(k).linear(got, x, w.Q, n, cfg.HiddenSize, cfg.QueryDim())
	goKernels.linear(want, x, w.Q, n, cfg.HiddenSize, cfg.QueryDim())
	if !slices.Equal(got, want) {
		t.Error("WithKernel(a Scalar kernel): the layer's projections are not the Go loops'")
	}
	if vecKernels != nil {
		y0 := make([]float32, n*cfg.QueryDim())
		y1 := make([]float32, len(y0))
		goKernels.linear(y0, x, w.Q, n, cfg.HiddenSize, cfg.QueryDim())
		vecKernels.linear(y1, x, w.Q, n, cfg.HiddenSize, cfg.QueryDim())
		if slices.Equal(y0, y1) {
			t.Fatal("the Go and vector loops agree bit for bit: this test cannot tell them apart")
		}
	}
}
