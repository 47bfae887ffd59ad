package stages

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/pipeline"
)

// Source emits requests in arrival order.
type Source interface {
	// Requests calls emit for every request until the source is exhausted,
	// emit fails or ctx is done, and returns the first error.
	Requests(ctx context.Context, emit func(*Request) error) error
}

// Sized is implemented by sources that know how many requests they emit.
type Sized interface{ Total() int }

// Validator is implemented by settings that can check themselves when a
// pipeline file is validated, before anything runs.
type Validator interface{ Validate() error }

// SettingError is an error about one setting; its diagnostic points at the
// attribute.
type SettingError struct {
	Attr string
	Err  error
}

// Error returns "attr: cause".
func (e *SettingError) Error() string { return e.Attr + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *SettingError) Unwrap() error { return e.Err }

// SettingErrorf returns a SettingError for attr, formatting its cause.
func SettingErrorf(attr, format string, args ...any) error {
	return &SettingError{Attr: attr, Err: fmt.Errorf(format, args...)}
}

// Registry maps the names used in pipeline files to stage and source
// factories. It is not safe for concurrent registration; register before
// building pipelines.
type Registry struct {
	stages  map[string]stageFactory
	sources map[string]sourceFactory
}

// A stageFactory decodes a stage block's settings and returns the
// constructor that runs once the environment exists.
type stageFactory func(body hcl.Body, ctx *hcl.EvalContext, at hcl.Range) (func(*Env) (pipeline.Stage[*Step, *Step], error), hcl.Diagnostics)

type sourceFactory func(body hcl.Body, ctx *hcl.EvalContext, at hcl.Range) (Source, hcl.Diagnostics)

// ErrDuplicate is returned when a name is registered twice.
var ErrDuplicate = errors.New("already registered")

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{stages: map[string]stageFactory{}, sources: map[string]sourceFactory{}}
}

// DefaultRegistry returns a new registry holding the built-in stages (fetch,
// prefetch, align, attend, evict) and sources (synthetic_chat).
func DefaultRegistry() *Registry {
	r := NewRegistry()
	none := func() struct{} { return struct{}{} }
	must(RegisterStage(r, "fetch", none, func(e *Env, _ struct{}) (pipeline.Stage[*Step, *Step], error) { return NewFetch(e), nil }))
	must(RegisterStage(r, "prefetch", func() PrefetchSettings { return PrefetchSettings{} },
		func(e *Env, s PrefetchSettings) (pipeline.Stage[*Step, *Step], error) { return NewPrefetch(e, s), nil }))
	must(RegisterStage(r, "align", none, func(e *Env, _ struct{}) (pipeline.Stage[*Step, *Step], error) { return NewAlign(e), nil }))
	must(RegisterStage(r, "attend", func() AttendSettings { return AttendSettings{Kernel: model.KernelDense} },
		func(e *Env, s AttendSettings) (pipeline.Stage[*Step, *Step], error) {
			o, err := s.options(e.Model.HeadDim, e.Tuning.AttendThreads)
			if err != nil {
				return nil, err
			}
			return NewAttendWith(e, o)
		}))
	must(RegisterStage(r, "evict", func() EvictSettings { return EvictSettings{Policy: "lru"} },
		func(e *Env, _ EvictSettings) (pipeline.Stage[*Step, *Step], error) { return NewEvict(e), nil }))
	must(RegisterSource(r, "synthetic_chat", DefaultChatSettings, func(s ChatSettings) (Source, error) { return NewChat(s) }))
	must(RegisterSource(r, "mooncake_trace", DefaultMooncakeSettings, func(s MooncakeSettings) (Source, error) { return NewMooncakeTrace(s) }))
	return r
}

func must(err error) {
	if err != nil {
		panic(err) // only for the built-ins, whose names are distinct
	}
}

// RegisterStage registers a stage under name. defaults returns the settings
// a stage block leaves unset; S is a struct whose fields carry hcl tags (use
// struct{} for none) and may implement Validator. build makes the stage once
// the run's environment exists.
func RegisterStage[S any](r *Registry, name string, defaults func() S, build func(*Env, S) (pipeline.Stage[*Step, *Step], error)) error {
	if _, ok := r.stages[name]; ok {
		return fmt.Errorf("stage %q: %w", name, ErrDuplicate)
	}
	r.stages[name] = func(body hcl.Body, ctx *hcl.EvalContext, at hcl.Range) (func(*Env) (pipeline.Stage[*Step, *Step], error), hcl.Diagnostics) {
		s, diags := decodeSettings(defaults, body, ctx, at)
		if diags.HasErrors() {
			return nil, diags
		}
		return func(e *Env) (pipeline.Stage[*Step, *Step], error) { return build(e, s) }, nil
	}
	return nil
}

// RegisterSource registers a source type under name, like RegisterStage.
// build runs when the file is validated, so it should only check settings.
func RegisterSource[S any](r *Registry, name string, defaults func() S, build func(S) (Source, error)) error {
	if _, ok := r.sources[name]; ok {
		return fmt.Errorf("source %q: %w", name, ErrDuplicate)
	}
	r.sources[name] = func(body hcl.Body, ctx *hcl.EvalContext, at hcl.Range) (Source, hcl.Diagnostics) {
		s, diags := decodeSettings(defaults, body, ctx, at)
		if diags.HasErrors() {
			return nil, diags
		}
		src, err := build(s)
		if err != nil {
			return nil, hcl.Diagnostics{settingDiag(err, body, at)}
		}
		return src, nil
	}
	return nil
}

func decodeSettings[S any](defaults func() S, body hcl.Body, ctx *hcl.EvalContext, at hcl.Range) (S, hcl.Diagnostics) {
	s := defaults()
	if body == nil {
		return s, nil
	}
	if diags := gohcl.DecodeBody(body, ctx, &s); diags.HasErrors() {
		return s, diags
	}
	if v, ok := any(&s).(Validator); ok {
		if err := v.Validate(); err != nil {
			return s, hcl.Diagnostics{settingDiag(err, body, at)}
		}
	} else if v, ok := any(s).(Validator); ok {
		if err := v.Validate(); err != nil {
			return s, hcl.Diagnostics{settingDiag(err, body, at)}
		}
	}
	return s, nil
}

func settingDiag(err error, body hcl.Body, at hcl.Range) *hcl.Diagnostic {
	if se, ok := errors.AsType[*SettingError](err); ok {
		return config.ErrorAt(config.AttrRange(body, se.Attr, at), "Invalid "+se.Attr, se.Err.Error()+".")
	}
	return config.ErrorAt(at, "Invalid settings", err.Error()+".")
}

// Stages returns the registered stage names, sorted.
func (r *Registry) Stages() []string { return sortedKeys(r.stages) }

// Sources returns the registered source names, sorted.
func (r *Registry) Sources() []string { return sortedKeys(r.sources) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
