package stages_test

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/pipeline"
	"github.com/kvflow/kvflow/stages"
	"github.com/kvflow/kvflow/storage"
)

// A custom stage composed in Go with the built-in ones: the chain is checked
// by the compiler, since each Then must accept what the previous node emits.
func Example_compose() {
	cfg := model.Config{HiddenSize: 64, NumHeads: 4, NumKVHeads: 2, HeadDim: 16, NumLayers: 1,
		RopeTheta: 1e4, MRopeSection: [3]int{4, 2, 2}, RMSNormEps: 1e-6}
	host, _ := storage.NewHostTier(storage.HostOptions{Capacity: 16 << 20})
	mgr, _ := storage.NewManager(storage.ManagerOptions{Tier: host, Layers: cfg.NumLayers})
	arena, _ := storage.NewArena(storage.ArenaOptions{Size: 16 << 20})
	env, err := stages.NewEnv(stages.EnvOptions{Model: cfg, DType: model.BF16, BlockTokens: 8, PrefillChunk: 16,
		Manager: mgr, Pool: storage.NewPool(arena)})
	if err != nil {
		panic(err)
	}
	chat, _ := stages.NewChat(stages.ChatSettings{Sessions: 2, Turns: 2, SystemTokens: 32, UserTokens: 8, ResponseTokens: 2, WarmSystem: true})

	// The custom stage: count the tokens each step still has to compute.
	var pending atomic.Int64
	count := pipeline.StageFunc("count", func(ctx context.Context, s *stages.Step) (*stages.Step, error) {
		if !s.Cached {
			pending.Add(int64(s.End - s.Start))
		}
		return s, nil
	})

	p := pipeline.New()
	steps := pipeline.Source(p, "chat", (*stages.Step).Key, func(ctx context.Context, emit func(*stages.Step) error) error {
		return chat.Requests(ctx, func(r *stages.Request) error {
			for _, s := range env.Steps(r) {
				if err := emit(s); err != nil {
					return err
				}
			}
			return nil
		})
	})
	n := pipeline.Then(steps, stages.NewFetch(env), pipeline.Options{Workers: 1})
	n = pipeline.Then(n, count, pipeline.Options{Workers: 2})
	n = pipeline.Then(n, stages.NewPrefetch(env, stages.PrefetchSettings{Lookahead: new(1)}), pipeline.Options{})
	n = pipeline.Then(n, stages.NewAlign(env), pipeline.Options{})
	n = pipeline.Then(n, stages.NewAttend(env), pipeline.Options{})
	n = pipeline.Then(n, stages.NewEvict(env), pipeline.Options{})
	pipeline.Sink(n, "done", func(ctx context.Context, s *stages.Step) error {
		if s.Last {
			close(s.Req.Done) // lets the session's next turn in
		}
		return nil
	})
	defer env.ReleaseAll() // what the requests still hold, should the run fail
	if err := p.Run(context.Background()); err != nil {
		panic(err)
	}
	c := env.Counters()
	fmt.Printf("requests %d, prompt tokens %d, cached %d, computed %d\n", c.Requests, c.PromptTokens, c.CachedTokens, pending.Load())
	// Output:
	// requests 4, prompt tokens 208, cached 112, computed 104
}

// A custom stage registered by name and used from a pipeline file.
func ExampleRegisterStage() {
	reg := stages.DefaultRegistry()
	var decode atomic.Int64
	type settings struct {
		Label string `hcl:"label,optional"`
	}
	err := stages.RegisterStage(reg, "count_decode", func() settings { return settings{Label: "decode"} },
		func(env *stages.Env, s settings) (pipeline.Stage[*stages.Step, *stages.Step], error) {
			return pipeline.StageFunc("count_decode", func(ctx context.Context, st *stages.Step) (*stages.Step, error) {
				if st.Decode && st.Layer == 0 {
					decode.Add(1)
				}
				return st, nil
			}), nil
		})
	if err != nil {
		panic(err)
	}
	src := `
model {
  hidden_size = 64
  heads = 4
  kv_heads = 2
  head_dim = 16
  mrope_section = [4, 2, 2]
}
source "synthetic_chat" {
  sessions = 2
  turns = 2
  system_tokens = 32
  user_tokens = 8
  response_tokens = 3
}
cache {
  block_tokens = 8
  tier "host" { capacity = "16MiB" }
}
stages = ["fetch", "prefetch", "align", "attend", "count_decode", "evict"]
stage "count_decode" { label = "tokens" }
`
	f, diags := config.Load("example.hcl", []byte(src), nil)
	if diags.HasErrors() {
		panic(diags)
	}
	plan, diags := stages.Build(f, reg)
	if diags.HasErrors() {
		panic(diags)
	}
	report, err := plan.Run(context.Background(), stages.RunOptions{})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d requests, %d decode tokens seen by the custom stage, report says %d\n",
		report.Requests, decode.Load(), report.Tokens.Decode)
	// Output:
	// 4 requests, 12 decode tokens seen by the custom stage, report says 12
}
