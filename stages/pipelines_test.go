package stages

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/kvflow/kvflow/config"
)

// small are the values the end-to-end test gives the variables a pipeline
// file declares, to run it at a small size.
var small = map[string]string{"sessions": "2", "turns": "2"}

// Every file in pipelines/ validates and runs end to end at a small size: its
// declared sizes shrunk through its variables, and the model narrowed to a
// tiny geometry so that a race-detector run stays short. Its source, blocks,
// tiers and stages are the file's own.
func TestPipelinesEndToEnd(t *testing.T) {
	paths, err := filepath.Glob("../pipelines/*.hcl")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no pipelines found: %v", err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			probe, diags := config.LoadFile(path, nil)
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			vars := map[string]string{}
			for _, v := range probe.Variables {
				if val, ok := small[v.Name]; ok {
					vars[v.Name] = val
				}
				switch v.Name {
				case "ssd_path":
					vars[v.Name] = t.TempDir()
				case "trace":
					vars[v.Name] = "testdata/mooncake/conversation_head.jsonl" // the first 40 lines
				}
			}
			f, diags := config.LoadFile(path, vars)
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			p, diags := Build(f, DefaultRegistry())
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			p.Model.HiddenSize, p.Model.NumHeads, p.Model.NumKVHeads, p.Model.HeadDim = 64, 4, 2, 16
			p.Model.MRopeSection = [3]int{4, 2, 2}
			p.Model.NumLayers = min(p.Model.NumLayers, 2)
			rep, err := p.Run(context.Background(), RunOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Requests == 0 || rep.Tokens.Computed == 0 || rep.Steps == 0 {
				t.Fatalf("nothing ran: %+v", rep)
			}
			if rep.Tokens.Cached == 0 {
				t.Fatalf("no prefix reuse in %s", path)
			}
			var text, js bytes.Buffer
			if err := rep.WriteText(&text); err != nil || text.Len() == 0 {
				t.Fatalf("text report: %v", err)
			}
			if err := rep.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			var back map[string]any
			if err := json.Unmarshal(js.Bytes(), &back); err != nil {
				t.Fatal(err)
			}
		})
	}
}
