package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/hashicorp/go-hclog"
	"github.com/zeebo/xxh3"
)

// ErrNamespace means an SSD tier's directory holds pages written for another
// page geometry (model, dtype, block size or weights), which must not be
// served for this one.
var ErrNamespace = errors.New("ssd tier holds pages of another geometry")

// SSDOptions configure an SSD tier.
type SSDOptions struct {
	// Dir is the directory of the Badger database; it is created if missing.
	Dir string
	// Capacity is how many bytes of page data (len K + len V) the tier
	// keeps; it must be positive. Badger's own files take more: headers,
	// the LSM tree and value-log garbage not yet collected (see DiskBytes).
	Capacity int64
	// Sync makes every write fsync (Badger's SyncWrites): a Write that has
	// returned survives a crash of the machine, not only of the process.
	Sync bool
	// Namespace identifies the page geometry (model, dtype, block size,
	// weights seed). Opening a directory written under another namespace
	// fails with ErrNamespace. The empty namespace is a namespace like any
	// other.
	Namespace string
	// GCInterval is the period of value-log garbage collection, which gives
	// back the disk space of evicted pages; default 30s, negative disables.
	GCInterval time.Duration
	// MinFree is the space, in bytes, a Write leaves free on Dir's file
	// system: one that would leave less fails with ErrDiskFull, which is
	// also an ErrNoSpace (the page is not cached there). Badger
	// writes its value log and memtables through memory maps of files it
	// creates sparse, and a store into such a map on a full disk kills the
	// process (SIGBUS) instead of failing; the margin covers what Badger
	// writes besides the pages (memtables, table flushes, compactions, the
	// value-log GC's rewrites of live pages) and other writers to the disk
	// between two Writes. 0 means DefaultSSDMinFree plus one value-log
	// file (a quarter of Capacity, from 16 MiB to 1 GiB); negative, no
	// check.
	MinFree int64
	// Log receives the tier's and Badger's messages (Badger's Info at Debug
	// level); nil discards them.
	Log hclog.Logger
}

// DefaultSSDMinFree is SSDOptions.MinFree when it is 0.
const DefaultSSDMinFree = 256 << 20

// Layout of the tier's Badger keys and values.
const (
	// ssdPagePrefix starts every page key: 'p', the block key (8 bytes) and
	// the layer (4 bytes, two's complement), big-endian so that a block's
	// pages are adjacent.
	ssdPagePrefix = 'p'
	ssdKeyLen     = 1 + 8 + 4
	// A page's value is a header then K then V. The header is the magic
	// "KV", the format version, a zero byte, len K and len V (4 bytes each),
	// then the 8-byte checksum (see ssdSumHead), all big-endian. The checksum
	// covers the key, the header before it and the payload, so that a value
	// found under another key (a bug, a bad restore) fails like flipped bits.
	ssdHeaderLen = 20
	ssdSumOff    = 12
	ssdMagic     = 0x4b56 // "KV"
	// ssdFormat 2: the key pages of the shapes model.KeyTileFor tiles hold
	// their keys in tiles of 16 tokens; format 1 held rows. The header and
	// checksum are those of format 1: a page of another format whose
	// checksum holds is stale (written by another build), dropped as a
	// miss; one whose checksum fails is corrupt.
	ssdFormat = 2
	// ssdValueThreshold is Badger's ValueThreshold: values from this size go
	// to the value log, so the LSM tree holds only keys and value pointers
	// and compactions never copy pages. Only values under 1 KiB stay inline.
	ssdValueThreshold = 1 << 10
	// ssdChunk is the unit of the payload's checksum: each chunk is copied,
	// then hashed from the copy, which is in L1 cache by then. Part of the
	// format: changing it needs a new ssdFormat.
	ssdChunk = 32 << 10
	// ssdDefaultGC is the default value-log GC period.
	ssdDefaultGC = 30 * time.Second
	// ssdGCDiscardRatio is the share of garbage that makes a value-log file
	// worth rewriting.
	ssdGCDiscardRatio = 0.5
)

// ssdNamespaceKey holds the namespace the directory was created for. It
// cannot be mistaken for a page key, which starts with 'p'.
var ssdNamespaceKey = []byte("m/namespace")

// ssdValueLogFileSize is the size of one value-log file for a tier of
// capacity bytes: a quarter of the capacity, so that GC rewrites a bounded
// share at a time, from 16 MiB (eight 2 MiB pages) up to Badger's default
// maximum of 1 GiB. Badger rejects a value larger than one file, so this is
// also the largest page the tier takes (less the header).
func ssdValueLogFileSize(capacity int64) int64 {
	return min(max(capacity/4, 16<<20), 1<<30-1)
}

