package hwtune

import (
	"fmt"
	"math"
	"strconv"
)

// Model is what Derive needs of the model: the shape of one layer's KV
// pages and the element size of the cache's dtype. Zero fields are
// assumed (head_dim 128, 1 KV head, 2-byte bf16) and the reasons say so.
type Model struct {
	HeadDim   int `json:"head_dim"`
	KVHeads   int `json:"kv_heads"`
	Layers    int `json:"layers"`
	DTypeSize int `json:"dtype_size"` // bytes per element: 2 for bf16/f16, 4 for f32
}

// Setting is one derived value, the HCL attribute it stands for, and why.
type Setting struct {
	// Name is the Settings field's JSON name, e.g. "block_tokens".
	Name string `json:"name"`
	// Attribute is the HCL attribute it is a default for, e.g.
	// `cache block_tokens`, `tier "host" capacity`.
	Attribute string `json:"attribute"`
	Value     int64  `json:"value"`
	// Text is the value as HCL takes it: `4`, `"11GiB"`.
	Text   string `json:"text"`
	Reason string `json:"reason"`
}

// Settings are the defaults Derive gives a pipeline on some hardware.
// Explicit HCL settings win over every one of them.
type Settings struct {
	// StageWorkers is the workers of each CPU-bound stage (fetch, align,
	// attend, evict).
	StageWorkers int `json:"stage_workers"`
	// PrefetchWorkers is the I/O-bound prefetch stage's workers.
	PrefetchWorkers int `json:"prefetch_workers"`
	// BlockTokens is the page size in tokens (cache block_tokens).
	BlockTokens int `json:"block_tokens"`
	// PageAlign is the byte alignment of pages in the host tier and of
	// reads from the ssd tier.
	PageAlign int `json:"page_align"`
	// HostCapacity is the host tier's default capacity in bytes.
	HostCapacity int64 `json:"host_capacity"`
	// Lookahead is the prefetch stage's lookahead in layers.
	Lookahead int `json:"lookahead"`
	// AttendThreads is the attend stage's threads per step.
	AttendThreads int `json:"attend_threads"`
	// Reasons has one Setting per field above, in that order.
	Reasons []Setting `json:"reasons"`
}

// Assumptions Derive makes for what the hardware does not say.
const (
	// AssumedMemoryBandwidth is a dual-channel DDR4 machine's all-core
	// read bandwidth, bytes/s.
	AssumedMemoryBandwidth = 20e9
	// AssumedDiskBandwidth is a PCIe 3.0 NVMe SSD's read bandwidth,
	// bytes/s.
	AssumedDiskBandwidth = 2e9
	// AssumedL1D is the L1 data cache of every x86 core since 2006.
	AssumedL1D = 32 << 10
	// MaxLookahead bounds the derived lookahead: more layers in flight
	// cost host memory without hiding more latency.
	MaxLookahead = 8
	// MinPrefetchWorkers is the least derived prefetch workers.
	MinPrefetchWorkers = 4
	// MaxPrefetchWorkers bounds the derived prefetch workers (an NVMe
	// queue is well fed by far fewer reads in flight).
	MaxPrefetchWorkers = 64
)

// blockTokenChoices are the page sizes Derive picks from, smallest first.
var blockTokenChoices = []int{16, 32, 64, 128}

