package pipeline

import (
	"fmt"
	"time"
)

// Node is a typed handle on the output of a source or stage; composing with Then checks types at compile time.
//
// Nodes are made by Source, Then and Via. A pipeline is a single chain, so each node can be
// extended once, by Then, Via or Sink.
type Node[T any] struct {
	p  *Pipeline
	id int // position in the chain: 0 is the source, i the i-th stage
}

// envelope is what travels through the go-streams channels between nodes: the item plus the
// metadata the engine needs, so user types stay free of it. Keys are assigned at the source and
// kept by every stage; a Via node assigns new ones to the items its Flow emits.
type envelope[T any] struct {
	key     string
	arrived time.Duration // monotonic, see now; set by a stage's dispatcher when the item enters its queue
	item    T
}

// Then adds stage s after n, with concurrency bounded by o.
func Then[In, Out any](n *Node[In], s Stage[In, Out], o Options) *Node[Out] {
	var node *stageNode[In, Out]
	if s != nil {
		node = newStageNode(s, o.withDefaults()) // outside the lock: it calls user code (Name)
	}
	p := n.p
	p.mu.Lock()
	defer p.mu.Unlock()
	next := &Node[Out]{p: p, id: n.id + 1}
	if node == nil {
		p.invalid("nil stage after %s", p.nameOf(n.id))
		return next
	}
	if p.extendable(n.id, fmt.Sprintf("stage %q", node.name)) {
		p.stages = append(p.stages, node)
	}
	return next
}

// extendable reports whether node id may get a successor, recording a build error if not.
// The caller holds p.mu.
func (p *Pipeline) extendable(id int, what string) bool {
	switch {
	case p.ran:
		p.invalid("%s added after Run", what)
	case p.sink != nil:
		p.invalid("%s added after the sink", what)
	case id != len(p.stages):
		p.invalid("%s added after %s, which already has a successor (a pipeline is a single chain)", what, p.nameOf(id))
	default:
		return true
	}
	return false
}

// invalid records the first build error. The caller holds p.mu.
func (p *Pipeline) invalid(format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf("%w: %s", ErrInvalidGraph, fmt.Sprintf(format, args...))
	}
}

// nameOf names node id for build errors. The caller holds p.mu.
func (p *Pipeline) nameOf(id int) string {
	switch {
	case id == 0 && p.source != nil:
		return fmt.Sprintf("source %q", p.source.nodeName())
	case id > 0 && id <= len(p.stages):
		return fmt.Sprintf("stage %q", p.stages[id-1].nodeName())
	}
	return fmt.Sprintf("node %d", id)
}