// SSDBadgerOptions returns the Badger options an SSD tier opens dir with,
// for o. They are exported so that benchmarks compare the tier with raw
// Badger under the same settings.
//
// The settings suit large binary values written once: no compression (KV
// bytes do not compress, and without compression Badger needs no block
// cache, which its documentation says only slows reads then), one version
// per key, values in the value log (ssdValueThreshold), no conflict
// detection (the tier orders writes of a key itself), no expvar metrics,
// and small memtables since they hold only keys and value pointers.
func SSDBadgerOptions(dir string, o SSDOptions) badger.Options {
	log := o.Log
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithSyncWrites(o.Sync).
		WithNumVersionsToKeep(1).
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		WithValueThreshold(ssdValueThreshold).
		WithValueLogFileSize(ssdValueLogFileSize(o.Capacity)).
		WithDetectConflicts(false).
		WithMetricsEnabled(false).
		WithMemTableSize(8 << 20).
		WithNumMemtables(3).
		WithNumCompactors(2)
}

// ssdState is where an entry stands between the index and Badger.
type ssdState uint8

const (
	// ssdWriting: a Write's Badger transaction is in flight. The entry's
	// bytes are reserved against the capacity, but it is not readable:
	// Contains, Pin and Read see it as absent until the write commits.
	ssdWriting ssdState = iota
	// ssdLive: stored in Badger and readable.
	ssdLive
	// ssdDeleting: evicted or dropped, its Badger delete in flight. Absent
	// to readers, no longer charged; a Write of its key waits for done.
	ssdDeleting
	// ssdDead: dropped (bad checksum) while pinned, and deleted from
	// Badger. It stays in the index only so that its pins can be released;
	// a Write of its key stores the page again and revives it.
	ssdDead
	// ssdGone: out of the index.
	ssdGone
)

// ssdEntry is the index's record of one page. All fields are guarded by
// SSDTier.mu.
type ssdEntry struct {
	key  PageKey
	size int64 // len K + len V
	pins int
	// gen counts the writes that made the entry live, so a read that found
	// bad bytes drops the entry only if it was not rewritten since.
	gen   uint64
	state ssdState
	// done is closed when the Badger write or delete in flight for this
	// entry (ssdWriting, ssdDeleting) ends; nil otherwise.
	done chan struct{}
	// prev and next link the entry in the LRU list while it is live and
	// unpinned; both are nil otherwise.
	prev, next *ssdEntry
}

// SSDTier stores pages in a Badger database on local disk, within a
// capacity of page bytes. Pages outlive the process: opening a tier on a
// directory restores its index from Badger's keys.
//
// An in-memory index holds each page's size, pins and place in an exact LRU
// list; Badger holds the bytes, each value checksummed. Badger I/O runs
// outside the index lock, so reads and writes of different pages proceed in
// parallel; a page becomes readable only once its write has committed, and
// a page being written or deleted makes other writes of its key wait.
type SSDTier struct {
	db        *badger.DB
	dir       string
	capacity  int64
	maxPage   int64 // largest page one value-log file takes
	minFree   int64 // SSDOptions.MinFree, resolved; < 0: no check
	namespace string
	log       hclog.Logger

	// writeHook, if set (by tests), runs before a write's Badger
	// transaction and its error is taken as Badger's.
	writeHook func(PageKey) error

	// bufs holds value buffers (*[]byte) for writes, so a page's copy with
	// its header costs no allocation or zeroing.
	bufs sync.Pool

	// mu guards the index, the LRU list, closed and every field below down
	// to the atomics. Badger I/O is never done while holding it.
	mu    sync.Mutex
	index map[PageKey]*ssdEntry
	// lru is the sentinel of a circular list of live, unpinned entries:
	// lru.next is the most recent, lru.prev the coldest (the next evicted).
	lru    ssdEntry
	closed bool
	// used counts the bytes of live pages, pinned those of live pinned
	// pages, reserved those of writes in flight; live counts live pages.
	// The capacity holds used + reserved.
	used, pinned, reserved, peak int64
	live                         int64
	pagesWritten, bytesWritten   uint64
	evictions, evictedBytes      uint64
	restored                     int64

	// Counters updated without mu.
	hits, misses, bytesRead, checksumFailures, writeErrors, stalePages atomic.Uint64
	warnedFull, warnedStale                                            atomic.Bool // the first ErrDiskFull, stale page was logged

	// ops counts the methods using db; Close waits for them after setting
	// closed (under mu, where ops are added) before closing db.
	ops sync.WaitGroup

	gcStop    chan struct{} // closed by Close to stop the GC goroutine; nil if GC is off
	gcDone    chan struct{} // closed by the GC goroutine when it returns
	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*SSDTier)(nil)

