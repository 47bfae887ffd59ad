package storage

// Handle names one entry of a cache shard for the shard's Policy. It is a
// small dense index, stable while the entry is stored and reused once the
// entry has left, so a policy keeps its per-entry state in slices indexed by
// handle: an intrusive node that costs no allocation and no map lookup.
type Handle uint32

// Policy orders the unpinned entries of one cache shard for eviction.
//
// Each shard has its own Policy and calls it with the shard's lock held, so a
// policy need not be safe for concurrent use and should not allocate on the
// hot path (Touch, Push, Hold, Evict) beyond growing its per-handle state.
//
// Pinned entries are not in the order: the cache calls Hold when an entry is
// pinned and Push when its last pin is released, so Evict never has to skip
// entries it may not evict. A policy that keeps history (frequencies, a ghost
// queue) may keep it across Hold and Push; Remove and Evict end the entry,
// and a later Push of the same handle is a new entry.
//
// An entry stored unpinned is pushed at once; one stored pinned is pushed
// when its last pin is released. From then on each first pin is a Hold and
// each release of the last pin a Push, and the entry ends with Remove (the
// cache removed it while evictable) or with Evict. Touch may come at any time
// while the entry is stored.
//
// Gets take no lock, so the cache passes their hits on as follows. A hit on
// an entry the policy was told of (pushed or touched) within the shard's last
// n/8 pushes and touches, n the shard's unpinned entries, is not passed on:
// the entry is among the most recent eighth of an LRU's order, which the hit
// would only reshuffle, and skipping it spares readers the lock. Any other
// hit is passed on at once if the shard's lock is free, or else buffered and
// passed on, in order, by the next holder of the lock before it evicts; under
// heavy contention a full buffer drops hits. A shard of fewer than 8 unpinned
// entries used by one goroutine thus passes on every hit that changes an
// LRU's order; a policy that counts frequencies sees fewer hits than there
// were.
type Policy[K comparable] interface {
	// Push makes h, which holds key k, evictable: it was just stored
	// unpinned, or its last pin was released. LRU treats it as the most
	// recently used entry.
	Push(h Handle, k K)
	// Touch records a hit on h. h may be pinned (held); a policy that orders
	// only evictable entries ignores it then.
	Touch(h Handle)
	// Hold takes h out of the order because it was pinned; a Push brings it
	// back.
	Hold(h Handle)
	// Remove takes the evictable entry h out of the order because it was
	// removed from the cache; its handle may be reused.
	Remove(h Handle)
	// Evict removes the next victim from the order and returns it. It
	// returns false only when no entry is evictable; the cache relies on a
	// victim whenever it has pushed entries that are not held or removed.
	Evict() (Handle, bool)
}

// NewLRU returns a least-recently-used Policy: Evict returns the evictable
// entry pushed or touched longest ago. It is the cache's default.
func NewLRU[K comparable]() Policy[K] {
	// nodes[0] is the sentinel of a circular list, so linking and unlinking
	// never branch on an empty list.
	return &lru[K]{nodes: make([]lruNode, 1)}
}

// lru is a doubly linked list threaded through a slice indexed by handle:
// node h+1 holds h's links and node 0 is the sentinel, whose next is the most
// recently used entry and whose prev the least.
type lru[K comparable] struct {
	nodes []lruNode
}

type lruNode struct {
	prev, next uint32
	linked     bool // in the list: pushed and not held, removed or evicted
}

func (l *lru[K]) Push(h Handle, _ K) {
	i := uint32(h) + 1
	if int(i) >= len(l.nodes) {
		// Grow by appending so the slice doubles: amortised O(1), and no
		// allocation once the shard has reached its steady size.
		l.nodes = append(l.nodes, make([]lruNode, int(i)+1-len(l.nodes))...)
		l.nodes = l.nodes[:cap(l.nodes)]
	}
	if l.nodes[i].linked {
		l.unlink(i)
	}
	l.pushFront(i)
}

func (l *lru[K]) Touch(h Handle) {
	i := uint32(h) + 1
	if int(i) >= len(l.nodes) || !l.nodes[i].linked || l.nodes[0].next == i {
		return
	}
	l.unlink(i)
	l.pushFront(i)
}

func (l *lru[K]) Hold(h Handle) { l.drop(h) }

func (l *lru[K]) Remove(h Handle) { l.drop(h) }

func (l *lru[K]) Evict() (Handle, bool) {
	i := l.nodes[0].prev
	if i == 0 {
		return 0, false
	}
	l.unlink(i)
	return Handle(i - 1), true
}

func (l *lru[K]) drop(h Handle) {
	if i := uint32(h) + 1; int(i) < len(l.nodes) && l.nodes[i].linked {
		l.unlink(i)
	}
}

func (l *lru[K]) pushFront(i uint32) {
	head := l.nodes[0].next
	l.nodes[i] = lruNode{prev: 0, next: head, linked: true}
	l.nodes[head].prev = i
	l.nodes[0].next = i
}

func (l *lru[K]) unlink(i uint32) {
	n := l.nodes[i]
	l.nodes[n.prev].next = n.next
	l.nodes[n.next].prev = n.prev
	l.nodes[i] = lruNode{}
}
