package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// WritePolicy says when a page reaches a lower tier.
type WritePolicy uint8

// Write policies.
const (
	// WriteBack writes a page down when the tier above evicts it.
	WriteBack WritePolicy = iota
	// WriteThrough writes every committed page down at once, so that
	// eviction from the tier above costs nothing and a crash loses no page.
	WriteThrough
)

// String returns the policy's name in pipeline files.
func (w WritePolicy) String() string {
	if w == WriteThrough {
		return "write_through"
	}
	return "write_back"
}

// ParseWritePolicy parses "write_back" or "write_through".
func ParseWritePolicy(s string) (WritePolicy, error) {
	switch s {
	case "write_back":
		return WriteBack, nil
	case "write_through":
		return WriteThrough, nil
	}
	return 0, fmt.Errorf("write policy %q: want \"write_back\" or \"write_through\"", s)
}

// Manager is the KV cache manager. It keeps a request's view of the cache
// over a memory tier (host) and, optionally, a lower store (SSD):
//
//   - lookups find the longest prefix of blocks cached in every layer, each
//     page in whichever tier holds it, and pin it there (Lease.AcquirePrefix);
//   - promotion copies a stored page up into memory on use (Promote);
//   - demotion writes a page the memory tier evicts down to the store under
//     WriteBack (Demote); under WriteThrough every committed page is already
//     there;
//   - pins keep the pages a request uses from eviction in every tier.
//
// The tiers index their own pages; the manager's lookup asks them fastest
// first. A Manager is safe for concurrent use.
type Manager struct {
	mem    Tier
	store  Store
	write  WritePolicy
	layers int
	log    hclog.Logger
	device DeviceCache // L1 above mem; nil without one

	// promoted holds pages Promote put into the memory tier that no lease
	// has pinned since: if the tier evicts one first, its load was wasted.
	// Guarded by promMu.
	promMu   sync.Mutex
	promoted map[PageKey]struct{}
	// demoting maps the pages being written down after the memory tier
	// evicted them to a channel closed when the write ends: in between,
	// neither tier's index has the page, and a lookup waits rather than
	// miss it. Guarded by promMu.
	demoting map[PageKey]chan struct{}

	wasted, demoted, demoteDropped, demoteErrors, promotedPages, privateLoads atomic.Uint64
	memPages, storePages, missedBlocks                                        atomic.Uint64
}

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	// Tier is the memory tier where pages are used in place.
	Tier Tier
	// Store is the optional lower tier, below Tier.
	Store Store
	// Write is how pages reach Store.
	Write WritePolicy
	// Layers is the number of layers whose pages make up a cached block: a
	// block counts as cached only when every layer's page is present.
	Layers int
	// Log receives demotion failures; nil discards them.
	Log hclog.Logger
	// Device is the optional tier in accelerator memory above Tier (L1).
	Device DeviceCache
}