// OpenSSDTier opens the SSD tier in o.Dir, creating the directory and the
// database if needed and restoring the index of the pages already there.
// It fails with an error wrapping ErrNamespace if the directory was created
// under another namespace, and with the underlying error if the directory
// cannot be created or written, or the database is locked by another
// process.
func OpenSSDTier(o SSDOptions) (*SSDTier, error) {
	if o.Dir == "" {
		return nil, errors.New("ssd tier: no directory")
	}
	if o.Capacity <= 0 {
		return nil, fmt.Errorf("ssd tier: capacity %d bytes: must be positive", o.Capacity)
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	if o.GCInterval == 0 {
		o.GCInterval = ssdDefaultGC
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("ssd tier: %w", err)
	}
	bo := SSDBadgerOptions(o.Dir, o)
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("ssd tier: open %s: %w", o.Dir, err)
	}
	t := &SSDTier{
		db:        db,
		dir:       o.Dir,
		capacity:  o.Capacity,
		maxPage:   bo.ValueLogFileSize - ssdHeaderLen,
		minFree:   o.MinFree,
		namespace: o.Namespace,
		log:       o.Log,
		index:     map[PageKey]*ssdEntry{},
	}
	if t.minFree == 0 {
		t.minFree = DefaultSSDMinFree + bo.ValueLogFileSize
	}
	t.lru.next, t.lru.prev = &t.lru, &t.lru
	if err := t.checkNamespace(); err != nil {
		return nil, errors.Join(err, closeDB(db))
	}
	if err := t.restore(); err != nil {
		return nil, errors.Join(err, closeDB(db))
	}
	if o.GCInterval > 0 {
		t.gcStop, t.gcDone = make(chan struct{}), make(chan struct{})
		go t.gcLoop(o.GCInterval)
	}
	return t, nil
}

func closeDB(db *badger.DB) error {
	if err := db.Close(); err != nil {
		return fmt.Errorf("ssd tier: close: %w", err)
	}
	return nil
}

// checkNamespace records the tier's namespace in a new database, or checks
// it against the one an existing database was created with.
func (t *SSDTier) checkNamespace() error {
	var stored []byte
	err := t.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(ssdNamespaceKey)
		if err != nil {
			return err
		}
		stored, err = item.ValueCopy(nil)
		return err
	})
	switch {
	case err == nil:
		if string(stored) != t.namespace {
			return fmt.Errorf("ssd tier: %s holds namespace %q, opened as %q: %w", t.dir, stored, t.namespace, ErrNamespace)
		}
		return nil
	case errors.Is(err, badger.ErrKeyNotFound):
		err = t.db.Update(func(txn *badger.Txn) error { return txn.Set(ssdNamespaceKey, []byte(t.namespace)) })
		if err != nil {
			return fmt.Errorf("ssd tier: %s: record namespace: %w", t.dir, err)
		}
		return nil
	default:
		return fmt.Errorf("ssd tier: %s: read namespace: %w", t.dir, err)
	}
}

// restore rebuilds the index from Badger's page keys, without reading a
// value: a page's size comes from its value's size and its recency from its
// version (the commit timestamp of its write; older is colder). Pages over
// the capacity, if it was lowered, are evicted coldest first.
func (t *SSDTier) restore() error {
	type found struct {
		e       *ssdEntry
		version uint64
	}
	var pages []found
	err := t.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{ssdPagePrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			key, ok := decodeSSDKey(item.Key())
			if !ok {
				t.log.Warn("ssd tier: ignoring a key that is not a page's", "dir", t.dir, "key", fmt.Sprintf("%x", item.Key()))
				continue
			}
			size := ssdStoredValueLen(item.ValueSize(), len(item.Key())) - ssdHeaderLen
			pages = append(pages, found{&ssdEntry{key: key, size: max(size, 0), state: ssdLive}, item.Version()})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ssd tier: %s: restore: %w", t.dir, err)
	}
	slices.SortFunc(pages, func(a, b found) int {
		if a.version != b.version {
			if a.version < b.version {
				return -1
			}
			return 1
		}
		return 0
	})
	for _, p := range pages {
		t.index[p.e.key] = p.e
		t.pushFront(p.e)
		t.used += p.e.size
		t.live++
	}
	t.restored = int64(len(pages))
	var victims []*ssdEntry
	for t.used > t.capacity {
		victims = append(victims, t.evictColdest())
	}
	t.peak = t.used
	if len(victims) > 0 {
		if err := t.deleteEntries(nil, victims); err != nil {
			return fmt.Errorf("ssd tier: %s: evicting restored pages over the capacity: %w", t.dir, err)
		}
		for _, v := range victims {
			t.settle(v)
		}
	}
	if len(pages) > 0 {
		t.log.Debug("ssd tier restored", "dir", t.dir, "pages", len(pages), "bytes", t.used, "evicted", len(victims))
	}
	return nil
}

