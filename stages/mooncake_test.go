package stages

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/kvflow/kvflow/storage"
)

// newTrace returns a mooncake_trace source over path with the defaults and
// the given changes.
func newTrace(t testing.TB, path string, change func(*MooncakeSettings)) *MooncakeTrace {
	t.Helper()
	s := DefaultMooncakeSettings()
	s.Path = path
	if change != nil {
		change(&s)
	}
	m, err := NewMooncakeTrace(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// replay collects every request of m.
func replay(m *MooncakeTrace) ([]*Request, error) {
	var reqs []*Request
	err := m.Requests(context.Background(), func(r *Request) error {
		reqs = append(reqs, r)
		return nil
	})
	return reqs, err
}

func writeTrace(t testing.TB, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "trace.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func ids(reqs []*Request) []string {
	var s []string
	for _, r := range reqs {
		s = append(s, r.ID)
	}
	return s
}

func TestMooncakeParse(t *testing.T) {
	path := "testdata/mooncake/small.jsonl"
	m := newTrace(t, path, func(s *MooncakeSettings) { s.BlockTokens = 4; s.DecodeSteps = 2 })
	reqs, err := replay(m)
	if err != nil {
		t.Fatal(err)
	}
	// Line 3 is blank; line 2 has a field the source does not know.
	if got, want := ids(reqs), []string{"t1", "t2", "t4", "t5"}; !slices.Equal(got, want) {
		t.Fatalf("ids %v, want %v", got, want)
	}
	want := []struct{ prompt, keys, decode int }{{10, 2, 2}, {8, 2, 0}, {3, 0, 2}, {12, 3, 1}}
	for i, r := range reqs {
		w := want[i]
		if r.PromptLen != w.prompt || len(r.Keys) != w.keys || len(r.Tokens) != w.prompt+w.decode {
			t.Errorf("%s: prompt %d, %d keys, %d tokens; want %d, %d, %d", r.ID, r.PromptLen, len(r.Keys), len(r.Tokens),
				w.prompt, w.keys, w.prompt+w.decode)
		}
		if !r.Synthetic || r.Keys == nil || r.Done != nil {
			t.Errorf("%s: synthetic %v, keys nil %v, done %v", r.ID, r.Synthetic, r.Keys == nil, r.Done)
		}
		if err := r.Validate(); err != nil {
			t.Error(err)
		}
		n := len(r.Tokens)
		for row := range r.Positions {
			p := r.Positions[row]
			if len(p) != n || cap(p) != n {
				t.Fatalf("%s: position row %d of length %d, capacity %d; want %d", r.ID, row, len(p), cap(p), n)
			}
			for i, v := range p {
				if v != int64(i) {
					t.Fatalf("%s: position %d of row %d is %d", r.ID, i, row, v)
				}
			}
		}
		for i, k := range r.Keys {
			if k == storage.RootKey {
				t.Errorf("%s: key %d is the root key", r.ID, i)
			}
		}
		for _, tok := range r.Tokens[r.PromptLen:] {
			if tok != 0 {
				t.Errorf("%s: decode token %d", r.ID, tok)
			}
		}
		for j := 0; j < r.PromptLen; j += 4 {
			blk := r.Tokens[j:min(j+4, r.PromptLen)]
			if slices.ContainsFunc(blk, func(v int32) bool { return v != blk[0] || v < 0 || v >= textVocab }) {
				t.Errorf("%s: block at %d holds tokens %v", r.ID, j, blk)
			}
		}
	}
	// Ids 0 and 1 are shared by t1 and t2, 0 by t5; the others are distinct.
	t1, t2, t5 := reqs[0], reqs[1], reqs[3]
	if !slices.Equal(t1.Keys, t2.Keys) || t5.Keys[0] != t1.Keys[0] {
		t.Errorf("equal ids, different keys: %v %v %v", t1.Keys, t2.Keys, t5.Keys)
	}
	if !slices.Equal(t1.Tokens[:8], t2.Tokens[:8]) {
		t.Errorf("equal ids, different tokens")
	}
	distinct := map[storage.BlockKey]bool{t1.Keys[0]: true, t1.Keys[1]: true, t5.Keys[1]: true, t5.Keys[2]: true}
	if len(distinct) != 4 {
		t.Errorf("distinct ids share keys: %v %v", t1.Keys, t5.Keys)
	}
	if m.Total() != 5 || m.Skipped() != 0 || m.BlockTokens() != 4 {
		t.Errorf("total %d (want 5, blank line included), skipped %d, block_tokens %d", m.Total(), m.Skipped(), m.BlockTokens())
	}

	// Another seed, other keys; the same seed, the same keys.
	other, err := replay(newTrace(t, path, func(s *MooncakeSettings) { s.BlockTokens = 4; s.Seed = 1 }))
	if err != nil {
		t.Fatal(err)
	}
	if other[0].Keys[0] == t1.Keys[0] || other[0].Keys[1] == t1.Keys[1] {
		t.Errorf("seed 1 keys %v equal seed 0 keys %v", other[0].Keys, t1.Keys)
	}
	again, err := replay(m)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again[3].Keys, t5.Keys) {
		t.Errorf("a second replay made other keys")
	}
}

func TestMooncakeTotal(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		text string
		want int
	}{{"", 0}, {"a\n", 1}, {"a\nb", 2}, {"a\n\nb\n", 3}} {
		path := filepath.Join(dir, fmt.Sprintf("t%d.jsonl", c.want))
		if err := os.WriteFile(path, []byte(c.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := newTrace(t, path, nil).Total(); got != c.want {
			t.Errorf("%q: total %d, want %d", c.text, got, c.want)
		}
	}
}

func TestMooncakeMalformed(t *testing.T) {
	const (
		first = `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": [1, 2]}`
		last  = `{"timestamp": 60, "input_length": 5, "output_length": 1, "hash_ids": [1, 3]}`
	)
	long := `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": [1, 2], "pad": "` +
		strings.Repeat("x", maxTraceLine) + `"}`
	cases := []struct{ name, line, want string }{
		{"not JSON", `{"timestamp": 50, "input_length": 5`, "not JSON"},
		{"trailing garbage", first + " x", "not JSON"},
		{"not an object", `[50, 5, 1]`, "not a JSON object"},
		{"missing timestamp", `{"input_length": 5, "output_length": 1, "hash_ids": [1, 2]}`, "missing timestamp"},
		{"missing input_length", `{"timestamp": 50, "output_length": 1, "hash_ids": [1, 2]}`, "missing input_length"},
		{"missing output_length", `{"timestamp": 50, "input_length": 5, "hash_ids": [1, 2]}`, "missing output_length"},
		{"missing hash_ids", `{"timestamp": 50, "input_length": 5, "output_length": 1}`, "missing hash_ids"},
		{"null field", `{"timestamp": 50, "input_length": 5, "output_length": null, "hash_ids": [1, 2]}`, "missing output_length"},
		{"string", `{"timestamp": 50, "input_length": "5", "output_length": 1, "hash_ids": [1, 2]}`, "input_length: string where an integer was expected"},
		{"fraction", `{"timestamp": 50.5, "input_length": 5, "output_length": 1, "hash_ids": [1, 2]}`, "timestamp: number 50.5 where an integer"},
		{"hash_ids not an array", `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": 1}`, "hash_ids: number where an array"},
		{"null hash id", `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": [1, null]}`, "hash id null is not a 64-bit integer"},
		{"string hash id", `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": [1, "2"]}`, `hash id "2" is not a 64-bit integer`},
		{"huge hash id", `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": [1, 18446744073709551615]}`, "is not a 64-bit integer"},
		{"negative timestamp", `{"timestamp": -1, "input_length": 5, "output_length": 1, "hash_ids": [1, 2]}`, "timestamp -1: must not be negative"},
		{"negative output_length", `{"timestamp": 50, "input_length": 5, "output_length": -1, "hash_ids": [1, 2]}`, "output_length -1: must not be negative"},
		{"negative hash id", `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": [1, -2]}`, "hash_ids[1] = -2: must not be negative"},
		{"input_length 0", `{"timestamp": 50, "input_length": 0, "output_length": 1, "hash_ids": []}`, "input_length 0: must be at least 1"},
		{"input_length huge", `{"timestamp": 50, "input_length": 1099511627776, "output_length": 1, "hash_ids": [1]}`, "input_length 1099511627776: at most"},
		{"too few hash_ids", `{"timestamp": 50, "input_length": 5, "output_length": 1, "hash_ids": [1]}`, "1 hash_ids for input_length 5: want 2"},
		{"too many hash_ids", `{"timestamp": 50, "input_length": 4, "output_length": 1, "hash_ids": [1, 2]}`, "2 hash_ids for input_length 4: want 1"},
		{"decreasing timestamp", `{"timestamp": 49, "input_length": 5, "output_length": 1, "hash_ids": [1, 2]}`, "timestamp 49 is before the previous line's 50"},
		{"overlong line", long, fmt.Sprintf("line longer than %d bytes", maxTraceLine)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeTrace(t, first, c.line, last)
			for _, onError := range []string{"fail", "skip"} {
				m := newTrace(t, path, func(s *MooncakeSettings) { s.BlockTokens = 4; s.OnError = onError })
				reqs, err := replay(m)
				if onError == "fail" {
					prefix := path + ":2: "
					if err == nil || !errors.Is(err, ErrMalformedTrace) || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), c.want) {
						t.Fatalf("fail: error %.300v; want %q...%q wrapping ErrMalformedTrace", err, prefix, c.want)
					}
					if len(err.Error()) < 500 {
						t.Log(err)
					}
					if got := ids(reqs); !slices.Equal(got, []string{"t1"}) {
						t.Fatalf("fail: requests %v before the error, want [t1]", got)
					}
					continue
				}
				if err != nil {
					t.Fatalf("skip: %v", err)
				}
				if got := ids(reqs); !slices.Equal(got, []string{"t1", "t3"}) || m.Skipped() != 1 {
					t.Fatalf("skip: requests %v, skipped %d; want [t1 t3], 1", got, m.Skipped())
				}
			}
		})
	}
}

