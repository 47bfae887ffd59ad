// Package pipeline is a typed dataflow engine: one source, a chain of stages and one sink,
// run concurrently with bounded memory, per-key ordering and fail-fast cancellation.
//
// # Stages and types
//
// A [Stage] turns one In into one Out. Chains are built with [Source], [Then], [Via] and
// [Sink], each returning or taking a typed [Node], so a stage whose input type does not match
// the previous output does not compile:
//
//	p := pipeline.New()
//	reqs := pipeline.Source(p, "requests", Request.ID, gen)
//	toks := pipeline.Then(reqs, tokenize, pipeline.Options{Workers: 4})
//	embs := pipeline.Then(toks, embed, pipeline.Options{Workers: 2, Queue: 8})
//	pipeline.Sink(embs, "store", store)
//	err := p.Run(ctx)
//
// # go-streams
//
// Under the typed surface the nodes are github.com/reugn/go-streams components: the source
// implements streams.Source, each stage and Via node streams.Flow, and the sink streams.Sink;
// Run wires them with their Via and To methods. Each hop between two nodes copies the
// upstream's Out() to the downstream's In() and then closes it, like go-streams'
// flow.DoStream, but in a goroutine that Run waits for (the last hop runs in Run itself,
// inside To). Items travel between the engine's nodes in an internal envelope carrying their
// key.
//
// [Via] embeds any go-streams Flow (flow.NewFilter, flow.NewMap, flow.NewThrottler, a
// window...) in a typed chain: the Flow receives plain items, its outputs are type-checked,
// given keys by a key function and sent on, and Run waits until the Flow has drained:
//
//	even := pipeline.Via(toks, "even", flow.NewFilter(func(t Token) bool { return t.N%2 == 0 }, 1), Token.Key)
//
// # Keys and ordering
//
// The source's key function gives every item an ordering key, which the item keeps through
// every stage. Items of one key are processed one at a time, in emission order, by every stage
// and reach the sink in that order; items of different keys run in parallel and may overtake
// each other. A key with a backlog, or a slow item, holds at most one of a stage's workers, so
// it does not stall other keys. A stage with Workers == 1 keeps the global emission order. A
// Via node is the exception: it keeps whatever order its Flow keeps (go-streams' Map and
// Filter with parallelism 1 keep it), and gives the Flow's outputs new keys.
//
// # Backpressure
//
// Each stage has Options.Workers goroutines and a queue of at most Options.Queue items that it
// has accepted but not started (including items waiting behind an earlier item of their key).
// When the queue is full the stage stops reading its input, so the previous stage's workers
// block on output, and so on up to the source, whose emit blocks. The number of items in a
// running pipeline is therefore bounded by the sum over stages of Queue+Workers, plus one item
// per hop between nodes and one in the sink, plus, for each Via node, two items and what its
// Flow buffers. A single key can fill a stage's queue only with items that arrived while its
// earlier item was still in the stage.
//
// # Errors and cancellation
//
// The first error returned by gen, Process or the sink function, a panic in any of them or in
// a key function, or a Via node's Flow emitting a value of the wrong type fails the run: Run
// cancels the context passed to every call, stops the source (emit returns the context's
// error), drops queued items, lets in-flight calls return, and waits for every goroutine
// before returning a [*StageError] naming the stage and the item. Cancelling the context given
// to Run stops the run in the same way, and Run then returns an error wrapping the context's
// error. Run returns only after every goroutine it started has exited, and every Via node's
// Flow has closed its output, so a Process that ignores its context delays Run.
//
// A panic is reported as a [*PanicError], which wraps [ErrPanic] (and the panic value, if it
// is an error). Its Error is one line; get the panicking frames from its Stack field with
// errors.As. The functions of a Via node's Flow run in go-streams' goroutines, where panics
// are not recovered.
//
// # Metrics
//
// [Pipeline.Metrics] returns per-node counters — items, errors, time busy in Process, time
// items waited in the queue — and Process latency quantiles from a fixed log-linear histogram
// (buckets ~3% wide from 1µs to ~1h). It is safe to call while Run is in progress.
package pipeline