// ssdStoredValueLen returns the exact length of a value stored under a key
// of keyLen bytes, from Badger's Item.ValueSize. That is exact for a value
// kept in the LSM tree (under ssdValueThreshold), but for one in the value
// log it is the length of the log entry less an estimate of its varint
// header (Badger 4's entry: meta, user meta, uvarint key length, uvarint
// value length, uvarint expiry, the key with an 8-byte version, the value,
// a CRC-32). Knowing the header's layout, the exact length is recovered
// without reading the value; the tests check restored sizes against the
// written ones, so a change of Badger's format is caught.
func ssdStoredValueLen(valueSize int64, keyLen int) int64 {
	if valueSize < ssdValueThreshold {
		return valueSize
	}
	// Badger: ValueSize = entryLen - (keyLen+8) - 6 - 4, and
	// entryLen = 2 + uvarint(keyLen+8) + uvarint(vlen) + uvarint(0) + keyLen + 8 + vlen + 4,
	// so vlen + uvarint(vlen) = ValueSize + 6 - 3 - uvarint(keyLen+8).
	sum := valueSize + 3 - int64(uvarintLen(uint64(keyLen+8)))
	for n := 1; n <= binary.MaxVarintLen64; n++ {
		if v := sum - int64(n); v >= 0 && uvarintLen(uint64(v)) == n {
			return v
		}
	}
	return valueSize
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// Name returns "ssd".
func (t *SSDTier) Name() string { return "ssd" }

// Dir returns the tier's directory.
func (t *SSDTier) Dir() string { return t.dir }

// Write implements Store. It returns once Badger has committed the page
// (and, with SSDOptions.Sync, synced it to disk). A Write of a key being
// written or deleted by another call waits for that call.
func (t *SSDTier) Write(p *Page) error {
	if p == nil {
		return errors.New("ssd tier: write of a nil page")
	}
	key, size := p.Key, p.Size()
	if key.Layer < math.MinInt32 || key.Layer > math.MaxInt32 {
		return fmt.Errorf("ssd tier: page %s: layer out of range", key)
	}
	if size > t.capacity {
		return fmt.Errorf("ssd tier: page %s of %d bytes, capacity %d: %w", key, size, t.capacity, ErrTooLarge)
	}
	if size > t.maxPage {
		return fmt.Errorf("ssd tier: page %s of %d bytes, more than a value-log file takes (%d): %w", key, size, t.maxPage, ErrTooLarge)
	}
	t.mu.Lock()
	var e *ssdEntry
	for {
		if t.closed {
			t.mu.Unlock()
			return fmt.Errorf("ssd tier: write %s: %w", key, ErrClosed)
		}
		e = t.index[key]
		if e == nil || e.state == ssdDead {
			break
		}
		if e.state == ssdLive {
			t.touch(e)
			t.mu.Unlock()
			return nil
		}
		// Writing or deleting: wait, then look again.
		done := e.done
		t.mu.Unlock()
		<-done
		t.mu.Lock()
	}
	if t.pinned+t.reserved+size > t.capacity {
		err := fmt.Errorf("ssd tier: page %s of %d bytes: %d of %d bytes used, %d pinned, %d being written: %w",
			key, size, t.used, t.capacity, t.pinned, t.reserved, ErrNoSpace)
		t.mu.Unlock()
		return err
	}
	// Before anything is evicted for it or Badger maps its bytes in (see
	// SSDOptions.MinFree). A statfs takes about a µs, against the write's
	// hundreds.
	if free, ok := diskFree(t.dir); ok && t.minFree >= 0 && free < uint64(t.minFree+size) {
		t.mu.Unlock()
		t.writeErrors.Add(1)
		if !t.warnedFull.Swap(true) {
			t.log.Warn("ssd tier: the disk is nearly full: writes are refused while it is; further ones are counted, not logged",
				"dir", t.dir, "free_bytes", free, "min_free", t.minFree)
		}
		// No space in the store, as far as its users go: the page is not
		// cached there.
		return fmt.Errorf("ssd tier: write %s: %d bytes free on the disk of %s, keeping %d: %w (%w)", key, free, t.dir, t.minFree, ErrDiskFull, ErrNoSpace)
	}
	var victims []*ssdEntry
	for t.used+t.reserved+size > t.capacity {
		victims = append(victims, t.evictColdest())
	}
	if e == nil {
		e = &ssdEntry{key: key}
		t.index[key] = e
	}
	e.size, e.state, e.done = size, ssdWriting, make(chan struct{})
	t.reserved += size
	t.ops.Add(1)
	t.mu.Unlock()
	defer t.ops.Done()

	err := t.put(p, victims)
	if err != nil && len(victims) > 0 {
		// The victims left the index; try again to take them off the disk
		// too, or they come back on the next open (harmlessly: they are
		// valid pages).
		if derr := t.deleteEntries(nil, victims); derr != nil {
			t.log.Warn("ssd tier: deleting evicted pages", "dir", t.dir, "pages", len(victims), "error", derr)
		}
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	for _, v := range victims {
		t.settle(v)
	}
	t.reserved -= size
	if err != nil {
		t.writeErrors.Add(1)
		t.settle(e)
		return fmt.Errorf("ssd tier: write %s: %w", key, err)
	}
	close(e.done)
	e.done = nil
	e.state = ssdLive
	e.gen++
	t.used += size
	t.live++
	if e.pins > 0 {
		t.pinned += size
	} else {
		t.pushFront(e)
	}
	t.peak = max(t.peak, t.used)
	t.pagesWritten++
	t.bytesWritten += uint64(size)
	return nil
}

// evictColdest takes the coldest unpinned page out of the index's charge and
// marks it deleting; the caller deletes it from Badger, then settles it.
// There must be one. Called with mu held.
func (t *SSDTier) evictColdest() *ssdEntry {
	v := t.lru.prev
	t.unlink(v)
	t.used -= v.size
	t.live--
	v.state, v.done = ssdDeleting, make(chan struct{})
	t.evictions++
	t.evictedBytes += uint64(v.size)
	return v
}

// settle ends the Badger operation in flight for e, which failed or was a
// delete: e leaves the index, or stays as dead while pinned. Called with mu
// held.
func (t *SSDTier) settle(e *ssdEntry) {
	if e.done != nil {
		close(e.done)
		e.done = nil
	}
	if e.pins > 0 {
		e.state = ssdDead
		return
	}
	e.state = ssdGone
	if t.index[e.key] == e {
		delete(t.index, e.key)
	}
}

// put writes p to Badger, deleting the victims' keys in the same
// transaction (one commit, one sync).
func (t *SSDTier) put(p *Page, victims []*ssdEntry) error {
	if t.writeHook != nil {
		if err := t.writeHook(p.Key); err != nil {
			return err
		}
	}
	n := ssdHeaderLen + int(p.Size())
	bp, _ := t.bufs.Get().(*[]byte)
	if bp == nil || cap(*bp) < n {
		b := make([]byte, n)
		bp = &b
	}
	defer t.bufs.Put(bp)
	var kb [ssdKeyLen]byte
	encodeSSDKey(kb[:], p.Key)
	val := encodeSSDValue((*bp)[:n], kb[:], p)
	return t.deleteEntries(&badger.Entry{Key: kb[:], Value: val}, victims)
}

// deleteEntries deletes the victims' keys from Badger and sets set, if not
// nil, committing as few transactions as Badger's size limit allows (one in
// practice).
func (t *SSDTier) deleteEntries(set *badger.Entry, victims []*ssdEntry) error {
	keys := make([]byte, ssdKeyLen*len(victims))
	txn := t.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	do := func(f func(*badger.Txn) error) error {
		err := f(txn)
		if !errors.Is(err, badger.ErrTxnTooBig) {
			return err
		}
		if err := txn.Commit(); err != nil {
			return err
		}
		txn = t.db.NewTransaction(true)
		return f(txn)
	}
	for i, v := range victims {
		k := keys[i*ssdKeyLen : (i+1)*ssdKeyLen]
		encodeSSDKey(k, v.key)
		if err := do(func(txn *badger.Txn) error { return txn.Delete(k) }); err != nil {
			return err
		}
	}
	if set != nil {
		if err := do(func(txn *badger.Txn) error { return txn.SetEntry(set) }); err != nil {
			return err
		}
	}
	return txn.Commit()
}

// Contains implements Store.
func (t *SSDTier) Contains(key PageKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.index[key]
	return !t.closed && e != nil && e.state == ssdLive
}

// Pin implements Store.
func (t *SSDTier) Pin(key PageKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.index[key]
	if t.closed || e == nil || e.state != ssdLive {
		return false
	}
	if e.pins == 0 {
		t.unlink(e)
		t.pinned += e.size
	}
	e.pins++
	return true
}

// Unpin implements Store. A page whose last pin goes becomes the most
// recently used; a page dropped while pinned leaves the index.
func (t *SSDTier) Unpin(key PageKey) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("ssd tier: unpin %s: %w", key, ErrClosed)
	}
	e := t.index[key]
	if e == nil || e.pins == 0 {
		return fmt.Errorf("ssd tier: unpin %s: %w", key, ErrNotPinned)
	}
	e.pins--
	if e.pins > 0 {
		return nil
	}
	switch e.state {
	case ssdLive:
		t.pinned -= e.size
		t.pushFront(e)
	case ssdDead:
		e.state = ssdGone
		delete(t.index, key)
	}
	// Writing or deleting: the write or delete settles the entry.
	return nil
}

