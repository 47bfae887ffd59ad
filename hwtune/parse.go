package hwtune

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/kvflow/kvflow/gpu"
)

// Hardware is a parsed sample: what `flow hwinfo` prints. Zero means
// unknown throughout.
type Hardware struct {
	// Source is "discovered", "profile <name>" or "sample" (Parse of a
	// sample from elsewhere).
	Source string `json:"source"`
	// Description is the sample's (what a profile assumes).
	Description string `json:"description,omitempty"`
	Arch        string `json:"arch"`
	// PageSize is the OS page size in bytes.
	PageSize int      `json:"page_size"`
	CPU      CPU      `json:"cpu"`
	Memory   Memory   `json:"memory"`
	GPU      gpu.Info `json:"gpu"`
	// Bandwidths in bytes/s: host memory read (all threads), the ssd
	// tier's read, host→GPU copy (measured, else the first GPU's PCIe link
	// at its maximum generation and width).
	MemoryBandwidth float64 `json:"memory_bandwidth"`
	DiskBandwidth   float64 `json:"disk_bandwidth"`
	PCIeBandwidth   float64 `json:"pcie_bandwidth"`
	// Warnings are what the sample lacked (e.g. no /proc/meminfo).
	Warnings []string `json:"warnings,omitempty"`
}

// CPU is the processor side of Hardware.
type CPU struct {
	Model  string `json:"model"`
	Vendor string `json:"vendor"`
	// Sockets, PhysicalCores and Threads count online CPUs: distinct
	// physical_package_id, distinct (package, core_id), online CPUs.
	Sockets       int `json:"sockets"`
	PhysicalCores int `json:"physical_cores"`
	Threads       int `json:"threads"`
	// NUMANodes is the number of NUMA nodes with CPUs (1 when /sys has
	// no node directory).
	NUMANodes int `json:"numa_nodes"`
	// Quota is the cgroup CPU quota in CPUs (cpu.max or cfs_quota_us /
	// cfs_period_us), 0 when unlimited.
	Quota float64 `json:"cpu_quota,omitempty"`
	// Cache sizes in bytes of one instance (as /sys reports them, else as
	// cpuid does), and the coherency line size.
	L1D      int64 `json:"l1d"`
	L1I      int64 `json:"l1i"`
	L2       int64 `json:"l2"`
	L3       int64 `json:"l3"`
	LineSize int   `json:"line_size"`
	// Caches lists every level with its sharing, from /sys (or cpuid,
	// without the sharing).
	Caches []Cache `json:"caches"`
	// Features is the SIMD-relevant subset of cpuid's features in a fixed
	// order (featureOrder), e.g. SSE4.2 AVX AVX2 FMA3 F16C.
	Features []string `json:"features"`
}

// Cache is one cache level and type.
type Cache struct {
	Level int    `json:"level"`
	Type  string `json:"type"` // "Data", "Instruction", "Unified"
	// SizeBytes is one instance's size.
	SizeBytes int64 `json:"size_bytes"`
	LineSize  int   `json:"line_size,omitempty"`
	// SharedBy is the number of hardware threads that share one instance,
	// Instances the number of instances over the online CPUs (0: unknown).
	SharedBy  int `json:"shared_by,omitempty"`
	Instances int `json:"instances,omitempty"`
}

// Name is "L1d", "L1i", "L2", "L3".
func (c Cache) Name() string {
	switch c.Type {
	case "Data":
		return fmt.Sprintf("L%dd", c.Level)
	case "Instruction":
		return fmt.Sprintf("L%di", c.Level)
	}
	return fmt.Sprintf("L%d", c.Level)
}

// Memory is host memory.
type Memory struct {
	// TotalBytes and AvailableBytes are MemTotal and MemAvailable of
	// /proc/meminfo (MemFree+Buffers+Cached on kernels without
	// MemAvailable).
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
	// LimitBytes is the cgroup memory limit when below TotalBytes, else 0.
	LimitBytes uint64 `json:"limit_bytes,omitempty"`
	// HugePageBytes is Hugepagesize.
	HugePageBytes uint64 `json:"huge_page_bytes,omitempty"`
}

