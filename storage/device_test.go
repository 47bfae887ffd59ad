package storage

import (
	"errors"
	"sync"
	"testing"
)

// fakeDevice is a DeviceCache in Go memory, counting pins, with room for
// at most room pages.
type fakeDevice struct {
	mu    sync.Mutex
	room  int
	pages map[PageKey]int // pins per resident page
	loads int
}

func (d *fakeDevice) Name() string { return "gpu" }

func (d *fakeDevice) Load(pages []*Page) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pages == nil {
		d.pages = map[PageKey]int{}
	}
	added := 0
	for _, p := range pages {
		if _, ok := d.pages[p.Key]; !ok {
			added++
		}
	}
	if len(d.pages)+added > d.room {
		return ErrNoSpace
	}
	for _, p := range pages {
		if _, ok := d.pages[p.Key]; !ok {
			d.loads++
		}
		d.pages[p.Key]++
	}
	return nil
}

func (d *fakeDevice) Unpin(key PageKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pages[key] == 0 {
		return errors.New("unpin of an unpinned page")
	}
	d.pages[key]--
	return nil
}

func (d *fakeDevice) Stats() TierStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return TierStats{Name: "gpu", Pages: int64(len(d.pages)), PagesWritten: uint64(d.loads)}
}

func (d *fakeDevice) pins() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.pages {
		n += c
	}
	return n
}

// A lease pins pages on the device once each however often it asks, the
// manager reports the device tier, and releasing the lease (or failing to
// load) leaves no pin behind.
func TestLeasePinDevice(t *testing.T) {
	dev := &fakeDevice{room: 3}
	h, err := NewHostTier(HostOptions{Capacity: 1 << 10, MinBlock: 128})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(ManagerOptions{Tier: h, Layers: 2, Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	if m.Device() != dev {
		t.Fatal("Device() is not the manager's device tier")
	}
	l := m.NewLease()
	a, b, c := kvPage(1, 0), kvPage(1, 1), kvPage(2, 0)
	if err := l.PinDevice([]*Page{a, b}); err != nil {
		t.Fatal(err)
	}
	if err := l.PinDevice([]*Page{a, b, c}); err != nil { // only c is new
		t.Fatal(err)
	}
	if dev.pins() != 3 || dev.loads != 3 || l.Pins() != 3 {
		t.Fatalf("device pins %d, loads %d, lease pins %d; want 3, 3, 3", dev.pins(), dev.loads, l.Pins())
	}
	// No room for a fourth page: an error, and no new pin; later calls
	// give up at once, without asking the device again.
	if err := l.PinDevice([]*Page{kvPage(3, 0)}); !errors.Is(err, ErrNoSpace) || dev.pins() != 3 {
		t.Fatalf("pin beyond the device's room: %v, %d pins", err, dev.pins())
	}
	if !l.DeviceFull() {
		t.Fatal("DeviceFull false after the device had no room")
	}
	dev.room = 10
	if err := l.PinDevice([]*Page{kvPage(4, 0)}); !errors.Is(err, ErrNoSpace) || dev.pins() != 3 || dev.loads != 3 {
		t.Fatalf("pin after the device was full: %v, %d pins, %d loads; want ErrNoSpace without a load", err, dev.pins(), dev.loads)
	}
	stats := m.Stats()
	if len(stats) != 2 || stats[1].Name != "gpu" || stats[1].Pages != 3 {
		t.Fatalf("manager stats %+v: want host then gpu with 3 pages", stats)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if dev.pins() != 0 {
		t.Fatalf("%d device pins after Release", dev.pins())
	}
	if err := l.PinDevice([]*Page{a}); !errors.Is(err, ErrReleased) {
		t.Fatalf("PinDevice after Release: %v", err)
	}
	// Concurrent calls of one lease pin each page once.
	l2 := m.NewLease()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l2.PinDevice([]*Page{a, b}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if dev.pins() != 2 || l2.Pins() != 2 {
		t.Fatalf("concurrent PinDevice: %d device pins, %d lease pins; want 2, 2", dev.pins(), l2.Pins())
	}
	if err := l2.Release(); err != nil || dev.pins() != 0 {
		t.Fatalf("release: %v, %d pins left", err, dev.pins())
	}
	// Without a device tier, PinDevice does nothing.
	plain, _ := NewManager(ManagerOptions{Tier: h, Layers: 2})
	if err := plain.NewLease().PinDevice([]*Page{a}); err != nil || len(plain.Stats()) != 1 {
		t.Fatalf("no device tier: %v, %d tiers", err, len(plain.Stats()))
	}
}