// Read implements Store. The checksum is verified on every read; the
// page's bytes are copied out of Badger's buffer as they are verified, into
// buf when it is large enough. On a checksum failure, or a page of another
// format (dropped, ErrNotFound), buf may hold some of the bytes, but no
// page is returned. A failed read counts as a miss.
func (t *SSDTier) Read(key PageKey, buf []byte) (*Page, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, fmt.Errorf("ssd tier: read %s: %w", key, ErrClosed)
	}
	e := t.index[key]
	if e == nil || e.state != ssdLive {
		t.mu.Unlock()
		t.misses.Add(1)
		return nil, fmt.Errorf("ssd tier: read %s: %w", key, ErrNotFound)
	}
	gen := e.gen
	t.touch(e)
	t.ops.Add(1)
	t.mu.Unlock()
	defer t.ops.Done()

	var kb [ssdKeyLen]byte
	encodeSSDKey(kb[:], key)
	var page *Page
	var bad error
	err := t.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(kb[:])
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			var k, vv []byte
			k, vv, bad = decodeSSDValue(kb[:], v, buf)
			if bad == nil {
				page = &Page{Key: key, K: k, V: vv}
			}
			return nil
		})
	})
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		// Evicted since the index was read, or lost from the disk.
		t.drop(e, gen, false)
		t.misses.Add(1)
		return nil, fmt.Errorf("ssd tier: read %s: %w", key, ErrNotFound)
	case err != nil:
		t.misses.Add(1)
		return nil, fmt.Errorf("ssd tier: read %s: %w", key, err)
	case errors.As(bad, new(errSSDStale)):
		t.stalePages.Add(1)
		t.misses.Add(1)
		if !t.warnedStale.Swap(true) {
			t.log.Info("ssd tier: dropping pages of another format as they are read; further ones are counted (stale_pages), not logged",
				"dir", t.dir, "page", key.String(), "error", bad)
		}
		t.drop(e, gen, true)
		return nil, fmt.Errorf("ssd tier: read %s: %v: %w", key, bad, ErrNotFound)
	case bad != nil:
		t.checksumFailures.Add(1)
		t.misses.Add(1)
		t.log.Warn("ssd tier: dropping a page that failed its checksum", "dir", t.dir, "page", key.String(), "error", bad)
		t.drop(e, gen, true)
		return nil, fmt.Errorf("ssd tier: read %s: %v: %w", key, bad, ErrChecksum)
	}
	t.hits.Add(1)
	t.bytesRead.Add(uint64(page.Size()))
	return page, nil
}