// NewManager returns a manager over o.Tier and o.Store. The memory tier's
// evictions must reach Demote (HostOptions.OnEvict) for WriteBack to write
// pages down.
func NewManager(o ManagerOptions) (*Manager, error) {
	if o.Tier == nil {
		return nil, errors.New("kv manager: no tier")
	}
	if o.Layers <= 0 {
		return nil, fmt.Errorf("kv manager: %d layers: must be positive", o.Layers)
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	return &Manager{mem: o.Tier, store: o.Store, write: o.Write, layers: o.Layers, log: o.Log, device: o.Device,
		promoted: map[PageKey]struct{}{}, demoting: map[PageKey]chan struct{}{}}, nil
}

// Device returns the tier in accelerator memory, or nil.
func (m *Manager) Device() DeviceCache { return m.device }

// Layers returns the number of layers per block.
func (m *Manager) Layers() int { return m.layers }

// Store returns the lower tier, or nil.
func (m *Manager) Store() Store { return m.store }

// Stats returns the counters of every tier: the memory tier, the store,
// then the device tier.
func (m *Manager) Stats() []TierStats {
	s := []TierStats{m.mem.Stats()}
	if m.store != nil {
		s = append(s, m.store.Stats())
	}
	if m.device != nil {
		s = append(s, m.device.Stats())
	}
	return s
}

// ManagerStats are the manager's own counters.
type ManagerStats struct {
	// MemoryPages and StorePages count the pages prefix lookups found in
	// the memory tier and in the store; MissedBlocks counts lookups that
	// stopped at a block missing a layer (not those that ran out of keys).
	MemoryPages, StorePages, MissedBlocks uint64
	// Promoted counts pages copied up from the store into memory;
	// PrivateLoads counts loaded pages the memory tier had no room for,
	// used by their request alone.
	Promoted, PrivateLoads uint64
	// Wasted counts promoted pages evicted before any request used them.
	Wasted uint64
	// Demoted counts pages written down on eviction; DemoteDropped those
	// the store had no room for, DemoteErrors those it failed to write.
	Demoted, DemoteDropped, DemoteErrors uint64
}

// ManagerStats returns a snapshot of the manager's counters.
func (m *Manager) ManagerStats() ManagerStats {
	return ManagerStats{MemoryPages: m.memPages.Load(), StorePages: m.storePages.Load(), MissedBlocks: m.missedBlocks.Load(),
		Promoted: m.promotedPages.Load(), PrivateLoads: m.privateLoads.Load(), Wasted: m.wasted.Load(),
		Demoted: m.demoted.Load(), DemoteDropped: m.demoteDropped.Load(), DemoteErrors: m.demoteErrors.Load()}
}

// Demote handles a page the memory tier evicts: under WriteBack it is
// written to the store unless the store has it. It must be called before the
// page's bytes are reused (HostOptions.OnEvict is).
func (m *Manager) Demote(p *Page) {
	m.promMu.Lock()
	if _, ok := m.promoted[p.Key]; ok {
		delete(m.promoted, p.Key)
		m.wasted.Add(1)
	}
	m.promMu.Unlock()
	if m.store == nil || m.write != WriteBack || m.store.Contains(p.Key) {
		return
	}
	done := make(chan struct{})
	m.promMu.Lock()
	m.demoting[p.Key] = done
	m.promMu.Unlock()
	defer func() {
		m.promMu.Lock()
		delete(m.demoting, p.Key)
		m.promMu.Unlock()
		close(done)
	}()
	switch err := m.store.Write(p); {
	case err == nil:
		m.demoted.Add(1)
	case errors.Is(err, ErrNoSpace) || errors.Is(err, ErrTooLarge):
		m.demoteDropped.Add(1)
	default:
		// Eviction cannot fail: the page is dropped, as it would be with no
		// store, and the failure counted and logged.
		if m.demoteErrors.Add(1) == 1 {
			m.log.Error("demoting a page failed; further failures are counted, not logged", "page", p.Key, "tier", m.store.Name(), "error", err)
		}
	}
}

// Flush writes every page of the memory tier that the store lacks down to
// it, under WriteBack, so that a store that outlives the process (SSD) has
// what a write-through one would: call it before the store closes. It
// returns the number of pages written.
func (m *Manager) Flush() (int, error) {
	if m.store == nil || m.write != WriteBack {
		return 0, nil
	}
	n := 0
	var err error
	m.mem.Range(func(p *Page) bool {
		if m.store.Contains(p.Key) {
			return true
		}
		if werr := m.store.Write(p); werr != nil {
			switch {
			case errors.Is(werr, ErrDiskFull):
				// Every further write would be refused too.
				m.log.Warn("flush stopped: the disk under the store is nearly full; the rest of the memory tier's pages are not written down",
					"tier", m.store.Name(), "written", n, "error", werr)
				return false
			case errors.Is(werr, ErrNoSpace) || errors.Is(werr, ErrTooLarge):
				return true // the rest of the store is pinned: nothing lost
			}
			err = fmt.Errorf("flush %s to %s tier: %w", p.Key, m.store.Name(), werr)
			return false
		}
		n++
		return true
	})
	return n, err
}

// Promote loads key's page from the store and copies it into the memory
// tier, unpinned and most recent, where the lease of the request that needs
// it finds it with PinResident. It returns the loaded copy, which stays
// valid and is the page to use when the memory tier had no room for it (or
// evicted it before use). A page whose checksum fails comes back as
// ErrChecksum and must be recomputed.
func (m *Manager) Promote(ctx context.Context, key PageKey) (*Page, error) {
	if m.store == nil {
		return nil, fmt.Errorf("promote %s: %w", key, ErrNotFound)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := m.store.Read(key, nil)
	if err != nil {
		return nil, fmt.Errorf("promote %s from %s: %w", key, m.store.Name(), err)
	}
	m.promMu.Lock()
	m.promoted[key] = struct{}{}
	m.promMu.Unlock()
	stored, err := m.mem.Put(p)
	if err != nil {
		m.promMu.Lock()
		delete(m.promoted, key)
		m.promMu.Unlock()
		if errors.Is(err, ErrNoSpace) || errors.Is(err, ErrTooLarge) {
			m.privateLoads.Add(1)
			return p, nil
		}
		return nil, fmt.Errorf("promote %s: %w", key, err)
	}
	// Unpinned, the page is the memory tier's most recent: the lease that
	// asked for it pins it when its step runs.
	if err := m.mem.Unpin(stored.Key); err != nil {
		return nil, err
	}
	m.promotedPages.Add(1)
	return p, nil
}

// NewLease returns an empty lease for one request.
func (m *Manager) NewLease() *Lease { return &Lease{m: m} }

// Slot is one page of a cached prefix. Page is set when the page is in the
// memory tier, pinned there; it is nil when the page is in the store, pinned
// there, and must be loaded before use.
type Slot struct {
	Key  PageKey
	Page *Page
}

// Lease holds the pins of one request: the cached prefix it reuses and the
// pages it commits, in whichever tier each is. Release returns them all. A
// Lease is safe for concurrent use.
type Lease struct {
	m *Manager

	mu    sync.Mutex
	pins  []pin                // pins held, in the order taken; guarded by mu
	onGPU map[PageKey]struct{} // pages pinned on the device; guarded by mu
	// deviceFull is set once the device tier had no room for the lease's
	// pages; guarded by mu.
	deviceFull bool
	done       bool // set by Release; guarded by mu
}

// pin is one pin a lease holds, in the memory tier, the store or the
// device tier.
type pin struct {
	key    PageKey
	store  bool
	device bool
}

// PinDevice makes pages resident in the device tier and pins each there
// until the lease is released; a page the lease already pinned there is
// skipped. Pages must hold the final bytes of their key. Without a device
// tier it does nothing. The copies run without the lease's lock held.
// Once the device tier had no room for the lease's pages, later calls do
// nothing and return ErrNoSpace at once: the request's steps run on the
// CPU instead of retrying the copies every step.
func (l *Lease) PinDevice(pages []*Page) error {
	if l.m.device == nil || len(pages) == 0 {
		return nil
	}
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return ErrReleased
	}
	if l.deviceFull {
		l.mu.Unlock()
		return fmt.Errorf("%s tier: %w", l.m.device.Name(), ErrNoSpace)
	}
	var load []*Page
	for _, p := range pages {
		if _, ok := l.onGPU[p.Key]; !ok {
			load = append(load, p)
		}
	}
	l.mu.Unlock()
	if len(load) == 0 {
		return nil
	}
	err := l.m.device.Load(load)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if errors.Is(err, ErrNoSpace) {
			l.deviceFull = true
		}
		return fmt.Errorf("%s tier: %w", l.m.device.Name(), err)
	}
	if l.onGPU == nil {
		l.onGPU = map[PageKey]struct{}{}
	}
	var errs []error
	for _, p := range load {
		_, dup := l.onGPU[p.Key]
		if l.done || dup { // released, or pinned by a concurrent call, meanwhile
			errs = append(errs, l.m.device.Unpin(p.Key))
			continue
		}
		l.onGPU[p.Key] = struct{}{}
		l.pins = append(l.pins, pin{key: p.Key, device: true})
	}
	if l.done {
		errs = append(errs, ErrReleased)
	}
	return errors.Join(errs...)
}

