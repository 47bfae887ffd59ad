package storage

import "errors"

// Errors returned by tiers and the manager.
var (
	// ErrNoSpace means a page does not fit in a tier even after evicting every
	// unpinned page: the rest is pinned by requests in flight. A store
	// whose disk is nearly full also returns it (with ErrDiskFull).
	ErrNoSpace = errors.New("no space in tier")
	// ErrDiskFull means the disk under a store has too little free space
	// left for a write (see SSDOptions.MinFree).
	ErrDiskFull = errors.New("disk nearly full")
	// ErrTooLarge means a page is larger than the tier's whole capacity.
	ErrTooLarge = errors.New("page larger than tier capacity")
	// ErrNotPinned means Unpin was called for a page that holds no pin.
	ErrNotPinned = errors.New("page not pinned")
	// ErrChecksum means a page read back from a store does not match the
	// checksum written with it. The store has dropped the page; its K/V must
	// be recomputed. Such bytes are never returned.
	ErrChecksum = errors.New("page checksum mismatch")
	// ErrClosed is returned by operations on a closed tier or prefetcher.
	ErrClosed = errors.New("closed")
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
	// Contains reports whether the tier holds key, without counting a hit
	// or a miss. Unless the page is pinned it may be evicted at any moment
	// after.
	Contains(key PageKey) bool
	// Range calls fn for the pages stored, in no particular order, until fn
	// returns false. A page is valid during the call only.
	Range(fn func(*Page) bool)
	// PinAll pins the pages of every key, or none of them if any is absent:
	// a block is only usable when all its layers are present. It counts a
	// hit per page on success and a miss per absent page on failure.
	PinAll(keys []PageKey) ([]*Page, bool)
	// Unpin releases one pin of key.
	Unpin(key PageKey) error
	// Stats returns a snapshot of the tier's counters.
	Stats() TierStats
}

// Store is a tier whose pages live outside process memory (SSD, later a
// remote tier): a page is written as a copy and read back as a copy, with a
// checksum verified on every read. Implementations are safe for concurrent
// use.
//
// A pinned page is never evicted; unpinned pages are evicted coldest first
// when a write needs room. Reads and writes make a page the most recent.
type Store interface {
	// Name is the tier's name in reports ("ssd", ...).
	Name() string
	// Write stores a copy of p, evicting the coldest unpinned pages to make
	// room. If p's key is already stored, Write only marks it recent. It
	// fails with ErrTooLarge or ErrNoSpace rather than exceed the capacity
	// or fill the disk (ErrDiskFull, which is also ErrNoSpace), and with
	// the underlying error when the medium fails.
	Write(p *Page) error
	// Contains reports whether key is stored. Unless the page is pinned it
	// may be evicted at any moment after.
	Contains(key PageKey) bool
	// Pin keeps key's page from eviction and reports whether it is stored.
	// Every successful Pin needs one Unpin.
	Pin(key PageKey) bool
	// Unpin releases one pin of key; ErrNotPinned if it holds none.
	Unpin(key PageKey) error
	// Read returns a copy of key's page, using buf for its bytes when buf is
	// large enough. It fails with ErrNotFound when the page is not stored
	// (or, dropped, is stored in a format the tier no longer reads), and
	// with ErrChecksum, after dropping the page, when the stored bytes do
	// not match their checksum.
	Read(key PageKey, buf []byte) (*Page, error)
	// Stats returns a snapshot of the tier's counters.
	Stats() TierStats
	// Close flushes and closes the store. Pages written before Close are
	// there when the store is opened again.
	Close() error
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
	// ChecksumFailures counts pages read back with a bad checksum (and
	// dropped); WriteErrors counts writes the medium refused.
	ChecksumFailures uint64 `json:"checksum_failures"`
	WriteErrors      uint64 `json:"write_errors"`
	// StalePages counts intact pages read back in a format this build does
	// not read (written by another version), dropped as misses.
	StalePages uint64 `json:"stale_pages"`
	// RestoredPages counts pages found in the tier when it was opened.
	RestoredPages int64 `json:"restored_pages"`
	// DiskBytes is the space the tier's files take, garbage included.
	DiskBytes int64 `json:"disk_bytes"`
}