// drop takes e out of the index after a read of generation gen found its
// value bad (del: deleting it from Badger too) or missing. It does nothing
// if e was evicted, dropped or rewritten since that read.
func (t *SSDTier) drop(e *ssdEntry, gen uint64, del bool) {
	t.mu.Lock()
	if t.index[e.key] != e || e.state != ssdLive || e.gen != gen {
		t.mu.Unlock()
		return
	}
	if e.pins > 0 {
		t.pinned -= e.size
	} else {
		t.unlink(e)
	}
	t.used -= e.size
	t.live--
	if !del {
		t.settle(e)
		t.mu.Unlock()
		return
	}
	e.state, e.done = ssdDeleting, make(chan struct{})
	t.mu.Unlock()
	// The caller holds an op, so db is open.
	if err := t.deleteEntries(nil, []*ssdEntry{e}); err != nil {
		t.log.Warn("ssd tier: deleting a page that failed its checksum", "dir", t.dir, "page", e.key.String(), "error", err)
	}
	t.mu.Lock()
	t.settle(e)
	t.mu.Unlock()
}

// Stats implements Store. DiskBytes is measured on each call by listing the
// directory (a few files).
func (t *SSDTier) Stats() TierStats {
	t.mu.Lock()
	s := TierStats{
		Name:          t.Name(),
		CapacityBytes: t.capacity,
		UsedBytes:     t.used,
		PeakBytes:     t.peak,
		PinnedBytes:   t.pinned,
		Pages:         t.live,
		BytesWritten:  t.bytesWritten,
		PagesWritten:  t.pagesWritten,
		Evictions:     t.evictions,
		EvictedBytes:  t.evictedBytes,
		RestoredPages: t.restored,
	}
	t.mu.Unlock()
	s.Hits = t.hits.Load()
	s.Misses = t.misses.Load()
	s.BytesRead = t.bytesRead.Load()
	s.ChecksumFailures = t.checksumFailures.Load()
	s.StalePages = t.stalePages.Load()
	s.WriteErrors = t.writeErrors.Load()
	s.DiskBytes = dirBytes(t.dir)
	return s
}