// featureOrder is the SIMD-relevant subset of cpuid feature names, in the
// order Hardware lists them, with the name it shows.
var featureOrder = []struct{ cpuid, show string }{
	{"SSE42", "SSE4.2"}, {"AVX", "AVX"}, {"AVX2", "AVX2"}, {"FMA3", "FMA3"}, {"F16C", "F16C"},
	{"AVXVNNI", "AVXVNNI"}, {"AVX512F", "AVX512F"}, {"AVX512BW", "AVX512BW"}, {"AVX512VL", "AVX512VL"},
	{"AVX512VNNI", "AVX512VNNI"}, {"AVX512BF16", "AVX512BF16"}, {"AVX512FP16", "AVX512FP16"},
	{"AMXTILE", "AMXTILE"}, {"AMXBF16", "AMXBF16"}, {"AMXINT8", "AMXINT8"}, {"AMXFP16", "AMXFP16"},
	// arm64
	{"ASIMD", "ASIMD"}, {"ASIMDHP", "ASIMDHP"}, {"ASIMDDP", "ASIMDDP"}, {"FPHP", "FPHP"},
	{"BF16", "BF16"}, {"I8MM", "I8MM"}, {"SVE", "SVE"}, {"SVE2", "SVE2"},
}

// Has reports whether the CPU has a feature, by cpuid's name or the name
// Features shows ("SSE4.2" or "SSE42").
func (c *CPU) Has(feature string) bool {
	for _, f := range featureOrder {
		if strings.EqualFold(feature, f.cpuid) || strings.EqualFold(feature, f.show) {
			return slices.Contains(c.Features, f.show)
		}
	}
	return false
}

const (
	sysCPU  = "/sys/devices/system/cpu/"
	sysNode = "/sys/devices/system/node/"
	meminfo = "/proc/meminfo"
)

var (
	cacheFileRE = regexp.MustCompile(`^/sys/devices/system/cpu/cpu([0-9]+)/cache/index([0-9]+)/([a-z_]+)$`)
	cpuDirRE    = regexp.MustCompile(`^/sys/devices/system/cpu/cpu([0-9]+)/`)
	nodeRE      = regexp.MustCompile(`^/sys/devices/system/node/node([0-9]+)/cpulist$`)
)

// Parse turns a sample into Hardware. It is pure. Where /sys and cpuid
// both give a value, /sys wins. Malformed contents are errors naming the
// file; missing files are not: the value falls back to cpuid, or stays
// unknown with a warning (no /proc/meminfo: memory unknown, and Derive
// says what it assumed).
func Parse(s *Sample) (*Hardware, error) {
	if s == nil {
		return nil, fmt.Errorf("hwtune: nil sample")
	}
	p := parser{files: s.Files}
	h := &Hardware{
		Source:          "sample",
		Description:     s.Description,
		Arch:            s.Arch,
		PageSize:        s.PageSize,
		GPU:             s.GPU,
		MemoryBandwidth: s.MemoryBandwidth,
		DiskBandwidth:   s.DiskBandwidth,
		PCIeBandwidth:   s.PCIeBandwidth,
	}
	if h.PageSize <= 0 {
		h.PageSize = 4096
	}
	for _, bw := range []struct {
		name string
		v    float64
	}{{"memory_bandwidth", s.MemoryBandwidth}, {"disk_bandwidth", s.DiskBandwidth}, {"pcie_bandwidth", s.PCIeBandwidth}} {
		if bw.v < 0 || math.IsNaN(bw.v) || math.IsInf(bw.v, 0) {
			return nil, fmt.Errorf("hwtune: sample %s %v: must be a finite bytes/s >= 0", bw.name, bw.v)
		}
	}
	if err := p.cpu(s, h); err != nil {
		return nil, err
	}
	if err := p.memory(h); err != nil {
		return nil, err
	}
	if h.GPU.Devices == nil {
		h.GPU.Devices = []gpu.Device{}
	}
	if len(h.GPU.Devices) == 0 && h.GPU.Absent == "" {
		h.GPU.Absent = "no GPU in the sample"
	}
	if h.PCIeBandwidth == 0 && len(h.GPU.Devices) > 0 {
		d := h.GPU.Devices[0]
		gen, width := d.PCIeMaxGen, d.PCIeMaxWidth
		if gen == 0 || width == 0 {
			gen, width = d.PCIeGen, d.PCIeWidth
		}
		h.PCIeBandwidth = gpu.PCIeBandwidth(gen, width)
	}
	h.Warnings = append(h.Warnings, p.warnings...)
	return h, nil
}

type parser struct {
	files    map[string]string
	warnings []string
}

