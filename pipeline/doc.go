// Package pipeline is a typed dataflow engine: one source, a chain of stages and one sink,
// run concurrently with bounded memory, per-key ordering and fail-fast cancellation.
//
// # Stages and types
//
// A [Stage] turns one In into one Out. Chains are built with [Source], [Then] and [Sink], each
// returning or taking a typed [Node], so a stage whose input type does not match the previous
// output does not compile:
//
//	p := pipeline.New()
//	reqs := pipeline.Source(p, "requests", Request.ID, gen)
//	toks := pipeline.Then(reqs, tokenize, pipeline.Options{Workers: 4})
//	embs := pipeline.Then(toks, embed, pipeline.Options{Workers: 2, Queue: 8})
//	pipeline.Sink(embs, "store", store)
//	err := p.Run(ctx)
//
// Under the typed surface the nodes are github.com/reugn/go-streams components: the source is
// a streams.Source, each stage a streams.Flow and the sink a streams.Sink, connected with
// Via and To. Items travel between them in an internal envelope carrying their key.
//
// # Keys and ordering
//
// The source's key function gives every item an ordering key, which the item keeps through
// every stage. Items of one key are processed one at a time, in emission order, by every stage
// and reach the sink in that order; items of different keys run in parallel and may overtake
// each other. A key with a backlog, or a slow item, holds at most one of a stage's workers, so
// it does not stall other keys. A stage with Workers == 1 keeps the global emission order.
//
// # Backpressure
//
// Each stage has Options.Workers goroutines and a queue of at most Options.Queue items that it
// has accepted but not started (including items waiting behind an earlier item of their key).
// When the queue is full the stage stops reading its input, so the previous stage's workers
// block on output, and so on up to the source, whose emit blocks. The number of items in a
// running pipeline is therefore bounded by the sum over stages of Queue+Workers, plus one item
// per hop between nodes and one in the sink. A single key can fill a stage's queue only with
// items that arrived while its earlier item was still in the stage.
//
// # Errors and cancellation
//
// The first error returned by gen, Process or the sink function, or a panic in any of them,
// fails the run: Run cancels the context passed to every call, stops the source (emit returns
// the context's error), drops queued items, lets in-flight calls return, and waits for every
// goroutine before returning a [*StageError] naming the stage and the item. Panics wrap
// [ErrPanic]. Cancelling the context given to Run stops the run in the same way, and Run then
// returns an error wrapping the context's error. Run returns only after every goroutine it
// started has exited, so a Process that ignores its context delays Run.
//
// # Metrics
//
// [Pipeline.Metrics] returns per-node counters — items, errors, time busy in Process, time
// items waited in the queue — and Process latency quantiles from a fixed log-linear histogram
// (buckets ~3% wide from 1µs to ~1h). It is safe to call while Run is in progress.
package pipeline
