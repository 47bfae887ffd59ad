package stages

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// listSource emits fixed requests, then err.
type listSource struct {
	reqs []*Request
	err  error
}

func (l listSource) Requests(ctx context.Context, emit func(*Request) error) error {
	for _, r := range l.reqs {
		if err := emit(r); err != nil {
			return err
		}
	}
	return l.err
}

func testEnv(t *testing.T) *Env {
	t.Helper()
	cfg := model.Config{HiddenSize: 16, NumHeads: 2, NumKVHeads: 1, HeadDim: 8, NumLayers: 2, RopeTheta: 1e4, MRopeSection: [3]int{2, 1, 1}, RMSNormEps: 1e-6}
	host, _ := storage.NewHostTier(storage.HostOptions{Capacity: 1 << 20})
	mgr, _ := storage.NewManager(storage.ManagerOptions{Tier: host, Layers: 2})
	arena, _ := storage.NewArena(storage.ArenaOptions{Size: 1 << 20})
	env, err := NewEnv(EnvOptions{Model: cfg, DType: model.BF16, BlockTokens: 4, PrefillChunk: 4, Manager: mgr, Pool: storage.NewPool(arena)})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func textRequest(id string, prompt, decode int) *Request {
	n := prompt + decode
	r := &Request{ID: id, Tokens: make([]int32, n), PromptLen: prompt}
	for i := range r.Positions {
		r.Positions[i] = make([]int64, n)
		for j := range n {
			r.Positions[i][j] = int64(j)
		}
	}
	return r
}

func TestInterleaveRoundRobin(t *testing.T) {
	env := testEnv(t)
	// A buffered channel makes every request available at once, so the
	// order is deterministic.
	reqs := make(chan *Request, 3)
	for _, r := range []*Request{textRequest("a", 8, 1), textRequest("b", 4, 0), textRequest("c", 4, 2)} {
		reqs <- r
	}
	close(reqs)
	var got []string
	err := roundRobin(context.Background(), reqs, 2, env, func(s *Step) error {
		got = append(got, fmt.Sprintf("%s%d", s.Req.ID, s.Index))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// a has 2 chunks + 1 decode = 6 steps, b 2, c 1 chunk + 2 decode = 6;
	// at most two requests are interleaved at once.
	want := "[a0 b0 a1 b1 a2 c0 a3 c1 a4 c2 a5 c3 c4 c5]"
	if fmt.Sprint(got) != want {
		t.Fatalf("emitted %v\nwant    %s", got, want)
	}
}

func TestInterleaveLimitAndErrors(t *testing.T) {
	env := testEnv(t)
	reqs := []*Request{textRequest("a", 4, 0), textRequest("b", 4, 0), textRequest("c", 4, 0)}
	n := 0
	if err := interleave(context.Background(), listSource{reqs: reqs}, 2, 4, env, func(s *Step) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 4 { // two requests of two steps
		t.Fatalf("%d steps with limit 2, want 4", n)
	}
	boom := errors.New("source broke")
	if err := interleave(context.Background(), listSource{reqs: reqs, err: boom}, 0, 4, env, func(*Step) error { return nil }); !errors.Is(err, boom) {
		t.Fatalf("source error: %v", err)
	}
	bad := textRequest("bad", 4, 0)
	bad.PromptLen = 9
	if err := interleave(context.Background(), listSource{reqs: []*Request{bad}}, 0, 4, env, func(*Step) error { return nil }); err == nil {
		t.Fatal("an invalid request was accepted")
	}
	stop := errors.New("downstream stopped")
	if err := interleave(context.Background(), listSource{reqs: reqs}, 0, 4, env, func(*Step) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("emit error: %v", err)
	}
}
