package storage

// DeviceCache is a tier in accelerator memory above the memory tier: the
// KV manager's L1. It holds copies of pages the memory tier (or a
// request's own pool) has, keyed like every tier, so evicting one drops a
// copy and loses nothing (GPU → host is a no-op demotion). A lease pins the
// pages a request reads on the device (Lease.PinDevice) until it is
// released. The `cuda` build's DeviceTier implements it.
type DeviceCache interface {
	// Name is the tier's name in reports ("gpu").
	Name() string
	// Load copies the pages the device lacks in, and pins every page once.
	// On error no page stays pinned.
	Load(pages []*Page) error
	// Unpin releases one pin of key.
	Unpin(key PageKey) error
	// Stats returns a snapshot of the tier's counters.
	Stats() TierStats
}
