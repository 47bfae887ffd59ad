package stages

import (
	"context"
	"fmt"
)

// AttendSettings are the attend stage's HCL settings.
type AttendSettings struct {
	// Kernel selects the attention kernel; "dense" is the one there is.
	Kernel string `hcl:"kernel,optional"`
}

// Validate implements Validator.
func (s AttendSettings) Validate() error {
	if s.Kernel != "dense" {
		return SettingErrorf("kernel", "%q: the available kernel is \"dense\"", s.Kernel)
	}
	return nil
}

// Attend runs the layer's attention for the step's new tokens over its paged
// K/V view, writing their K/V into the view's pages. It first takes the
// cached pages that were loading from the store; the time it waits for them
// is the step's stall.
type Attend struct{ env *Env }

// NewAttend returns the attend stage.
func NewAttend(env *Env) *Attend { return &Attend{env: env} }

// Name returns "attend".
func (a *Attend) Name() string { return "attend" }

// Process implements pipeline.Stage.
func (a *Attend) Process(ctx context.Context, s *Step) (*Step, error) {
	if s.Cached {
		return s, nil
	}
	env := a.env
	if s.KV == nil && !env.Metadata {
		return nil, fmt.Errorf("no K/V view: is align before attend in the chain?")
	}
	if err := env.resolve(ctx, s); err != nil {
		return nil, err
	}
	if env.Metadata || (s.Req.Synthetic && !s.Decode) {
		// Nothing to compute: a metadata run has no bytes, and a replayed
		// prompt's pages are filled, not computed.
		if !env.Metadata {
			env.fill(s)
		}
		s.Seq.wrote(s.Layer, s.End)
		if s.Layer == 0 {
			env.computedTokens.Add(int64(s.End - s.Start))
			if s.Decode {
				env.decodeTokens.Add(int64(s.End - s.Start))
			}
		}
		return s, nil
	}
	r, hidden := s.Req, a.env.Model.HiddenSize
	n := s.End - s.Start
	x := make([]float32, n*hidden)
	for i := range n {
		Embed(x[i*hidden:(i+1)*hidden], r, s.Start+i, s.Layer)
	}
	var pos [3][]int64
	for i := range pos {
		pos[i] = r.Positions[i][s.Start:s.End]
	}
	s.Out = make([]float32, n*hidden)
	if err := a.env.Layer(s.Layer).Forward(x, pos, s.KV, s.Start, s.Out); err != nil {
		return nil, err
	}
	s.Seq.wrote(s.Layer, s.End)
	if s.Layer == 0 {
		a.env.computedTokens.Add(int64(n))
		if s.Decode {
			a.env.decodeTokens.Add(int64(n))
		}
	}
	return s, nil
}