func (p *parser) warn(format string, a ...any) {
	p.warnings = append(p.warnings, fmt.Sprintf(format, a...))
}

// get returns a file's contents, trimmed.
func (p *parser) get(path string) (string, bool) {
	v, ok := p.files[path]
	return strings.TrimSpace(v), ok
}

func (p *parser) int(path string) (int, bool, error) {
	v, ok := p.get(path)
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, true, fmt.Errorf("hwtune: %s: %q is not an integer", path, v)
	}
	return n, true, nil
}

func (p *parser) cpu(s *Sample, h *Hardware) error {
	id := s.CPUID
	c := &h.CPU
	c.Model = strings.TrimSpace(id.Brand)
	c.Vendor = id.Vendor

	// Online CPUs: /sys online, else the cpuN directories in the sample,
	// else cpuid's count.
	var online []int
	if v, ok := p.get(sysCPU + "online"); ok {
		l, err := ParseCPUList(v)
		if err != nil {
			return fmt.Errorf("hwtune: %sonline: %w", sysCPU, err)
		}
		online = l
	} else {
		seen := map[int]bool{}
		for path := range p.files {
			if m := cpuDirRE.FindStringSubmatch(path); m != nil {
				n, _ := strconv.Atoi(m[1])
				seen[n] = true
			}
		}
		for n := range seen {
			online = append(online, n)
		}
		sort.Ints(online)
	}
	c.Threads = len(online)
	if c.Threads == 0 {
		c.Threads = id.LogicalCores
		p.warn("no online CPU list in /sys: threads from cpuid")
	}

	// Cores and sockets from topology.
	cores, pkgs := map[[2]int]bool{}, map[int]bool{}
	siblings := map[string]bool{}
	topo := len(online) > 0
	for _, n := range online {
		dir := fmt.Sprintf("%scpu%d/topology/", sysCPU, n)
		core, okc, err := p.int(dir + "core_id")
		if err != nil {
			return err
		}
		pkg, _, err := p.int(dir + "physical_package_id")
		if err != nil {
			return err
		}
		if sib, ok := p.get(dir + "thread_siblings_list"); ok {
			l, err := ParseCPUList(sib)
			if err != nil {
				return fmt.Errorf("hwtune: %sthread_siblings_list: %w", dir, err)
			}
			siblings[fmt.Sprint(l)] = true
		}
		if !okc {
			topo = false
			continue
		}
		cores[[2]int{pkg, core}] = true
		pkgs[pkg] = true
	}
	switch {
	case topo:
		c.PhysicalCores, c.Sockets = len(cores), len(pkgs)
	case len(siblings) > 0:
		c.PhysicalCores, c.Sockets = len(siblings), 1
	default:
		c.PhysicalCores, c.Sockets = id.PhysicalCores, 1
		p.warn("no CPU topology in /sys: physical cores from cpuid")
	}
	if c.PhysicalCores <= 0 {
		c.PhysicalCores = c.Threads
	}
	if c.Threads <= 0 {
		c.Threads = max(c.PhysicalCores, 1)
	}

	// NUMA nodes with CPUs.
	c.NUMANodes = 0
	for path, v := range p.files {
		if !nodeRE.MatchString(path) {
			continue
		}
		l, err := ParseCPUList(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("hwtune: %s: %w", path, err)
		}
		if len(l) > 0 {
			c.NUMANodes++
		}
	}
	if c.NUMANodes == 0 {
		c.NUMANodes = 1
	}

	if err := p.caches(c, online, id); err != nil {
		return err
	}
	if err := p.cpuQuota(c); err != nil {
		return err
	}

	have := map[string]bool{}
	for _, f := range id.Features {
		have[strings.ToUpper(f)] = true
	}
	c.Features = []string{}
	for _, f := range featureOrder {
		if have[f.cpuid] {
			c.Features = append(c.Features, f.show)
		}
	}
	return nil
}

