package pipeline

import (
	"sync/atomic"
	"time"
)

// StageMetrics is a snapshot of one source, stage or sink.
//
// For a stage, Items counts successful Process calls, Errors failed ones (an error or a panic),
// Busy and the latencies cover every call, and QueueWait is the time from an item's arrival at
// the stage to the start of its Process. For the source, Items counts emitted items, Errors is
// 1 if gen failed, and the durations are zero. For the sink, they describe the calls of fn and
// QueueWait is zero. For a [Via] node, Items counts the outputs of its Flow passed on, Errors
// the outputs rejected, and Workers, Queue and the durations are zero. Errors caused by the run's own cancellation (an error wrapping the
// context's error, returned once the run is being cancelled) are not counted.
type StageMetrics struct {
	Name          string
	Workers       int
	Queue         int
	Items         uint64        // items processed successfully
	Errors        uint64        // failed calls
	Busy          time.Duration // total time inside Process
	QueueWait     time.Duration // total time items waited in the stage's queue before Process started
	P50, P99, Max time.Duration // Process latency
}

// epoch anchors the engine's timestamps. time.Since on a time with a monotonic reading reads
// only the monotonic clock, about half the cost of time.Now, and is immune to clock steps.
var epoch = time.Now()

// now returns the monotonic time since epoch.
func now() time.Duration { return time.Since(epoch) }

// stats accumulates one node's metrics. Every field is atomic: workers update it concurrently
// and Metrics reads it during a run without stopping them, so a snapshot taken mid-run may mix
// counters from slightly different instants.
type stats struct {
	items     atomic.Uint64
	errors    atomic.Uint64
	busy      atomic.Int64 // ns
	queueWait atomic.Int64 // ns
	latency   histogram
}

// observe records one call that took d; failed tells whether it counts as an error.
func (s *stats) observe(d time.Duration, ok, failed bool) {
	s.busy.Add(int64(d))
	s.latency.record(d)
	switch {
	case ok:
		s.items.Add(1)
	case failed:
		s.errors.Add(1)
	}
}

func (s *stats) snapshot(name string, workers, queue int) StageMetrics {
	q, maxd := s.latency.quantiles(0.50, 0.99)
	return StageMetrics{
		Name:      name,
		Workers:   workers,
		Queue:     queue,
		Items:     s.items.Load(),
		Errors:    s.errors.Load(),
		Busy:      time.Duration(s.busy.Load()),
		QueueWait: time.Duration(s.queueWait.Load()),
		P50:       q[0],
		P99:       q[1],
		Max:       maxd,
	}
}