// DeviceFull reports whether the device tier had no room for the lease's
// pages: its request's steps should stay on the CPU.
func (l *Lease) DeviceFull() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deviceFull
}

// ErrReleased is returned by a lease used after Release.
var ErrReleased = errors.New("lease released")

// AcquirePrefix pins the pages of the longest run of leading blocks of keys
// whose every layer is cached, in memory or in the store, and returns them
// as slots[block][layer]. The lookup stops at the first block missing a
// layer; none of that block's pages stays pinned.
func (l *Lease) AcquirePrefix(keys []BlockKey) ([][]Slot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil, ErrReleased
	}
	m := l.m
	var prefix [][]Slot
	for _, k := range keys {
		// Look before pinning, so that a block missing a layer costs no
		// hits or misses in the tiers.
		for layer := range m.layers {
			key := PageKey{Block: k, Layer: layer}
			if !m.present(key) {
				m.missedBlocks.Add(1)
				return prefix, nil
			}
		}
		row := make([]Slot, m.layers)
		taken := 0
		for layer := range row {
			key := PageKey{Block: k, Layer: layer}
			row[layer].Key = key
			if p, ok := m.mem.Pin(key); ok {
				row[layer].Page = p
				m.claim(key)
			} else if m.store == nil || !m.pinStored(key) {
				break // evicted since it was looked at
			}
			taken++
		}
		if taken < m.layers {
			for _, s := range row[:taken] {
				l.unpin(pin{key: s.Key, store: s.Page == nil})
			}
			m.missedBlocks.Add(1)
			break
		}
		for _, s := range row {
			l.pins = append(l.pins, pin{key: s.Key, store: s.Page == nil})
			if s.Page != nil {
				m.memPages.Add(1)
			} else {
				m.storePages.Add(1)
			}
		}
		prefix = append(prefix, row)
	}
	return prefix, nil
}

