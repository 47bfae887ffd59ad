package storage

import "errors"

// Errors returned by tiers and the manager.
var (
	// ErrNoSpace means a page does not fit in a tier even after evicting every
	// unpinned page: the rest is pinned by requests in flight.
	ErrNoSpace = errors.New("no space in tier")
	// ErrTooLarge means a page is larger than the tier's whole capacity.
	ErrTooLarge = errors.New("page larger than tier capacity")
	// ErrNotPinned means Unpin was called for a page that holds no pin.
	ErrNotPinned = errors.New("page not pinned")
)

// Tier stores pages by key within a byte capacity. Implementations are safe
// for concurrent use.
//
// A pinned page (one with pins outstanding) is never evicted; unpinned pages
// are evicted by the tier's policy when room is needed.
type Tier interface {
	// Name is the tier's name in reports ("host", "ssd", ...).
	Name() string
	// Put stores p and pins it once. If a page with p's key is already
	// stored, Put pins and returns that page instead, so equal prefixes share
	// memory. It fails with ErrNoSpace or ErrTooLarge rather than exceed the
	// capacity.
	Put(p *Page) (*Page, error)
	// Pin returns the page stored under key and pins it, or false if the tier
	// does not hold it. Every successful Pin needs one Unpin.
	Pin(key PageKey) (*Page, bool)
	// PinAll pins the pages of every key, or none of them if any is absent:
	// a block is only usable when all its layers are present. It counts a
	// hit per page on success and a miss per absent page on failure.
	PinAll(keys []PageKey) ([]*Page, bool)
	// Unpin releases one pin of key.
	Unpin(key PageKey) error
	// Stats returns a snapshot of the tier's counters.
	Stats() TierStats
}

// TierStats are the counters of one tier.
type TierStats struct {
	Name          string `json:"name"`
	CapacityBytes int64  `json:"capacity_bytes"`
	UsedBytes     int64  `json:"used_bytes"`
	PeakBytes     int64  `json:"peak_bytes"`
	PinnedBytes   int64  `json:"pinned_bytes"`
	Pages         int64  `json:"pages"`
	// Hits and Misses count pages found and not found by lookups.
	Hits         uint64 `json:"hits"`
	Misses       uint64 `json:"misses"`
	BytesRead    uint64 `json:"bytes_read"`
	BytesWritten uint64 `json:"bytes_written"`
	PagesWritten uint64 `json:"pages_written"`
	Evictions    uint64 `json:"evictions"`
	EvictedBytes uint64 `json:"evicted_bytes"`
}
