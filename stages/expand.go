package stages

// Steps expands a request into its steps, in the order they run: each prefill
// chunk through every layer, then each decode token through every layer.
// Every step shares one Sequence.
func (e *Env) Steps(r *Request) []*Step {
	layers := e.Layers()
	seq := newSequence(layers)
	var steps []*Step
	add := func(start, end int, decode bool) {
		for l := range layers {
			steps = append(steps, &Step{Req: r, Seq: seq, Index: len(steps), Layer: l, Start: start, End: end, Decode: decode})
		}
	}
	for start := 0; start < r.PromptLen; start += e.PrefillChunk {
		add(start, min(start+e.PrefillChunk, r.PromptLen), false)
	}
	for t := r.PromptLen; t < len(r.Tokens); t++ {
		add(t, t+1, true)
	}
	steps[len(steps)-1].Last = true
	return steps
}