// stored reports whether the store holds key, waiting for a demotion of
// key in flight to end first.
func (m *Manager) stored(key PageKey) bool {
	if m.store == nil {
		return false
	}
	if m.store.Contains(key) {
		return true
	}
	m.promMu.Lock()
	done := m.demoting[key]
	m.promMu.Unlock()
	if done == nil {
		return false
	}
	<-done
	return m.store.Contains(key)
}

// evictionSettler is a memory tier that can wait out the evictions in
// progress: between a page leaving the tier's index and its demotion being
// registered, neither tier holds it.
type evictionSettler interface{ settleEvictions() }

// present reports whether key is in the memory tier or the store. A page
// found in neither may be between the two (evicted, its demotion not yet
// registered): after waiting out the memory tier's evictions it looks once
// more.
func (m *Manager) present(key PageKey) bool {
	if m.mem.Contains(key) || m.stored(key) {
		return true
	}
	s, ok := m.mem.(evictionSettler)
	if !ok || m.store == nil {
		return false
	}
	s.settleEvictions()
	return m.mem.Contains(key) || m.stored(key)
}

// pinStored pins key in the store, first waiting for a demotion of it in
// flight (the memory tier may have evicted it since it was looked at).
func (m *Manager) pinStored(key PageKey) bool {
	if m.store.Pin(key) {
		return true
	}
	if s, ok := m.mem.(evictionSettler); ok {
		s.settleEvictions()
	}
	return m.stored(key) && m.store.Pin(key)
}

// claim records that a lease uses a promoted page. It was not wasted.
func (m *Manager) claim(key PageKey) {
	m.promMu.Lock()
	delete(m.promoted, key)
	m.promMu.Unlock()
}

// ResidentHint reports whether key's page is in the memory tier now. It may
// be evicted at any moment after; PinResident is the way to use it.
func (m *Manager) ResidentHint(key PageKey) bool { return m.mem.Contains(key) }

// PinResident pins key's page in the memory tier for the lease, if it is
// there: a stored page of the prefix once Promote has brought it up.
func (l *Lease) PinResident(key PageKey) (*Page, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil, false, ErrReleased
	}
	p, ok := l.m.mem.Pin(key)
	if !ok {
		return nil, false, nil
	}
	l.m.claim(key)
	l.pins = append(l.pins, pin{key: key})
	return p, true, nil
}

// Commit stores a completed page in the memory tier and keeps it pinned for
// the lease; under WriteThrough it also writes it to the store. If the
// memory tier already holds a page with the same key (another request
// computed the same prefix), that page is returned and pinned instead.
//
// When the memory tier has no room (ErrNoSpace, ErrTooLarge), the page goes
// to the store under either policy, so the cache still gains it, and the
// error is returned: the page stays private to the request. A store that
// fails (a disk error) fails Commit; one whose disk is nearly full
// (ErrDiskFull) has no room, like a full tier.
func (l *Lease) Commit(p *Page) (*Page, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil, ErrReleased
	}
	m := l.m
	stored, err := m.mem.Put(p)
	if err != nil {
		if !errors.Is(err, ErrNoSpace) && !errors.Is(err, ErrTooLarge) {
			return nil, err
		}
		if serr := m.writeDown(p); serr != nil {
			return nil, serr
		}
		return nil, err
	}
	l.pins = append(l.pins, pin{key: stored.Key})
	if m.write == WriteThrough {
		if err := m.writeDown(p); err != nil {
			return nil, err
		}
	}
	return stored, nil
}

// writeDown writes p to the store, if there is one and it lacks p. A store
// without room is not an error: the page is simply not cached there.
func (m *Manager) writeDown(p *Page) error {
	if m.store == nil || m.store.Contains(p.Key) {
		return nil
	}
	if err := m.store.Write(p); err != nil && !errors.Is(err, ErrNoSpace) && !errors.Is(err, ErrTooLarge) {
		return fmt.Errorf("write %s to %s tier: %w", p.Key, m.store.Name(), err)
	}
	return nil
}

// Pins returns the number of pins the lease holds.
func (l *Lease) Pins() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pins)
}

// Release unpins every page of the lease, last pinned first, so that a
// sequence's tail becomes colder than its head and is evicted first: the head
// is the prefix other requests are likeliest to share. Releasing twice is a
// no-op.
func (l *Lease) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	l.done = true
	var errs []error
	for i := len(l.pins) - 1; i >= 0; i-- {
		if err := l.unpin(l.pins[i]); err != nil {
			errs = append(errs, err)
		}
	}
	l.pins = nil
	return errors.Join(errs...)
}

// unpin releases one pin. Called with l.mu held.
func (l *Lease) unpin(p pin) error {
	if p.device {
		return l.m.device.Unpin(p.key)
	}
	if p.store {
		return l.m.store.Unpin(p.key)
	}
	return l.m.mem.Unpin(p.key)
}
