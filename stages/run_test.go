package stages

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/pipeline"
	"github.com/kvflow/kvflow/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// collect runs a plan and returns its report and every step that reached the
// end of the chain, by request.
func collect(t *testing.T, p *Plan) (*Report, map[string][]*Step) {
	t.Helper()
	var mu sync.Mutex
	steps := map[string][]*Step{}
	rep, err := p.Run(context.Background(), RunOptions{OnStep: func(s *Step) {
		c := *s // the sink drops the step's buffers after OnStep
		c.Out = slices.Clone(s.Out)
		mu.Lock()
		steps[s.Req.ID] = append(steps[s.Req.ID], &c)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	return rep, steps
}

// The cached-token count equals a naive replay: a request reuses the leading
// full blocks (short of its last prompt token) that any request finished
// before it had computed.
func TestRunPrefixReuseMatchesNaive(t *testing.T) {
	p, diags := plan(t, tiny, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rep, steps := collect(t, p)

	// The chat source issues a session's turns one after another, and other
	// sessions only share its system prompt, so replaying in emission order
	// is exact.
	reqs := chatRequests(t, p)
	seen := map[storage.BlockKey]bool{}
	var prompt, cached int64
	for _, r := range reqs {
		keys := BlockKeys(r, p.BlockTokens)
		n := 0
		for n < min(len(keys), (r.PromptLen-1)/p.BlockTokens) && seen[keys[n]] {
			n++
		}
		prompt += int64(r.PromptLen)
		cached += int64(n * p.BlockTokens)
		for _, k := range keys {
			seen[k] = true
		}
	}
	if rep.Requests != int64(len(reqs)) || rep.Tokens.Prompt != prompt || rep.Tokens.Cached != cached {
		t.Fatalf("report: %d requests, %d prompt, %d cached tokens; naive replay: %d, %d, %d",
			rep.Requests, rep.Tokens.Prompt, rep.Tokens.Cached, len(reqs), prompt, cached)
	}
	if cached == 0 {
		t.Fatal("the workload reused nothing: the test proves nothing")
	}
	if got := rep.Tokens.Computed; got != rep.Tokens.Prompt-rep.Tokens.Cached+rep.Tokens.Decode {
		t.Fatalf("computed %d tokens, want prompt - cached + decode = %d", got, rep.Tokens.Prompt-rep.Tokens.Cached+rep.Tokens.Decode)
	}
	if len(steps) != len(reqs) {
		t.Fatalf("%d requests reached the sink, want %d", len(steps), len(reqs))
	}
	for _, s := range rep.Stages {
		if s.Errors != 0 || s.Items != rep.Steps {
			t.Fatalf("stage %s: %d items %d errors, want %d items", s.Name, s.Items, s.Errors, rep.Steps)
		}
	}
	host := rep.Tiers[0]
	if host.PinnedBytes != 0 {
		t.Fatalf("%d bytes still pinned after the run", host.PinnedBytes)
	}
	if host.UsedBytes != int64(rep.Pages.Committed)*int64(rep.Model.PageBytes)-int64(host.EvictedBytes) {
		t.Fatalf("host holds %d bytes; committed %d pages of %d bytes, evicted %d bytes",
			host.UsedBytes, rep.Pages.Committed, rep.Model.PageBytes, host.EvictedBytes)
	}
}

// chatRequests regenerates the plan's chat requests in emission order.
func chatRequests(t *testing.T, p *Plan) []*Request {
	var reqs []*Request
	err := p.Source.Requests(context.Background(), func(r *Request) error {
		reqs = append(reqs, r)
		close(r.Done) // nothing runs: let the next turn go
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return reqs
}

// A request whose prefix came from the cache computes the same attention
// output, token for token, as a from-scratch forward pass over its whole
// sequence: cached pages are interchangeable with recomputed ones.
func TestRunCachedOutputsEqualRecompute(t *testing.T) {
	p, diags := plan(t, tiny, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	_, steps := collect(t, p)
	if checkOutputs(t, p, steps) == 0 {
		t.Fatal("no step computed over a cached prefix")
	}
}

// tinyTiled is tiny with 4 query heads per KV head and pages of 16 tokens:
// a shape whose key pages are tiles (model.KeyTileFor).
var tinyTiled = strings.NewReplacer("hidden_size   = 64", "hidden_size   = 128", "heads         = 4", "heads         = 8",
	"block_tokens = 8", "block_tokens = 16").Replace(tiny)

// The same over key pages in tiles: the pipeline's pages (written by
// align's caches, read back from the host tier) against a forward pass
// over its own pages.
func TestRunCachedOutputsEqualRecomputeTiled(t *testing.T) {
	p, diags := plan(t, tinyTiled, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if model.KeyTileFor(p.Model, p.DType, p.BlockTokens) != model.KeyTile {
		t.Fatalf("tinyTiled's keys are not in tiles: %+v", p.Model)
	}
	_, steps := collect(t, p)
	if checkOutputs(t, p, steps) == 0 {
		t.Fatal("no step computed over a cached prefix")
	}
}

// checkOutputs compares every computed step of a request that reused a
// cached prefix with a from-scratch forward pass of its layer, and returns
// the number of steps checked.
func checkOutputs(t *testing.T, p *Plan, steps map[string][]*Step) int {
	t.Helper()
	reqs := chatRequests(t, p)
	checked := 0
	for _, r := range reqs {
		byLayer := map[int][]*Step{}
		cachedAny := false
		for _, s := range steps[r.ID] {
			byLayer[s.Layer] = append(byLayer[s.Layer], s)
			cachedAny = cachedAny || s.Seq.CachedTokens > 0
		}
		if !cachedAny {
			continue
		}
		for layer, ss := range byLayer {
			want := scratch(t, p, r, layer)
			h := p.Model.HiddenSize
			for _, s := range ss {
				if s.Cached {
					continue
				}
				got := s.Out
				ref := want[s.Start*h : s.End*h]
				if e := relErr(got, ref); e > 1e-5 {
					t.Fatalf("%s: relative error %.3g against recomputation", s, e)
				}
				checked++
			}
		}
	}
	return checked
}

// scratch runs one layer over all of r's tokens in one forward pass.
func scratch(t *testing.T, p *Plan, r *Request, layer int) []float32 {
	t.Helper()
	a, err := model.NewAttention(p.Model, model.RandomWeights(p.Model, layer, p.Seed))
	if err != nil {
		t.Fatal(err)
	}
	n, h := len(r.Tokens), p.Model.HiddenSize
	x := make([]float32, n*h)
	for i := range n {
		Embed(x[i*h:(i+1)*h], r, i, layer)
	}
	blocks := (n + p.BlockTokens - 1) / p.BlockTokens
	kv := &model.PagedKV{DType: p.DType, BlockTokens: p.BlockTokens, KVHeads: p.Model.NumKVHeads, HeadDim: p.Model.HeadDim}
	size := p.Model.NumKVHeads * p.BlockTokens * p.Model.HeadDim * p.DType.Size()
	for range blocks {
		kv.K = append(kv.K, make([]byte, size))
		kv.V = append(kv.V, make([]byte, size))
	}
	out := make([]float32, n*h)
	if err := a.Forward(x, r.Positions, kv, 0, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func relErr(got, want []float32) float64 {
	var d, w float64
	for i := range want {
		e := float64(got[i]) - float64(want[i])
		d += e * e
		w += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(d / w)
}

// A tier too small for the working set evicts, never exceeds its capacity,
// and the run still completes with correct accounting.
func TestRunSmallTierEvicts(t *testing.T) {
	src := strings.Replace(tiny, `"64MiB"`, `"24KiB"`, 1) // 12 pages of 2 KiB
	p, diags := plan(t, src, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rep, _ := collect(t, p)
	host := rep.Tiers[0]
	if host.Evictions == 0 {
		t.Fatalf("no evictions in a 24 KiB tier: %+v", host)
	}
	if host.PeakBytes > host.CapacityBytes || host.PinnedBytes != 0 {
		t.Fatalf("peak %d of capacity %d, %d still pinned", host.PeakBytes, host.CapacityBytes, host.PinnedBytes)
	}
	if rep.Requests != 9 {
		t.Fatalf("%d requests finished, want 9", rep.Requests)
	}
}

// A failing stage stops the run with an error that names the stage and the
// request; every goroutine returns (goleak checks at exit).
func TestRunErrorNamesStageAndRequest(t *testing.T) {
	reg := DefaultRegistry()
	boom := errors.New("boom")
	err := RegisterStage(reg, "flaky", func() struct{} { return struct{}{} },
		func(e *Env, _ struct{}) (pipeline.Stage[*Step, *Step], error) {
			return pipeline.StageFunc("flaky", func(ctx context.Context, s *Step) (*Step, error) {
				if s.Req.ID == "s1-t1" && s.Layer == 1 {
					return nil, boom
				}
				return s, nil
			}), nil
		})
	if err != nil {
		t.Fatal(err)
	}
	f := tiny + "stages = [\"fetch\", \"prefetch\", \"align\", \"flaky\", \"attend\", \"evict\"]\n"
	p, diags := plan(t, f, nil)
	if !diags.HasErrors() {
		t.Fatal("the default registry knows no flaky stage")
	}
	cf, _ := loadTiny(t, f)
	p, diags = Build(cf, reg)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rep, runErr := p.Run(context.Background(), RunOptions{})
	var se *pipeline.StageError
	if !errors.As(runErr, &se) || !errors.Is(runErr, boom) {
		t.Fatalf("run error %v, want a StageError wrapping boom", runErr)
	}
	if se.Stage != "flaky" || !strings.Contains(runErr.Error(), "request s1-t1 layer 1") {
		t.Fatalf("error %q does not name the stage and the request", runErr)
	}
	if rep == nil || rep.Requests == 0 {
		t.Fatalf("no report of the work done before the failure: %+v", rep)
	}
}

// Cancelling the caller's context stops the run promptly and leaks nothing.
func TestRunCancel(t *testing.T) {
	p, diags := plan(t, tiny, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	rep, err := p.Run(ctx, RunOptions{OnStep: func(*Step) { once.Do(cancel) }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run error %v, want context.Canceled", err)
	}
	// Requests cut short never reached their last step: their pins must
	// still have been returned.
	if pinned := rep.Tiers[0].PinnedBytes; pinned != 0 {
		t.Fatalf("%d bytes still pinned after a cancelled run", pinned)
	}
}

func TestStepString(t *testing.T) {
	s := &Step{Req: &Request{ID: "r7"}, Layer: 3, Start: 64, End: 128}
	if got := fmt.Sprint(s); got != "request r7 layer 3 prefill tokens [64,128)" {
		t.Fatal(got)
	}
}

// evict commits only pages attend has written, whatever the chain's order.
func TestEvictCommitsOnlyWrittenPages(t *testing.T) {
	env := testEnv(t)
	r := textRequest("r", 9, 0) // two full blocks of 4 and one token
	steps := env.Steps(r)
	fetch, align, attend, evict := NewFetch(env), NewAlign(env), NewAttend(env), NewEvict(env)
	ctx := context.Background()
	s := steps[0] // layer 0, tokens [0,4)
	for _, st := range []interface {
		Process(context.Context, *Step) (*Step, error)
	}{fetch, align, evict} {
		var err error
		if s, err = st.Process(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if c := env.Counters().CommittedPages; c != 0 {
		t.Fatalf("evict committed %d pages attend had not written", c)
	}
	if _, err := attend.Process(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := evict.Process(ctx, s); err != nil {
		t.Fatal(err)
	}
	if c := env.Counters().CommittedPages; c != 1 {
		t.Fatalf("committed %d pages after attend wrote block 0, want 1", c)
	}
	if err := env.ReleaseAll(); err != nil {
		t.Fatal(err)
	}
}

// A pool too small for the requests in flight fails the run with an error
// that names align and the request, and returns every pin and page.
func TestRunPoolExhausted(t *testing.T) {
	p, diags := plan(t, strings.Replace(tiny, `dtype        = "bf16"`, `pool = "4KiB"`, 1), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rep, err := p.Run(context.Background(), RunOptions{})
	var se *pipeline.StageError
	if !errors.As(err, &se) || se.Stage != "align" || !errors.Is(err, storage.ErrOutOfMemory) || !strings.Contains(err.Error(), "request s") {
		t.Fatalf("run error %v, want align's out-of-memory error naming the request", err)
	}
	if rep.Tiers[0].PinnedBytes != 0 || rep.Memory.Pool.UsedBytes != 0 {
		t.Fatalf("after the failure: %d bytes pinned, %d bytes of the pool in use", rep.Tiers[0].PinnedBytes, rep.Memory.Pool.UsedBytes)
	}
}
