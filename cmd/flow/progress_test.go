package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kvflow/kvflow/stages"
)

// fakeTerminal is a stderr that says it is a terminal and records what is
// drawn on it.
type fakeTerminal struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (f *fakeTerminal) IsTerminal() bool { return true }

func (f *fakeTerminal) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.Write(p)
}

func (f *fakeTerminal) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.String()
}

func TestIsTerminal(t *testing.T) {
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is a terminal")
	}
	if !isTerminal(&fakeTerminal{}) {
		t.Error("the fake terminal is not one")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("a regular file is a terminal")
	}
}

// TestProgressLogLines drives the display off a terminal: a log line per
// interval, with the run's numbers, and none for a snapshot that comes
// within half an interval of the last line (the run's final one).
func TestProgressLogLines(t *testing.T) {
	var stderr bytes.Buffer
	con := newConsole(&stderr)
	log := hclog.New(&hclog.LoggerOptions{Output: con, Level: hclog.Info})
	var o stages.RunOptions
	d := con.start(&o, log, progressSettings{every: 5 * time.Second}, "host_capacity=4KiB")
	if o.Progress != 5*time.Second || o.OnProgress == nil {
		t.Fatalf("options: every %v, callback %v", o.Progress, o.OnProgress != nil)
	}
	for _, p := range []stages.Progress{
		{Done: 1, Total: 6, Elapsed: 5 * time.Second, PrefixHitRatio: 0.25},
		{Done: 3, Total: 6, Elapsed: 10 * time.Second, PrefixHitRatio: 0.5},
		{Done: 6, Total: 6, Elapsed: 11 * time.Second, PrefixHitRatio: 0.6}, // final, too soon
	} {
		o.OnProgress(p)
	}
	d.finish()
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), stderr.String())
	}
	for _, want := range []string{"progress", "sweep=host_capacity=4KiB", "requests=3", "total=6", "prefix_hit_ratio=0.500", "elapsed=10s"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("line %q lacks %q", lines[1], want)
		}
	}
	if strings.ContainsRune(stderr.String(), '\r') {
		t.Error("log lines redraw like a bar")
	}
}

func TestProgressOff(t *testing.T) {
	for _, w := range []interface {
		Write([]byte) (int, error)
	}{&bytes.Buffer{}, &fakeTerminal{}} {
		con := newConsole(w)
		o := stages.RunOptions{Progress: time.Second}
		d := con.start(&o, hclog.NewNullLogger(), progressSettings{every: 0, explicit: true}, "")
		if o.Progress != 0 || o.OnProgress != nil {
			t.Errorf("--progress 0: every %v, callback %v", o.Progress, o.OnProgress != nil)
		}
		d.finish()
	}
}

// TestProgressBar feeds the bar progress as a run would: it shows done of
// total and the hit ratio, redraws every second unless --progress says
// otherwise, and is cleared at the end.
func TestProgressBar(t *testing.T) {
	term := &fakeTerminal{}
	con := newConsole(term)
	var o stages.RunOptions
	d := con.start(&o, hclog.NewNullLogger(), progressSettings{every: 5 * time.Second}, "host_capacity=4KiB")
	if o.Progress != time.Second || o.OnProgress == nil {
		t.Fatalf("bar: every %v, callback %v; want 1s without --progress", o.Progress, o.OnProgress != nil)
	}
	o.OnProgress(stages.Progress{Done: 2, Total: 8, Elapsed: time.Second, PrefixHitRatio: 0.25})
	o.OnProgress(stages.Progress{Done: 3, Total: 8, Elapsed: 2 * time.Second, PrefixHitRatio: 0.5})
	drawn := term.String()
	// The rate and the ETA come from the snapshot: 3 requests in 2 s,
	// 5 to go.
	for _, want := range []string{"3/8", "37%", "host_capacity=4KiB: hit 0.500, 1.50 req/s, ETA 3s"} {
		if !strings.Contains(drawn, want) {
			t.Errorf("bar %q lacks %q", drawn, want)
		}
	}
	if !strings.Contains(drawn, "\r") {
		t.Errorf("bar %q does not redraw in place", drawn)
	}
	d.finish()
	if after := term.String()[len(drawn):]; strings.TrimSpace(after) != "" || !strings.HasSuffix(after, "\r") {
		t.Errorf("finish wrote %q; want the line blanked", after)
	}
	// Updates after the end draw nothing.
	n := len(term.String())
	o.OnProgress(stages.Progress{Done: 8, Total: 8})
	if len(term.String()) != n {
		t.Error("the bar was drawn after finish")
	}

	var o2 stages.RunOptions
	con.start(&o2, hclog.NewNullLogger(), progressSettings{every: 200 * time.Millisecond, explicit: true}, "")
	if o2.Progress != 200*time.Millisecond {
		t.Errorf("bar with --progress 200ms: every %v", o2.Progress)
	}
}

// TestProgressSpinner: without a total the bar counts requests.
func TestProgressSpinner(t *testing.T) {
	term := &fakeTerminal{}
	con := newConsole(term)
	var o stages.RunOptions
	d := con.start(&o, hclog.NewNullLogger(), progressSettings{every: time.Second}, "")
	o.OnProgress(stages.Progress{Done: 7, PrefixHitRatio: 0.125})
	d.finish()
	if s := term.String(); !strings.Contains(s, "(7/") || !strings.Contains(s, "hit 0.125") {
		t.Errorf("spinner %q lacks the count or the hit ratio", s)
	}
}

// TestLogAroundBar: a log line written while the bar is up clears it first
// and the bar is drawn again after it, so neither garbles the other.
func TestLogAroundBar(t *testing.T) {
	term := &fakeTerminal{}
	con := newConsole(term)
	log := hclog.New(&hclog.LoggerOptions{Output: con, Level: hclog.Info})
	var o stages.RunOptions
	d := con.start(&o, log, progressSettings{every: time.Second}, "")
	o.OnProgress(stages.Progress{Done: 1, Total: 4, PrefixHitRatio: 0.5})
	before := len(term.String())
	log.Warn("disk slow")
	after := term.String()[before:]
	i := strings.Index(after, "disk slow")
	if i < 0 || !strings.Contains(after[:i], "\r") || !strings.Contains(after[i:], "1/4") {
		t.Errorf("log line around the bar: %q", after)
	}
	d.finish()
}

// TestRunOnTerminal runs a pipeline with the bar: the report still goes to
// stdout whole, and no progress log lines go to the terminal.
func TestRunOnTerminal(t *testing.T) {
	term := &fakeTerminal{}
	var stdout bytes.Buffer
	code := Main(t.Context(), []string{"run", "testdata/tiny.hcl", "--progress", "100ms", "--log-level", "info"}, &stdout, term)
	if code != exitOK {
		t.Fatalf("run: exit %d\n%s", code, term.String())
	}
	if !strings.HasPrefix(stdout.String(), "kvflow run: ") || !strings.Contains(stdout.String(), "wall time") {
		t.Errorf("report:\n%s", stdout.String())
	}
	if strings.Contains(term.String(), "progress:") {
		t.Errorf("log lines on a terminal:\n%s", term.String())
	}
}