// caches reads cache/index*/ of every online CPU and groups by level and
// type; without them, cpuid's sizes.
func (p *parser) caches(c *CPU, online []int, id CPUIDSample) error {
	isOnline := map[int]bool{}
	for _, n := range online {
		isOnline[n] = true
	}
	type key struct {
		cpu, index int
	}
	idx := map[key]map[string]string{}
	for path, v := range p.files {
		m := cacheFileRE.FindStringSubmatch(path)
		if m == nil {
			continue
		}
		cpu, _ := strconv.Atoi(m[1])
		index, _ := strconv.Atoi(m[2])
		if !isOnline[cpu] {
			continue
		}
		k := key{cpu, index}
		if idx[k] == nil {
			idx[k] = map[string]string{}
		}
		idx[k][m[3]] = strings.TrimSpace(v)
	}
	keys := make([]key, 0, len(idx))
	for k := range idx {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].cpu != keys[j].cpu {
			return keys[i].cpu < keys[j].cpu
		}
		return keys[i].index < keys[j].index
	})
	type group struct {
		Cache
		lists map[string]bool
	}
	groups := map[[2]any]*group{}
	var order [][2]any
	for _, k := range keys {
		f := idx[k]
		dir := fmt.Sprintf("%scpu%d/cache/index%d/", sysCPU, k.cpu, k.index)
		lv, ok := f["level"]
		if !ok {
			continue
		}
		level, err := strconv.Atoi(lv)
		if err != nil || level < 1 {
			return fmt.Errorf("hwtune: %slevel: %q is not a cache level", dir, lv)
		}
		typ := f["type"]
		switch typ {
		case "Data", "Instruction", "Unified":
		default:
			return fmt.Errorf("hwtune: %stype: %q: want Data, Instruction or Unified", dir, typ)
		}
		gk := [2]any{level, typ}
		g := groups[gk]
		if g == nil {
			g = &group{Cache: Cache{Level: level, Type: typ}, lists: map[string]bool{}}
			if v, ok := f["size"]; ok {
				if g.SizeBytes, err = ParseSysSize(v); err != nil {
					return fmt.Errorf("hwtune: %ssize: %w", dir, err)
				}
			}
			if v, ok := f["coherency_line_size"]; ok {
				if g.LineSize, err = strconv.Atoi(v); err != nil || g.LineSize <= 0 {
					return fmt.Errorf("hwtune: %scoherency_line_size: %q is not a line size", dir, v)
				}
			}
			groups[gk] = g
			order = append(order, gk)
		}
		if v, ok := f["shared_cpu_list"]; ok {
			l, err := ParseCPUList(v)
			if err != nil {
				return fmt.Errorf("hwtune: %sshared_cpu_list: %w", dir, err)
			}
			if len(g.lists) == 0 {
				g.SharedBy = len(l)
			}
			g.lists[fmt.Sprint(l)] = true
		}
	}
	sort.SliceStable(order, func(i, j int) bool {
		a, b := groups[order[i]].Cache, groups[order[j]].Cache
		if a.Level != b.Level {
			return a.Level < b.Level
		}
		return typeRank(a.Type) < typeRank(b.Type)
	})
	c.Caches = []Cache{}
	for _, gk := range order {
		g := groups[gk]
		g.Instances = len(g.lists)
		c.Caches = append(c.Caches, g.Cache)
	}
	for _, ch := range c.Caches {
		switch ch.Name() {
		case "L1d":
			c.L1D, c.LineSize = ch.SizeBytes, ch.LineSize
		case "L1i":
			c.L1I = ch.SizeBytes
		case "L2":
			c.L2 = ch.SizeBytes
		case "L3":
			c.L3 = ch.SizeBytes
		}
	}
	// cpuid fills what /sys did not give.
	fill := func(dst *int64, v int, typ string, level int) {
		if *dst > 0 || v <= 0 {
			return
		}
		*dst = int64(v)
		c.Caches = append(c.Caches, Cache{Level: level, Type: typ, SizeBytes: int64(v), LineSize: id.CacheLine})
	}
	fill(&c.L1D, id.L1D, "Data", 1)
	fill(&c.L1I, id.L1I, "Instruction", 1)
	fill(&c.L2, id.L2, "Unified", 2)
	fill(&c.L3, id.L3, "Unified", 3)
	sort.SliceStable(c.Caches, func(i, j int) bool {
		a, b := c.Caches[i], c.Caches[j]
		if a.Level != b.Level {
			return a.Level < b.Level
		}
		return typeRank(a.Type) < typeRank(b.Type)
	})
	if c.LineSize == 0 {
		c.LineSize = id.CacheLine
	}
	if len(idx) == 0 {
		p.warn("no cache information in /sys: sizes from cpuid")
	}
	return nil
}

