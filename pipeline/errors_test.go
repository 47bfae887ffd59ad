package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kvflow/kvflow/pipeline"
	"go.uber.org/goleak"
)

var errBoom = errors.New("boom")

// endless emits items of keys k0..k9 until emit fails, and returns emit's error.
func endless(_ context.Context, emit func(item) error) error {
	for s := 0; ; s++ {
		for k := range 10 {
			if err := emit(item{key: fmt.Sprintf("k%d", k), seq: s}); err != nil {
				return err
			}
		}
	}
}

func asStageError(t *testing.T, err error) *pipeline.StageError {
	t.Helper()
	var se *pipeline.StageError
	if !errors.As(err, &se) {
		t.Fatalf("Run = %v (%T), want a *StageError", err, err)
	}
	return se
}

// TestStageErrorCancelsRun fails one item while two others of other keys are inside Process,
// and checks that those see their context cancelled, the endless source stops, and Run reports
// the failing stage and item.
func TestStageErrorCancelsRun(t *testing.T) {
	defer goleak.VerifyNone(t)
	var (
		started   sync.WaitGroup // the two bystanders are inside Process
		cancelled atomic.Int32   // bystanders that saw ctx cancelled
	)
	started.Add(2)
	bad := item{key: "k2", seq: 0}

	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	n = pipeline.Then(n, pipeline.StageFunc("fail", func(ctx context.Context, it item) (item, error) {
		switch {
		case it == bad:
			started.Wait()
			return it, errBoom
		case it.seq == 0 && (it.key == "k0" || it.key == "k1"):
			started.Done()
			<-ctx.Done()
			cancelled.Add(1)
			return it, ctx.Err()
		}
		return it, nil
	}), pipeline.Options{Workers: 3, Queue: 1})
	n = pipeline.Then(n, checked("after", newOrderCheck(), 0), pipeline.Options{Workers: 2})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })

	err := p.Run(context.Background())
	se := asStageError(t, err)
	if se.Stage != "fail" || se.Key != "k2" || se.Item != "k2#0" || !errors.Is(err, errBoom) {
		t.Errorf("got %+v, want stage fail, key k2, item k2#0, wrapping errBoom", se)
	}
	if want := `stage "fail": k2#0: boom`; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	if got := cancelled.Load(); got != 2 {
		t.Errorf("%d in-flight calls saw the cancellation, want 2", got)
	}
	for _, m := range p.Metrics() {
		if m.Name == "fail" && m.Errors != 1 {
			t.Errorf("fail: Errors = %d, want 1 (cancellation echoes are not counted)", m.Errors)
		}
	}
}

func TestSourceError(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, func(_ context.Context, emit func(item) error) error {
		for s := range 5 {
			if err := emit(item{key: "a", seq: s}); err != nil {
				return err
			}
		}
		return errBoom
	})
	n = pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	err := p.Run(context.Background())
	se := asStageError(t, err)
	if se.Stage != "src" || se.Key != "" || se.Item != "" || !errors.Is(err, errBoom) {
		t.Errorf("got %+v, want stage src wrapping errBoom", se)
	}
	if want := `stage "src": boom`; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	if m := p.Metrics()[0]; m.Items != 5 || m.Errors != 1 {
		t.Errorf("source metrics: items %d errors %d, want 5 and 1", m.Items, m.Errors)
	}
}

func TestSinkError(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	n = pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{Workers: 4})
	var calls int
	pipeline.Sink(n, "store", func(_ context.Context, it item) error {
		if calls++; calls == 7 {
			return fmt.Errorf("write %v: %w", it, errBoom)
		}
		return nil
	})
	err := p.Run(context.Background())
	se := asStageError(t, err)
	if se.Stage != "store" || !errors.Is(err, errBoom) || se.Item == "" {
		t.Errorf("got %+v, want stage store with the item, wrapping errBoom", se)
	}
	if calls != 7 {
		t.Errorf("sink called %d times, want 7: no calls after the failure", calls)
	}
	if m := p.Metrics()[2]; m.Items != 6 || m.Errors != 1 {
		t.Errorf("sink metrics: items %d errors %d, want 6 and 1", m.Items, m.Errors)
	}
}

// Named panicking functions, so that the tests can look for them in the stack.

func explodeOnThird(_ context.Context, it item) (item, error) {
	if it.seq == 3 {
		var m map[string]int
		m["x"] = 1 // a runtime error panic
	}
	return it, nil
}

func panicGen(context.Context, func(item) error) error { panic("no input") }

func panicKey(item) string { panic("bad key") }

func panicSink(context.Context, item) error { panic(errBoom) }

func TestPanicsBecomeErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	nop := func(context.Context, item) error { return nil }
	for _, tc := range []struct {
		stage, fn, msg string // msg: the whole Error() text
		build          func(p *pipeline.Pipeline)
	}{
		{"explode", "explodeOnThird", "", func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", keyOf, endless)
			n = pipeline.Then(n, pipeline.StageFunc("explode", explodeOnThird), pipeline.Options{Workers: 4})
			pipeline.Sink(n, "sink", nop)
		}},
		{"src", "panicGen", `stage "src": stage panicked: no input`, func(p *pipeline.Pipeline) {
			pipeline.Sink(pipeline.Source(p, "src", keyOf, panicGen), "sink", nop)
		}},
		{"src", "panicKey", `stage "src": stage panicked: bad key`, func(p *pipeline.Pipeline) {
			pipeline.Sink(pipeline.Source(p, "src", panicKey, endless), "sink", nop)
		}},
		{"sink", "panicSink", `stage "sink": k0#0: stage panicked: boom`, func(p *pipeline.Pipeline) {
			pipeline.Sink(pipeline.Source(p, "src", keyOf, endless), "sink", panicSink)
		}},
	} {
		p := pipeline.New()
		tc.build(p)
		err := p.Run(context.Background())
		se := asStageError(t, err)
		if se.Stage != tc.stage || !errors.Is(err, pipeline.ErrPanic) {
			t.Errorf("got %v, want a panic in %q", err, tc.stage)
		}
		msg := err.Error()
		if strings.ContainsAny(msg, "\r\n") {
			t.Errorf("%s: Error() is more than one line: %q", tc.fn, msg)
		}
		if tc.msg != "" && msg != tc.msg {
			t.Errorf("%s: Error() = %q, want %q", tc.fn, msg, tc.msg)
		}
		var pe *pipeline.PanicError
		if !errors.As(err, &pe) {
			t.Errorf("%s: %v is not a *PanicError", tc.fn, err)
			continue
		}
		if !strings.Contains(pe.Stack, "pipeline_test."+tc.fn) || !strings.Contains(pe.Stack, "errors_test.go:") {
			t.Errorf("%s: the stack lacks the panicking function:\n%s", tc.fn, pe.Stack)
		}
	}
}

func TestPanicErrorFormat(t *testing.T) {
	pe := &pipeline.PanicError{Value: "line 1\nline 2", Stack: "main.f\n\tf.go:1"}
	if got, want := pe.Error(), `stage panicked: line 1\nline 2`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(pe, pipeline.ErrPanic) || errors.Is(pe, errBoom) {
		t.Errorf("a PanicError with a string value must wrap ErrPanic only")
	}
	pe = &pipeline.PanicError{Value: errBoom}
	if got, want := pe.Error(), "stage panicked: boom"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(pe, pipeline.ErrPanic) || !errors.Is(pe, errBoom) {
		t.Errorf("a PanicError with an error value must wrap ErrPanic and the value")
	}
}

func TestPanicValueErrorIsWrapped(t *testing.T) {
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, roundRobin(1, 1))
	n = pipeline.Then(n, pipeline.StageFunc("explode", func(context.Context, item) (item, error) { panic(errBoom) }), pipeline.Options{})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	err := p.Run(context.Background())
	if !errors.Is(err, pipeline.ErrPanic) || !errors.Is(err, errBoom) {
		t.Errorf("Run = %v, want ErrPanic wrapping errBoom", err)
	}
}

// TestCallerCancel cancels the caller's context from the sink while workers wait inside
// Process for that cancellation.
func TestCallerCancel(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var held atomic.Int32 // Process calls that were blocked when the run was cancelled
	entered := make(chan struct{}, 1)
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	// One worker keeps the emission order, so k0#0 is the first item to reach "waits".
	n = pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{Workers: 1})
	n = pipeline.Then(n, pipeline.StageFunc("waits", func(ctx context.Context, it item) (item, error) {
		// k0#0, the oldest item, passes once another item is inside Process; every other item
		// holds its worker until the cancellation.
		if it.key == "k0" && it.seq == 0 {
			<-entered
			return it, nil
		}
		select {
		case entered <- struct{}{}:
		default:
		}
		<-ctx.Done()
		held.Add(1)
		return it, ctx.Err()
	}), pipeline.Options{Workers: 2})
	var calls int
	pipeline.Sink(n, "sink", func(context.Context, item) error {
		calls++
		cancel()
		return nil
	})
	err := p.Run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	var se *pipeline.StageError
	if errors.As(err, &se) {
		t.Errorf("Run = %v, want the caller's cancellation, not a stage error", err)
	}
	if calls != 1 || held.Load() == 0 {
		t.Errorf("sink calls %d, held calls %d: want 1 and > 0", calls, held.Load())
	}
	for _, m := range p.Metrics() {
		if m.Errors != 0 {
			t.Errorf("%s: Errors = %d, want 0 for a cancelled run", m.Name, m.Errors)
		}
	}
}

func TestCancelledBeforeRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	n = pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	if err := p.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
}

func TestStageErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		err  *pipeline.StageError
		want string
	}{
		{&pipeline.StageError{Stage: "attend", Key: "r3", Item: "request r3 layer 2 tokens [64,128)", Err: errors.New("page missing")},
			`stage "attend": request r3 layer 2 tokens [64,128): page missing`},
		{&pipeline.StageError{Stage: "src", Err: errBoom}, `stage "src": boom`},
		{&pipeline.StageError{Stage: "x", Item: "k"}, `stage "x": k`},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
	if (&pipeline.StageError{Err: errBoom}).Unwrap() != errBoom {
		t.Error("Unwrap does not return Err")
	}
}

// TestItemWithoutStringerUsesKey: Item falls back to the key.
func TestItemWithoutStringerUsesKey(t *testing.T) {
	p := pipeline.New()
	n := pipeline.Source(p, "src", func(i int) string { return fmt.Sprintf("n%d", i) }, func(_ context.Context, emit func(int) error) error {
		return emit(42)
	})
	n = pipeline.Then(n, pipeline.StageFunc("fail", func(context.Context, int) (int, error) { return 0, errBoom }), pipeline.Options{})
	pipeline.Sink(n, "sink", func(context.Context, int) error { return nil })
	se := asStageError(t, p.Run(context.Background()))
	if se.Key != "n42" || se.Item != "n42" {
		t.Errorf("got key %q item %q, want n42 for both", se.Key, se.Item)
	}
}