// dirBytes returns the disk space taken by the files in dir. Badger's
// value-log and memtable files are mapped at their maximum size and sparse
// until written, so the blocks allocated are counted where the platform
// reports them (Stat_t.Blocks, in 512-byte units), else the file sizes.
// Badger's own db.Size needs its expvar metrics, which the tier turns off.
func dirBytes(dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, de := range ents {
		if !de.Type().IsRegular() {
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue
		}
		size := info.Size()
		if sys := reflect.ValueOf(info.Sys()); sys.Kind() == reflect.Pointer && !sys.IsNil() && sys.Elem().Kind() == reflect.Struct {
			if b := sys.Elem().FieldByName("Blocks"); b.IsValid() && b.CanInt() {
				size = min(size, b.Int()*512)
			}
		}
		n += size
	}
	return n
}

// Close implements Store: it stops value-log GC, waits for the calls in
// flight and closes Badger, which flushes its memtables. Later calls of the
// tier's methods fail with ErrClosed; Close itself may be called again.
func (t *SSDTier) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		t.closed = true
		t.mu.Unlock()
		t.ops.Wait()
		if t.gcStop != nil {
			close(t.gcStop)
			<-t.gcDone
		}
		t.closeErr = closeDB(t.db)
	})
	return t.closeErr
}

// gcLoop runs Badger's value-log GC every period until Close: each round
// rewrites value-log files while some are at least half garbage (Badger
// returns ErrNoRewrite when none is).
func (t *SSDTier) gcLoop(period time.Duration) {
	defer close(t.gcDone)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-t.gcStop:
			return
		case <-tick.C:
		}
		for rewrites := 0; ; rewrites++ {
			select {
			case <-t.gcStop:
				return
			default:
			}
			err := t.db.RunValueLogGC(ssdGCDiscardRatio)
			if err == nil {
				continue
			}
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				t.log.Warn("ssd tier: value-log GC", "dir", t.dir, "error", err)
			} else if rewrites > 0 {
				t.log.Debug("ssd tier: value-log GC", "dir", t.dir, "files_rewritten", rewrites)
			}
			break
		}
	}
}

// touch makes a live entry the most recently used. A pinned entry is out of
// the list and goes to its front when unpinned. Called with mu held.
func (t *SSDTier) touch(e *ssdEntry) {
	if e.next != nil && t.lru.next != e {
		t.unlink(e)
		t.pushFront(e)
	}
}

// pushFront and unlink edit the LRU list; called with mu held.
func (t *SSDTier) pushFront(e *ssdEntry) {
	e.prev, e.next = &t.lru, t.lru.next
	t.lru.next.prev = e
	t.lru.next = e
}