// A line that is valid JSON but whose hash ids are nested in another object
// still decodes, and CRLF line ends are accepted.
func TestMooncakeLineEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crlf.jsonl")
	text := "{\"timestamp\": 0, \"input_length\": 4, \"output_length\": 0, \"hash_ids\": [9], \"meta\": {\"hash_ids\": \"x\"}}\r\n" +
		"   \r\n" +
		`{"timestamp": 1, "input_length": 4, "output_length": 0, "hash_ids": [9]}` // no final newline
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	reqs, err := replay(newTrace(t, path, func(s *MooncakeSettings) { s.BlockTokens = 4 }))
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(reqs); !slices.Equal(got, []string{"t1", "t3"}) || reqs[0].Keys[0] != reqs[1].Keys[0] {
		t.Fatalf("requests %v", got)
	}
}

func TestMooncakePacing(t *testing.T) {
	m := newTrace(t, "testdata/mooncake/paced.jsonl", func(s *MooncakeSettings) { s.BlockTokens = 4; s.Speed = "10" })
	t0 := time.Now()
	var at []time.Duration
	err := m.Requests(context.Background(), func(*Request) error {
		at = append(at, time.Since(t0))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Timestamps 0, 100 and 200 ms at ten times real speed. Lower bounds
	// only: a loaded machine may emit late, never early.
	for i, d := range at {
		if due := time.Duration(i) * 10 * time.Millisecond; d < due {
			t.Errorf("request %d emitted after %v, due at %v", i, d, due)
		}
	}
	if len(at) != 3 {
		t.Fatalf("%d requests", len(at))
	}
	t.Logf("emitted at %v", at)

	// "max" ignores the timestamps: a line stamped a year after the start
	// comes at once (the test would time out otherwise).
	path := writeTrace(t, `{"timestamp": 31536000000, "input_length": 4, "output_length": 0, "hash_ids": [1]}`)
	if reqs, err := replay(newTrace(t, path, func(s *MooncakeSettings) { s.BlockTokens = 4 })); err != nil || len(reqs) != 1 {
		t.Fatalf("speed max: %d requests, %v", len(reqs), err)
	}
}

func TestMooncakeCancel(t *testing.T) {
	// The second request is due 100 s after the first in real time.
	path := writeTrace(t,
		`{"timestamp": 0, "input_length": 4, "output_length": 0, "hash_ids": [1]}`,
		`{"timestamp": 100000, "input_length": 4, "output_length": 0, "hash_ids": [2]}`)
	m := newTrace(t, path, func(s *MooncakeSettings) { s.BlockTokens = 4; s.Speed = "1" })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	t0 := time.Now()
	err := m.Requests(ctx, func(*Request) error {
		n++
		time.AfterFunc(20*time.Millisecond, cancel) // while the source sleeps
		return nil
	})
	if err != context.Canceled || n != 1 {
		t.Fatalf("error %v after %d requests; want context.Canceled after 1", err, n)
	}
	if d := time.Since(t0); d > 50*time.Second {
		t.Fatalf("returned %v after the start: slept through the cancellation", d)
	}

	// A context done before the start emits nothing.
	err = m.Requests(ctx, func(*Request) error { n++; return nil })
	if err != context.Canceled || n != 1 {
		t.Fatalf("done context: error %v, %d requests", err, n)
	}

	// emit's error comes back as is.
	stop := errors.New("stop")
	if err := newTrace(t, path, func(s *MooncakeSettings) { s.BlockTokens = 4 }).Requests(context.Background(),
		func(*Request) error { return stop }); err != stop {
		t.Fatalf("error %v, want emit's", err)
	}
}

// The released trace replays without an error, and an unbounded cache would
// serve about 40% of its prompt tokens (the paper's Table 2); counting only
// full blocks gives a little less.
func TestMooncakeRealTrace(t *testing.T) {
	path := filepath.Join("..", "pipelines", "data", "conversation_trace.jsonl")
	m := newTrace(t, path, func(s *MooncakeSettings) { s.DecodeSteps = 0 })
	seen := map[storage.BlockKey]struct{}{}
	var n, prompt, cached int64
	err := m.Requests(context.Background(), func(r *Request) error {
		n++
		prompt += int64(r.PromptLen)
		hit := true
		for _, k := range r.Keys {
			if _, ok := seen[k]; !ok {
				hit = false
				seen[k] = struct{}{}
			}
			if hit {
				cached += int64(m.BlockTokens())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ratio := float64(cached) / float64(prompt)
	t.Logf("%d requests, %d prompt tokens, %d distinct full blocks; ideal prefix hit ratio %.4f", n, prompt, len(seen), ratio)
	if n != 12031 || m.Total() != 12031 || m.Skipped() != 0 {
		t.Fatalf("%d requests, total %d, skipped %d; want 12031", n, m.Total(), m.Skipped())
	}
	if ratio < 0.30 || ratio > 0.45 {
		t.Fatalf("ideal prefix hit ratio %.4f, want about 0.4", ratio)
	}
}

const mooncakeTiny = `
model {
  hidden_size   = 64
  heads         = 4
  kv_heads      = 2
  head_dim      = 16
  layers        = 2
  rope_theta    = 10000
  mrope_section = [4, 2, 2]
  seed          = 3
}
source "mooncake_trace" {
  path          = "testdata/mooncake/small.jsonl"
  block_tokens  = 4
  decode_steps  = 2
  speed         = "max"
  on_error      = "fail"
  seed          = 7
  prefill_chunk = 8
  max_active    = 1
}
cache {
  block_tokens = 4
  dtype        = "bf16"
  tier "host" { capacity = "64MiB" }
}
`

// valuePos returns the line and column of attr's value in the source block
// of src.
func valuePos(t *testing.T, src, attr string) (int, int) {
	t.Helper()
	inSource := false
	for i, line := range strings.Split(src, "\n") {
		if strings.HasPrefix(line, "source ") {
			inSource = true
		}
		f := strings.Fields(line)
		if inSource && len(f) > 2 && f[0] == attr && f[1] == "=" {
			return i + 1, strings.Index(line, "=") + 3
		}
	}
	t.Fatalf("%s not in the source block", attr)
	return 0, 0
}

func TestMooncakeSettings(t *testing.T) {
	p, diags := plan(t, mooncakeTiny, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	m, ok := p.Source.(*MooncakeTrace)
	if !ok || m.BlockTokens() != 4 || m.s.DecodeSteps != 2 || m.s.Seed != 7 || m.speed != 0 || m.skip {
		t.Fatalf("source %#v", p.Source)
	}
	set := func(attr, value string) string {
		line, _ := valuePos(t, mooncakeTiny, attr)
		lines := strings.Split(mooncakeTiny, "\n")
		lines[line-1] = lines[line-1][:strings.Index(lines[line-1], "=")+2] + value
		return strings.Join(lines, "\n")
	}
	// A number for speed is converted to its string.
	p, diags = plan(t, set("speed", "10"), nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if m := p.Source.(*MooncakeTrace); m.speed != 10 {
		t.Fatalf("speed %v", m.speed)
	}

	dir := t.TempDir()
	cases := []struct{ name, attr, value, detail string }{
		{"empty path", "path", `""`, "must not be empty"},
		{"nonexistent path", "path", `"testdata/mooncake/nonexistent.jsonl"`, "no such file or directory"},
		{"directory", "path", fmt.Sprintf("%q", dir), "not a regular file"},
		{"speed word", "speed", `"fast"`, `"fast": want "max" or a positive factor`},
		{"negative speed", "speed", `"-1"`, `"-1": want`},
		{"zero speed", "speed", "0", `"0": want`},
		{"infinite speed", "speed", `"Inf"`, `"Inf": want`},
		{"on_error", "on_error", `"ignore"`, `"ignore": want "fail" or "skip"`},
		{"block_tokens", "block_tokens", "0", "0: must be at least 1"},
		{"huge block_tokens", "block_tokens", "1e9", "at most"},
		{"decode_steps", "decode_steps", "-1", "-1: must not be negative"},
		{"huge decode_steps", "decode_steps", "1e9", "at most"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, diags := plan(t, set(c.attr, c.value), nil)
			summary := "Invalid " + c.attr
			var d *hcl.Diagnostic
			for _, x := range diags {
				if x.Summary == summary {
					d = x
				}
			}
			if d == nil {
				t.Fatalf("no %q diagnostic in %v", summary, diags)
			}
			line, col := valuePos(t, mooncakeTiny, c.attr)
			if d.Subject == nil || d.Subject.Filename != "p.hcl" || d.Subject.Start.Line != line || d.Subject.Start.Column != col {
				t.Fatalf("%q at %v, want p.hcl:%d:%d", summary, d.Subject, line, col)
			}
			if !strings.Contains(d.Detail, c.detail) {
				t.Fatalf("detail %q, want %q", d.Detail, c.detail)
			}
		})
	}

	t.Run("missing path", func(t *testing.T) {
		line, _ := valuePos(t, mooncakeTiny, "path")
		lines := strings.Split(mooncakeTiny, "\n")
		_, diags := plan(t, strings.Join(slices.Delete(lines, line-1, line), "\n"), nil)
		if !diags.HasErrors() || !strings.Contains(diags.Error(), `"path" is required`) {
			t.Fatalf("diagnostics %v", diags)
		}
	})
}

// The trace runs through the whole chain: its synthetic prompt pages and real
// decode steps.
func TestMooncakeRun(t *testing.T) {
	p, diags := plan(t, mooncakeTiny, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	rep, err := p.Run(context.Background(), RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requests != 4 || rep.Tokens.Prompt != 10+8+3+12 || rep.Tokens.Decode != 2+0+2+1 {
		t.Fatalf("report: %d requests, tokens %+v", rep.Requests, rep.Tokens)
	}
}

func FuzzMooncakeLine(f *testing.F) {
	f.Add([]byte(`{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [0, 1, 2]}`), uint8(3), uint8(2))
	f.Add([]byte(`{"timestamp": 5, "input_length": 3, "output_length": 7, "hash_ids": [3], "x": [1, {"y": null}]}`), uint8(3), uint8(9))
	f.Add([]byte(`{"timestamp": 1, "input_length": 1, "output_length": 0, "hash_ids": [null]}`), uint8(0), uint8(0))
	f.Add([]byte(`[1, 2, 3]`), uint8(1), uint8(1))
	f.Add([]byte(`{"input_length": -5}`), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, line []byte, bt, decode uint8) {
		blockTokens := int(bt) + 1
		rec, err := parseTraceLine(line, blockTokens)
		if err != nil {
			if !errors.Is(err, ErrMalformedTrace) {
				t.Fatalf("error %v does not wrap ErrMalformedTrace", err)
			}
			return
		}
		if rec.timestamp < 0 || rec.input < 1 || rec.output < 0 || int64(len(rec.ids)) != (rec.input+int64(blockTokens)-1)/int64(blockTokens) {
			t.Fatalf("accepted %+v for %d-token blocks", rec, blockTokens)
		}
		m := &MooncakeTrace{s: MooncakeSettings{BlockTokens: blockTokens, DecodeSteps: int(decode)}}
		var ramp []int64
		r := m.request(rec, 1, &ramp)
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		if len(r.Keys) != int(rec.input)/blockTokens || len(r.Tokens) != int(rec.input)+int(min(int64(decode), rec.output)) {
			t.Fatalf("%d keys, %d tokens for %+v", len(r.Keys), len(r.Tokens), rec)
		}
	})
}
