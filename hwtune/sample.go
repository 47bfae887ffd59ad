package hwtune

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/klauspost/cpuid/v2"
	"github.com/kvflow/kvflow/gpu"
	"github.com/kvflow/kvflow/internal/membw"
)

// Sample is the raw input of discovery, recorded so that parsing and
// derivation can be tested, and profiles defined, without the hardware.
type Sample struct {
	// Description says where the sample came from and what in it is
	// assumed rather than measured (profiles).
	Description string `json:"description,omitempty"`
	// Arch is runtime.GOARCH of the machine ("amd64", "arm64").
	Arch string `json:"arch"`
	// PageSize is the OS page size in bytes (os.Getpagesize); 0 = 4096.
	PageSize int         `json:"page_size,omitempty"`
	CPUID    CPUIDSample `json:"cpuid"`
	// Files maps absolute /sys and /proc paths to their contents, as read
	// (trailing newline included). A file that is not there is simply
	// absent. See Collect for the paths.
	Files map[string]string `json:"files"`
	GPU   gpu.Info          `json:"gpu"`
	// Bandwidths in bytes/s, measured or assumed (0 = unknown): host
	// memory read with all hardware threads, the ssd tier's read, and
	// host→GPU copy (0: Parse takes the first GPU's PCIe link).
	MemoryBandwidth float64 `json:"memory_bandwidth,omitempty"`
	DiskBandwidth   float64 `json:"disk_bandwidth,omitempty"`
	PCIeBandwidth   float64 `json:"pcie_bandwidth,omitempty"`
}

// CPUIDSample is what github.com/klauspost/cpuid/v2 reported (cpuid.CPU).
// Cache sizes are bytes, -1 or 0 when undetected.
type CPUIDSample struct {
	Brand          string `json:"brand"`
	Vendor         string `json:"vendor"`        // cpuid.Vendor name, e.g. "Intel", "AMD"
	VendorString   string `json:"vendor_string"` // raw, e.g. "GenuineIntel"
	Family         int    `json:"family"`
	Model          int    `json:"model"`
	Stepping       int    `json:"stepping"`
	PhysicalCores  int    `json:"physical_cores"`
	ThreadsPerCore int    `json:"threads_per_core"`
	LogicalCores   int    `json:"logical_cores"`
	CacheLine      int    `json:"cache_line"`
	L1I            int    `json:"l1i"`
	L1D            int    `json:"l1d"`
	L2             int    `json:"l2"`
	L3             int    `json:"l3"`
	Hz             int64  `json:"hz,omitempty"`
	BoostHz        int64  `json:"boost_hz,omitempty"`
	// Features are cpuid's names of the enabled features (FeatureSet()),
	// e.g. "AVX2", "FMA3", "SSE42".
	Features []string `json:"features"`
}

// CollectOptions says what Collect measures beyond reading.
type CollectOptions struct {
	// MeasureMemory measures host memory read bandwidth with all hardware
	// threads (membw.Bandwidth over 256 MiB for 300 ms): about half a
	// second and 256 MiB of memory.
	MeasureMemory bool
	// DiskBandwidth is the ssd tier's read bandwidth in bytes/s when the
	// caller knows it (0 = unknown); Collect does not measure disks.
	DiskBandwidth float64
	// NoGPU skips GPU discovery (gpu.Discover loads the NVIDIA driver
	// library when there is one).
	NoGPU bool
}

// The files Collect reads, as globs: per CPU topology and caches, NUMA
// nodes, memory, and the cgroup (v2 and v1) memory limit and CPU quota.
var collectGlobs = []string{
	"/sys/devices/system/cpu/online",
	"/sys/devices/system/cpu/cpu[0-9]*/topology/core_id",
	"/sys/devices/system/cpu/cpu[0-9]*/topology/physical_package_id",
	"/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list",
	"/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/level",
	"/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/type",
	"/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/size",
	"/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/coherency_line_size",
	"/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/shared_cpu_list",
	"/sys/devices/system/node/node[0-9]*/cpulist",
	"/proc/meminfo",
	"/sys/fs/cgroup/memory.max",
	"/sys/fs/cgroup/cpu.max",
	"/sys/fs/cgroup/memory/memory.limit_in_bytes",
	"/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
	"/sys/fs/cgroup/cpu/cpu.cfs_period_us",
}

// Collect records this machine: cpuid.CPU, the /sys and /proc files of
// collectGlobs (missing ones are left out), gpu.Discover() and, if asked,
// the memory bandwidth. It takes a few milliseconds without the memory
// measurement. The error is the context's, checked between steps.
func Collect(ctx context.Context, opts CollectOptions) (*Sample, error) {
	c := cpuid.CPU
	s := &Sample{
		Arch:     runtime.GOARCH,
		PageSize: os.Getpagesize(),
		CPUID: CPUIDSample{
			Brand:          c.BrandName,
			Vendor:         c.VendorID.String(),
			VendorString:   c.VendorString,
			Family:         c.Family,
			Model:          c.Model,
			Stepping:       c.Stepping,
			PhysicalCores:  c.PhysicalCores,
			ThreadsPerCore: c.ThreadsPerCore,
			LogicalCores:   c.LogicalCores,
			CacheLine:      c.CacheLine,
			L1I:            c.Cache.L1I,
			L1D:            c.Cache.L1D,
			L2:             c.Cache.L2,
			L3:             c.Cache.L3,
			Hz:             c.Hz,
			BoostHz:        c.BoostFreq,
			Features:       c.FeatureSet(),
		},
		Files:         map[string]string{},
		DiskBandwidth: opts.DiskBandwidth,
	}
	sort.Strings(s.CPUID.Features)
	for _, g := range collectGlobs {
		paths, _ := filepath.Glob(g) // only ErrBadPattern, and the patterns are fixed
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				s.Files[p] = string(b)
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	if opts.NoGPU {
		s.GPU = gpu.Info{Devices: []gpu.Device{}, Absent: "not asked: GPU discovery was skipped"}
	} else {
		s.GPU = gpu.Discover()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.MeasureMemory {
		s.MemoryBandwidth = membw.Bandwidth(256<<20, runtime.NumCPU(), 300*time.Millisecond)
	}
	return s, nil
}

// Discover collects this machine's sample (without measuring bandwidths)
// and parses it; Source is "discovered".
func Discover(ctx context.Context) (*Hardware, error) {
	s, err := Collect(ctx, CollectOptions{})
	if err != nil {
		return nil, err
	}
	h, err := Parse(s)
	if err != nil {
		return nil, err
	}
	h.Source = "discovered"
	return h, nil
}