// Derive computes default settings for a model on some hardware; it is
// pure. The rules, each of which its Setting's reason spells out with the
// inputs:
//
//   - StageWorkers: the physical cores (hyperthreads share a core's
//     vector units and L1/L2, which these stages saturate), at most the
//     cgroup CPU quota rounded up, at least 1.
//   - PrefetchWorkers: 2 × hardware threads, within [4, 64]: prefetch
//     waits on reads, so more reads in flight than cores keep the SSD's
//     queue deep.
//   - BlockTokens: the largest of 16/32/64/128 whose K+V page of one KV
//     head (2 × tokens × head_dim × dtype size) fits in L1D, and in a
//     GPU's shared memory per block when there is one (16 when none
//     fits).
//   - PageAlign: the OS page size when a whole page (all KV heads) is at
//     least one OS page (O_DIRECT reads and huge-page mappings need it),
//     else the cache line.
//   - HostCapacity: half the available memory (or the cgroup limit when
//     lower), rounded down to a MiB: the rest is for the model's weights,
//     the page cache the ssd tier reads through, and other processes. 1
//     GiB when memory is unknown.
//   - Lookahead: ceil(memory bandwidth / disk bandwidth) within [1, 8],
//     and at most the model's layers: a layer's pages take that many
//     times longer to come from disk than to be read by attention, so that
//     many layers in flight keep attend from waiting on each one's
//     latency. Unknown bandwidths are assumed (AssumedMemoryBandwidth,
//     AssumedDiskBandwidth) and the reason says so.
//   - AttendThreads: 1: the attend stage's workers already run requests
//     in parallel; splitting one step's pages over threads only pays when
//     fewer requests than workers are active.
func Derive(h *Hardware, m Model) Settings {
	var s Settings
	add := func(name, attr string, v int64, text, reason string) {
		if text == "" {
			text = strconv.FormatInt(v, 10)
		}
		s.Reasons = append(s.Reasons, Setting{Name: name, Attribute: attr, Value: v, Text: text, Reason: reason})
	}
	c := h.CPU

	// Stage workers.
	cores := c.PhysicalCores
	why := fmt.Sprintf("the %d physical cores (%d hardware threads): fetch, align, attend and evict are CPU-bound, "+
		"and a core's hyperthreads share its vector units and L1/L2", c.PhysicalCores, c.Threads)
	if cores <= 0 {
		cores = max(c.Threads, 1)
		why = fmt.Sprintf("physical cores unknown: the %d hardware threads", c.Threads)
	}
	if c.Quota > 0 && int(math.Ceil(c.Quota)) < cores {
		cores = int(math.Ceil(c.Quota))
		why += fmt.Sprintf(", capped by the cgroup CPU quota of %.2f CPUs", c.Quota)
	}
	s.StageWorkers = max(cores, 1)
	add("stage_workers", `stage "fetch"|"align"|"attend"|"evict" workers`, int64(s.StageWorkers), "", why)

	// Prefetch workers.
	threads := max(c.Threads, 1)
	s.PrefetchWorkers = min(max(2*threads, MinPrefetchWorkers), MaxPrefetchWorkers)
	add("prefetch_workers", `stage "prefetch" workers`, int64(s.PrefetchWorkers), "",
		fmt.Sprintf("2 × the %d hardware threads, within [%d, %d]: prefetch is I/O-bound (it waits on ssd reads), "+
			"so more reads in flight than cores keep the SSD's queue deep", threads, MinPrefetchWorkers, MaxPrefetchWorkers))

	// Block tokens.
	headDim, dsize, kvHeads := m.HeadDim, m.DTypeSize, m.KVHeads
	var assumed []string
	if headDim <= 0 {
		headDim = 128
		assumed = append(assumed, "head_dim 128 assumed")
	}
	if dsize <= 0 {
		dsize = 2
		assumed = append(assumed, "2-byte dtype assumed")
	}
	if kvHeads <= 0 {
		kvHeads = 1
		assumed = append(assumed, "1 KV head assumed")
	}
	l1d := c.L1D
	l1dWhy := fmt.Sprintf("L1D %s", sizeText(l1d))
	if l1d <= 0 {
		l1d = AssumedL1D
		l1dWhy = fmt.Sprintf("L1D unknown, %s assumed", sizeText(l1d))
	}
	limit, limitWhy := l1d, l1dWhy
	if smem := firstSharedMem(h); smem > 0 && int64(smem) < limit {
		limit = int64(smem)
		limitWhy = fmt.Sprintf("%s and the GPU's %s of shared memory per block", l1dWhy, sizeText(int64(smem)))
	} else if smem > 0 {
		limitWhy = fmt.Sprintf("%s (the GPU's %s of shared memory per block is larger)", l1dWhy, sizeText(int64(smem)))
	}
	perToken := int64(2 * headDim * dsize)
	s.BlockTokens = blockTokenChoices[0]
	for _, t := range blockTokenChoices {
		if int64(t)*perToken <= limit {
			s.BlockTokens = t
		}
	}
	fits := "fits"
	if int64(s.BlockTokens)*perToken > limit {
		fits = "does not fit even at the smallest page, which is used anyway"
	}
	add("block_tokens", "cache block_tokens", int64(s.BlockTokens), "",
		fmt.Sprintf("the largest of 16/32/64/128 tokens whose K+V page of one KV head (2 × tokens × head_dim %d × %d bytes = %s) %s in %s%s: "+
			"attention then streams a head's page from L1", headDim, dsize, sizeText(int64(s.BlockTokens)*perToken), fits, limitWhy, assumedText(assumed)))

	// Page alignment.
	pageBytes := int64(s.BlockTokens) * perToken * int64(kvHeads)
	osPage := max(h.PageSize, 1)
	line := c.LineSize
	lineWhy := fmt.Sprintf("the %d-byte cache line", line)
	if line <= 0 {
		line = 64
		lineWhy = "the cache line (unknown, 64 bytes assumed)"
	}
	if pageBytes >= int64(osPage) {
		s.PageAlign = osPage
		add("page_align", "cache page_align", int64(s.PageAlign), "",
			fmt.Sprintf("a page (%s × %s) is at least the %s OS page: OS-page alignment allows O_DIRECT reads from the ssd tier and huge-page mappings%s",
				plural(kvHeads, "KV head"), sizeText(int64(s.BlockTokens)*perToken), sizeText(int64(osPage)), assumedText(assumed)))
	} else {
		s.PageAlign = line
		add("page_align", "cache page_align", int64(s.PageAlign), "",
			fmt.Sprintf("a page (%s) is smaller than the %s OS page: %s, so that no two pages share a line%s",
				sizeText(pageBytes), sizeText(int64(osPage)), lineWhy, assumedText(assumed)))
	}

	// Host capacity.
	mem := h.Memory
	base, baseWhy := mem.AvailableBytes, fmt.Sprintf("the %s available (MemAvailable of %s total)", sizeText(int64(mem.AvailableBytes)), sizeText(int64(mem.TotalBytes)))
	if mem.LimitBytes > 0 && (base == 0 || mem.LimitBytes < base) {
		base, baseWhy = mem.LimitBytes, fmt.Sprintf("the cgroup memory limit of %s (below the %s available)", sizeText(int64(mem.LimitBytes)), sizeText(int64(mem.AvailableBytes)))
	}
	if base == 0 {
		s.HostCapacity = 1 << 30
		add("host_capacity", `tier "host" capacity`, s.HostCapacity, capacityText(s.HostCapacity),
			"available memory unknown (no /proc/meminfo): 1GiB, a size any machine running this has; set it explicitly")
	} else {
		s.HostCapacity = max(int64(base/2)&^(1<<20-1), 1<<20)
		add("host_capacity", `tier "host" capacity`, s.HostCapacity, capacityText(s.HostCapacity),
			fmt.Sprintf("half of %s, rounded down to a MiB: the other half is for the model's weights, "+
				"the OS page cache the ssd tier reads through, and other processes", baseWhy))
	}

	// Lookahead.
	mbw, dbw := h.MemoryBandwidth, h.DiskBandwidth
	mWhy, dWhy := "recorded", "recorded"
	if mbw <= 0 {
		mbw, mWhy = AssumedMemoryBandwidth, "unknown, assumed for dual-channel DDR4"
	}
	if dbw <= 0 {
		dbw, dWhy = AssumedDiskBandwidth, "unknown, assumed for a PCIe 3.0 NVMe SSD"
	}
	ratio := mbw / dbw
	s.Lookahead = int(min(max(math.Ceil(ratio-1e-9), 1), MaxLookahead))
	capped := ""
	if m.Layers > 0 && s.Lookahead > m.Layers {
		s.Lookahead = m.Layers
		capped = fmt.Sprintf(", at most the model's %d layers", m.Layers)
	}
	add("lookahead", `stage "prefetch" lookahead`, int64(s.Lookahead), "",
		fmt.Sprintf("ceil(memory %s / disk %s = %.2f) within [1, %d]%s: a layer's pages take that many times longer to come from the ssd tier "+
			"than attention takes to read them from host memory, so that many layers in flight keep attend from waiting on each one",
			bwText(mbw, mWhy), bwText(dbw, dWhy), ratio, MaxLookahead, capped))

	// Attend threads.
	s.AttendThreads = 1
	add("attend_threads", `stage "attend" threads`, 1, "",
		fmt.Sprintf("the attend stage's %d workers already run requests in parallel; splitting one step's pages over threads "+
			"pays only when fewer requests than workers are active (set threads = %d for single-request latency)", s.StageWorkers, s.StageWorkers))
	return s
}

func firstSharedMem(h *Hardware) int {
	if len(h.GPU.Devices) == 0 {
		return 0
	}
	return h.GPU.Devices[0].SharedMemPerBlock
}

func assumedText(a []string) string {
	if len(a) == 0 {
		return ""
	}
	s := " ("
	for i, x := range a {
		if i > 0 {
			s += ", "
		}
		s += x
	}
	return s + ")"
}

// sizeText prints bytes in the largest binary unit that keeps one
// decimal: "32 KiB", "6 MiB", "23.1 GiB".
func sizeText(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f %s", v, units[u])
	}
	return fmt.Sprintf("%.1f %s", v, units[u])
}

// capacityText is a whole-MiB byte count as HCL's capacity takes it.
func capacityText(n int64) string {
	if n%(1<<30) == 0 {
		return fmt.Sprintf("%q", fmt.Sprintf("%dGiB", n>>30))
	}
	return fmt.Sprintf("%q", fmt.Sprintf("%dMiB", n>>20))
}

func bwText(v float64, why string) string {
	return fmt.Sprintf("%.1f GB/s (%s)", v/1e9, why)
}