func (t *SSDTier) unlink(e *ssdEntry) {
	if e.next == nil {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

// encodeSSDKey writes k's Badger key into b (ssdKeyLen bytes).
func encodeSSDKey(b []byte, k PageKey) {
	b[0] = ssdPagePrefix
	binary.BigEndian.PutUint64(b[1:9], uint64(k.Block))
	binary.BigEndian.PutUint32(b[9:13], uint32(int32(k.Layer)))
}

// decodeSSDKey parses a Badger page key.
func decodeSSDKey(b []byte) (PageKey, bool) {
	if len(b) != ssdKeyLen || b[0] != ssdPagePrefix {
		return PageKey{}, false
	}
	return PageKey{Block: BlockKey(binary.BigEndian.Uint64(b[1:9])), Layer: int(int32(binary.BigEndian.Uint32(b[9:13])))}, true
}

// The checksum of a page stored under Badger key kb is chained XXH3-64:
// the hash of kb and the header up to the checksum, then, for each
// ssdChunk of the payload (K then V), the hash of the chunk seeded with the
// hash so far. XXH3 is used for its speed (48 GB/s with AVX2 on the
// development machine, against 24 GB/s for CRC-32C and 13 GB/s for XXH64):
// a read copies the page and hashes every byte of it, and the hash is most
// of what a verified read costs over a plain copy.
//
// ssdSumHead returns the first link, for kb and the header h.
func ssdSumHead(kb, h []byte) uint64 {
	var b [ssdKeyLen + ssdSumOff]byte
	copy(b[:], kb)
	copy(b[ssdKeyLen:], h[:ssdSumOff])
	return xxh3.Hash(b[:])
}

// encodeSSDValue lays out p's value under key kb in dst, which is exactly
// ssdHeaderLen + p.Size() bytes, and returns it.
func encodeSSDValue(dst, kb []byte, p *Page) []byte {
	binary.BigEndian.PutUint16(dst[0:2], ssdMagic)
	dst[2], dst[3] = ssdFormat, 0
	binary.BigEndian.PutUint32(dst[4:8], uint32(len(p.K)))
	binary.BigEndian.PutUint32(dst[8:12], uint32(len(p.V)))
	sum := copySum(dst[ssdHeaderLen:], p.K, p.V, ssdSumHead(kb, dst))
	binary.BigEndian.PutUint64(dst[ssdSumOff:], sum)
	return dst
}

// errSSDValue describes a stored value that is not a page's.
type errSSDValue string

func (e errSSDValue) Error() string { return string(e) }

// decodeSSDValue verifies the value v stored under key kb and copies its K
// and V out, into buf if it is large enough. The error says what is wrong
// with v; the slices are then not to be used.
func decodeSSDValue(kb, v, buf []byte) (k, vv []byte, err error) {
	if len(v) < ssdHeaderLen {
		return nil, nil, errSSDValue(fmt.Sprintf("value of %d bytes is shorter than a header", len(v)))
	}
	if binary.BigEndian.Uint16(v[0:2]) != ssdMagic {
		return nil, nil, errSSDValue(fmt.Sprintf("bad magic %x", v[0:4]))
	}
	nk, nv := uint64(binary.BigEndian.Uint32(v[4:8])), uint64(binary.BigEndian.Uint32(v[8:12]))
	if nk+nv != uint64(len(v)-ssdHeaderLen) {
		return nil, nil, errSSDValue(fmt.Sprintf("lengths %d+%d in a value of %d bytes", nk, nv, len(v)))
	}
	n := int(nk + nv)
	if cap(buf) >= n {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	sum := copySum(buf, v[ssdHeaderLen:], nil, ssdSumHead(kb, v))
	if want := binary.BigEndian.Uint64(v[ssdSumOff:]); sum != want {
		return nil, nil, errSSDValue(fmt.Sprintf("checksum %016x, stored %016x", sum, want))
	}
	if v[2] != ssdFormat {
		return nil, nil, errSSDStale(v[2])
	}
	return buf[:nk:nk], buf[nk:n:n], nil
}

// errSSDStale is the format of an intact page this build does not read.
type errSSDStale byte

func (e errSSDStale) Error() string {
	return fmt.Sprintf("stored in format %d, this build reads format %d (pages of format 1 lay keys out in rows)", byte(e), ssdFormat)
}

// copySum copies a then b to dst, which holds exactly both, and returns the
// checksum chained from sum over dst's chunks (see ssdSumHead). A chunk that
// lies within a or b is copied and hashed in one pass (copyHashSeed); one
// that straddles them is copied, then hashed from cache.
func copySum(dst, a, b []byte, sum uint64) uint64 {
	for off := 0; off < len(dst); off += ssdChunk {
		c := dst[off:min(off+ssdChunk, len(dst))]
		switch {
		case len(a) >= len(c):
			sum = copyHashSeed(c, a[:len(c)], sum)
			a = a[len(c):]
		case len(a) == 0:
			sum = copyHashSeed(c, b[:len(c)], sum)
			b = b[len(c):]
		default:
			n := copy(c, a)
			a = a[n:]
			m := copy(c[n:], b)
			b = b[m:]
			sum = xxh3.HashSeed(c, sum)
		}
	}
	return sum
}