func typeRank(t string) int {
	return map[string]int{"Data": 0, "Instruction": 1, "Unified": 2}[t]
}

// cpuQuota reads the cgroup v2 cpu.max ("max 100000", "200000 100000")
// or v1 cfs_quota_us / cfs_period_us.
func (p *parser) cpuQuota(c *CPU) error {
	const v2 = "/sys/fs/cgroup/cpu.max"
	if v, ok := p.get(v2); ok {
		f := strings.Fields(v)
		if len(f) < 1 || len(f) > 2 {
			return fmt.Errorf("hwtune: %s: %q: want \"max|QUOTA [PERIOD]\"", v2, v)
		}
		if f[0] == "max" {
			return nil
		}
		period := 100000.0
		quota, err := strconv.ParseFloat(f[0], 64)
		if err == nil && len(f) == 2 {
			period, err = strconv.ParseFloat(f[1], 64)
		}
		if err != nil || quota <= 0 || period <= 0 {
			return fmt.Errorf("hwtune: %s: %q: want \"max|QUOTA [PERIOD]\"", v2, v)
		}
		c.Quota = quota / period
		return nil
	}
	const q1, p1 = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"
	quota, ok, err := p.int(q1)
	if err != nil || !ok || quota <= 0 {
		return err
	}
	period, ok, err := p.int(p1)
	if err != nil {
		return err
	}
	if !ok || period <= 0 {
		period = 100000
	}
	c.Quota = float64(quota) / float64(period)
	return nil
}

// memory reads /proc/meminfo and the cgroup memory limit.
func (p *parser) memory(h *Hardware) error {
	m := &h.Memory
	v, ok := p.files[meminfo]
	if !ok {
		p.warn("no %s: memory unknown", meminfo)
	} else {
		kv := map[string]uint64{}
		for i, line := range strings.Split(v, "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			name, rest, found := strings.Cut(line, ":")
			f := strings.Fields(rest)
			if !found || len(f) < 1 || len(f) > 2 || (len(f) == 2 && f[1] != "kB") {
				return fmt.Errorf("hwtune: %s:%d: %q: want \"Name: <n> [kB]\"", meminfo, i+1, line)
			}
			n, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return fmt.Errorf("hwtune: %s:%d: %q: %q is not a number", meminfo, i+1, line, f[0])
			}
			if len(f) == 2 {
				if n > math.MaxUint64>>10 {
					return fmt.Errorf("hwtune: %s:%d: %q: too large", meminfo, i+1, line)
				}
				n <<= 10
			}
			kv[strings.TrimSpace(name)] = n
		}
		total, ok := kv["MemTotal"]
		if !ok || total == 0 {
			return fmt.Errorf("hwtune: %s: no MemTotal", meminfo)
		}
		m.TotalBytes = total
		if a, ok := kv["MemAvailable"]; ok {
			m.AvailableBytes = a
		} else {
			m.AvailableBytes = kv["MemFree"] + kv["Buffers"] + kv["Cached"]
			p.warn("%s has no MemAvailable: available = MemFree + Buffers + Cached", meminfo)
		}
		m.AvailableBytes = min(m.AvailableBytes, m.TotalBytes)
		m.HugePageBytes = kv["Hugepagesize"]
	}
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		v, ok := p.get(path)
		if !ok || v == "max" {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fmt.Errorf("hwtune: %s: %q is not a byte count or \"max\"", path, v)
		}
		if m.TotalBytes == 0 || n < m.TotalBytes {
			m.LimitBytes = n
		}
		break
	}
	return nil
}

// ParseSysSize parses a /sys cache size: "32K", "6144K", "1M", or bytes.
func ParseSysSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K', 'k':
			mult, t = 1<<10, t[:len(t)-1]
		case 'M', 'm':
			mult, t = 1<<20, t[:len(t)-1]
		case 'G', 'g':
			mult, t = 1<<30, t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: want a byte count with an optional K, M or G suffix", s)
	}
	return n * mult, nil
}

// ParseCPUList parses a Linux CPU list such as "0-3,8,10-11" (empty: no
// CPUs) into sorted, distinct CPU numbers.
func ParseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	out := []int{}
	if s == "" {
		return out, nil
	}
	seen := map[int]bool{}
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b-a > 1<<16 {
			return nil, fmt.Errorf("CPU list %q: want e.g. \"0-3,8\"", s)
		}
		for n := a; n <= b; n++ {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}
