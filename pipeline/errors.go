package pipeline

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
)

var (
	// ErrPanic is wrapped, with the panic value and a short stack, by the error of a
	// Process call (or a source's gen, or a sink's fn) that panicked.
	ErrPanic = errors.New("stage panicked")
	// ErrAlreadyRun is returned by a second call to Run.
	ErrAlreadyRun = errors.New("pipeline: already run")
	// ErrIncomplete is returned by Run when the pipeline has no source or no sink.
	ErrIncomplete = errors.New("pipeline: incomplete graph: need a source and a sink")
	// ErrInvalidGraph is wrapped by the error Run returns when the pipeline was built wrongly:
	// a second source or sink, a branch (Then or Sink on a node that already has a
	// successor), or a nil stage or callback.
	ErrInvalidGraph = errors.New("pipeline: invalid graph")
)

// StageError is the error of one item in one stage.
type StageError struct {
	Stage string // name of the source, stage or sink that failed
	Key   string // ordering key of the item; empty for a source error
	Item  string // fmt.Sprint of the item if it implements fmt.Stringer, else the key
	Err   error
}

func (e *StageError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "stage %q", e.Stage)
	if e.Item != "" {
		b.WriteString(": ")
		b.WriteString(e.Item)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *StageError) Unwrap() error { return e.Err }

// itemError builds the StageError of item v with key key in the named node.
func itemError(stage, key string, v any, err error) *StageError {
	item := key
	if s, ok := v.(fmt.Stringer); ok {
		// fmt.Sprint, not s.String(): fmt recovers from a panicking String and from nil receivers.
		item = fmt.Sprint(s)
	}
	return &StageError{Stage: stage, Key: key, Item: item, Err: err}
}

// panicError turns a recovered panic value into an error wrapping ErrPanic and, when the
// value is itself an error, that error too.
func panicError(v any) error {
	stack := shortStack()
	if err, ok := v.(error); ok {
		return fmt.Errorf("%w: %w\n%s", ErrPanic, err, stack)
	}
	return fmt.Errorf("%w: %v\n%s", ErrPanic, v, stack)
}

// stackFrames bounds the stack kept in a panic error: enough to find the panicking line,
// short enough for a log line.
const stackFrames = 6

// enginePrefix is the prefix of this package's function names. The stack of a panic stops at
// the engine's call wrappers: the frames below them are the same for every panic.
var enginePrefix = reflect.TypeFor[StageError]().PkgPath() + "."

// isEngineCall reports whether function is one of the wrappers that call user code.
func isEngineCall(function string) bool {
	return strings.HasPrefix(function, enginePrefix) &&
		(strings.HasSuffix(function, ").call") || strings.HasSuffix(function, ").generate"))
}

// shortStack formats the innermost frames of the panicking goroutine, from the panic site to
// the engine's wrapper. It must be called from the deferred function that recovered.
func shortStack() string {
	pcs := make([]uintptr, 32)
	n := runtime.Callers(3, pcs) // skip runtime.Callers, shortStack, panicError
	frames := runtime.CallersFrames(pcs[:n])
	var b strings.Builder
	kept := 0
	skipping := true // skip the deferred func and runtime.gopanic & co. above the panic site
	for kept < stackFrames {
		f, more := frames.Next()
		if skipping {
			if strings.HasPrefix(f.Function, "runtime.") {
				skipping = false // frames after gopanic belong to the panicking code
			}
		} else if isEngineCall(f.Function) {
			break
		} else if !strings.HasPrefix(f.Function, "runtime.") {
			fmt.Fprintf(&b, "\t%s\n\t\t%s:%d\n", f.Function, f.File, f.Line)
			kept++
		}
		if !more {
			break
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}
