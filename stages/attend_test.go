package stages

import (
	"math"
	"testing"
	"time"

	"github.com/kvflow/kvflow/model"
)

// Block-sparse attention whose top_k covers every page goes through the
// router's page lists, split over threads, and must still equal a dense
// from-scratch pass.
func TestRunBlockSparseCoveringEveryPageEqualsDense(t *testing.T) {
	p, diags := plan(t, tiny+"stage \"attend\" {\n  kernel = \"block_sparse\"\n  top_k = 1000\n  threads = 2\n}\n", nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rep, steps := collect(t, p)
	if checkOutputs(t, p, steps) == 0 {
		t.Fatal("no step computed over a cached prefix")
	}
	if a := rep.Attention; a.Kernel != "block_sparse" || a.Threads != 2 || a.TopK != 1000 || a.DecodeTokens == 0 || a.ReadPages != a.ContextPages || a.ReadShare != 1 {
		t.Errorf("attention report %+v: want block_sparse on 2 threads reading every context page", a)
	}
	if a := rep.Attention; !(a.IdleShare >= 0 && a.IdleShare < 1) {
		t.Errorf("attention report: idle_share %v, want a share in [0, 1)", a.IdleShare)
	}
}

// With top_k = 2 (the sink and one recent page of pages of 8 tokens),
// decode tokens late in a conversation see a fraction of their context: the
// run completes, outputs stay finite, and they differ from dense.
func TestRunBlockSparseReadsFewerPages(t *testing.T) {
	p, diags := plan(t, tiny+"stage \"attend\" {\n  kernel = \"block_sparse\"\n  top_k = 2\n  recent = 1\n}\n", nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rep, steps := collect(t, p)
	if a := rep.Attention; a.Kernel != "block_sparse" || a.TopK != 2 || a.Recent != 1 || a.Router != "bound" || !(a.ReadShare > 0 && a.ReadShare < 1) {
		t.Errorf("attention report %+v: want block_sparse, top_k 2, recent 1, bound router, reading part of the context", a)
	}
	h := p.Model.HiddenSize
	differ, decodes := 0, 0
	for _, r := range chatRequests(t, p) {
		for _, s := range steps[r.ID] {
			if s.Cached || !s.Decode {
				continue
			}
			for _, v := range s.Out {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					t.Fatalf("%s: non-finite output", s)
				}
			}
			if s.Start < 2*p.BlockTokens { // two pages or fewer: all read
				continue
			}
			decodes++
			want := scratch(t, p, r, s.Layer)[s.Start*h : s.End*h]
			if relErr(s.Out, want) > 1e-4 {
				differ++
			}
		}
	}
	if decodes == 0 || differ == 0 {
		t.Fatalf("%d of %d long-context decode steps differ from dense: block-sparse read every page", differ, decodes)
	}
	t.Logf("%d of %d long-context decode steps differ from dense", differ, decodes)
}

// linger reaches the kernel's options: unset is the kernel's default (0),
// "0s" helpers that exit after each call (< 0), a duration itself.
func TestAttendLinger(t *testing.T) {
	for _, c := range []struct {
		linger string
		want   time.Duration
	}{{"", 0}, {"0s", -1}, {"250us", 250 * time.Microsecond}, {"1s", time.Second}} {
		s := AttendSettings{Kernel: model.KernelDense, Linger: c.linger}
		if err := s.Validate(); err != nil {
			t.Fatalf("linger %q: %v", c.linger, err)
		}
		o, err := s.options(128, 2)
		if err != nil {
			t.Fatal(err)
		}
		if o.Linger != c.want || o.Workers != 2 {
			t.Errorf("linger %q: options %+v, want Linger %v on 2 workers", c.linger, o, c.want)
		}
	}
	s := AttendSettings{Kernel: model.KernelDense, Linger: "2s"}
	if err := s.Validate(); err == nil {
		t.Error("linger 2s accepted, want at most 1s")
	}
}
