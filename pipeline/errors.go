package pipeline

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
)

var (
	// ErrPanic is wrapped by the error of a Process call (or a source's gen or key, a sink's fn,
	// or a Via node's key) that panicked. That error is a [*PanicError]; get the panic value and
	// the stack with errors.As.
	ErrPanic = errors.New("stage panicked")
	// ErrAlreadyRun is returned by a second call to Run.
	ErrAlreadyRun = errors.New("pipeline: already run")
	// ErrIncomplete is returned by Run when the pipeline has no source or no sink.
	ErrIncomplete = errors.New("pipeline: incomplete graph: need a source and a sink")
	// ErrInvalidGraph is wrapped by the error Run returns when the pipeline was built wrongly:
	// a second source or sink, a branch (Then, Via or Sink on a node that already has a
	// successor), a node added after the sink or after Run, or a nil stage, flow or callback.
	ErrInvalidGraph = errors.New("pipeline: invalid graph")
)

// StageError is the error of one item in one stage.
type StageError struct {
	Stage string // name of the source, stage or sink that failed
	Key   string // ordering key of the item; empty for a source error and for a Via node's output (it has no key yet)
	Item  string // fmt.Sprint of the item if it implements fmt.Stringer, else the key
	Err   error
}

// Error formats the error as `stage "<Stage>": <Item>: <Err>`, leaving out an empty Item or a
// nil Err. It is one line as long as Item and Err's text are: the stack of a panic is not in
// it (see [PanicError]).
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

// Unwrap returns Err, so that errors.Is and errors.As see the cause.
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

// PanicError is the error of a call into user code that panicked: a stage's Process, a
// source's gen or key, a sink's fn or a Via node's key. Run returns it inside a [*StageError];
// errors.Is(err, ErrPanic) reports whether a run failed by a panic, and errors.As gives the
// details:
//
//	var pe *pipeline.PanicError
//	if errors.As(err, &pe) {
//		log.Printf("%v\n%s", err, pe.Stack)
//	}
//
// Its Error is one line; the stack is only in the Stack field.
type PanicError struct {
	// Value is the value passed to panic (a runtime.Error for a runtime panic such as a nil
	// map write; a *runtime.PanicNilError for panic(nil)).
	Value any
	// Stack is the innermost frames of the panicking goroutine, from the panic site to the
	// engine's call into user code (at most a few), one "function\n\tfile:line" pair per
	// frame, innermost first, lines separated by "\n".
	Stack string
}

// Error returns "stage panicked: " followed by the panic value, with any line breaks in the
// value escaped so that the text is one line.
func (e *PanicError) Error() string {
	msg := fmt.Sprint(e.Value)
	if strings.ContainsAny(msg, "\r\n") {
		msg = strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(msg)
	}
	return ErrPanic.Error() + ": " + msg
}

// Unwrap returns ErrPanic and, when the panic value is an error, that error too, so that
// errors.Is and errors.As see both.
func (e *PanicError) Unwrap() []error {
	if err, ok := e.Value.(error); ok {
		return []error{ErrPanic, err}
	}
	return []error{ErrPanic}
}

// panicError turns a recovered panic value into a *PanicError with the panicking goroutine's
// stack. It must be called from the deferred function that recovered.
func panicError(v any) error {
	return &PanicError{Value: v, Stack: shortStack()}
}

// stackFrames bounds the stack kept in a panic error: enough to find the panicking line,
// short enough to log.
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
// the engine's wrapper. It must be called by panicError, from the deferred function that
// recovered.
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
			fmt.Fprintf(&b, "%s\n\t%s:%d\n", f.Function, f.File, f.Line)
			kept++
		}
		if !more {
			break
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}
