package storage

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Test hooks of the SSD tier: raw access to the values Badger holds, so
// tests can corrupt them behind the tier's back, and a check of the index's
// invariants.

// rawValue returns a copy of the value stored in Badger under key.
func (t *SSDTier) rawValue(key PageKey) ([]byte, error) {
	var kb [ssdKeyLen]byte
	encodeSSDKey(kb[:], key)
	var v []byte
	err := t.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(kb[:])
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	return v, err
}

// setRawValue stores val under key in Badger, bypassing the tier.
func (t *SSDTier) setRawValue(key PageKey, val []byte) error {
	var kb [ssdKeyLen]byte
	encodeSSDKey(kb[:], key)
	return t.db.Update(func(txn *badger.Txn) error { return txn.Set(kb[:], val) })
}

// flipRawByte flips one bit of the byte at off of key's stored value.
func (t *SSDTier) flipRawByte(key PageKey, off int) error {
	v, err := t.rawValue(key)
	if err != nil {
		return err
	}
	if off < 0 || off >= len(v) {
		return fmt.Errorf("offset %d in a value of %d bytes", off, len(v))
	}
	v[off] ^= 0x10
	return t.setRawValue(key, v)
}

// lruKeys returns the keys of the live unpinned pages, coldest first.
func (t *SSDTier) lruKeys() []PageKey {
	t.mu.Lock()
	defer t.mu.Unlock()
	var keys []PageKey
	for e := t.lru.prev; e != &t.lru; e = e.prev {
		keys = append(keys, e.key)
	}
	return keys
}

// liveKeys returns the keys of the live pages, in no order.
func (t *SSDTier) liveKeys() []PageKey {
	t.mu.Lock()
	defer t.mu.Unlock()
	var keys []PageKey
	for k, e := range t.index {
		if e.state == ssdLive {
			keys = append(keys, k)
		}
	}
	return keys
}

// checkInvariants verifies the index against its counters and the LRU list.
func (t *SSDTier) checkInvariants() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var used, pinned, reserved, live, unpinned int64
	for k, e := range t.index {
		if e.key != k {
			return fmt.Errorf("entry of %s indexed under %s", e.key, k)
		}
		switch e.state {
		case ssdLive:
			used += e.size
			live++
			if e.pins > 0 {
				pinned += e.size
				if e.next != nil {
					return fmt.Errorf("pinned page %s in the LRU list", k)
				}
			} else {
				unpinned++
				if e.next == nil {
					return fmt.Errorf("unpinned page %s out of the LRU list", k)
				}
			}
		case ssdWriting:
			reserved += e.size
			if e.done == nil {
				return fmt.Errorf("page %s being written has no done channel", k)
			}
		case ssdDeleting:
			if e.done == nil {
				return fmt.Errorf("page %s being deleted has no done channel", k)
			}
		case ssdDead:
			if e.pins == 0 {
				return fmt.Errorf("dead page %s holds no pin", k)
			}
		case ssdGone:
			return fmt.Errorf("gone page %s still indexed", k)
		}
	}
	var listed int64
	for e := t.lru.next; e != &t.lru; e = e.next {
		if e.next.prev != e || e.state != ssdLive || e.pins != 0 || t.index[e.key] != e {
			return fmt.Errorf("bad LRU entry %s (state %d, pins %d)", e.key, e.state, e.pins)
		}
		listed++
	}
	switch {
	case used != t.used || pinned != t.pinned || reserved != t.reserved || live != t.live:
		return fmt.Errorf("index holds used %d pinned %d reserved %d live %d; counters say %d %d %d %d",
			used, pinned, reserved, live, t.used, t.pinned, t.reserved, t.live)
	case listed != unpinned:
		return fmt.Errorf("LRU list holds %d pages, %d are live and unpinned", listed, unpinned)
	case t.used+t.reserved > t.capacity:
		return fmt.Errorf("%d bytes used and %d reserved over a capacity of %d", t.used, t.reserved, t.capacity)
	case t.peak < t.used:
		return fmt.Errorf("peak %d below use %d", t.peak, t.used)
	}
	return nil
}
