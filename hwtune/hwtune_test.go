package hwtune

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/kvflow/kvflow/gpu"
)

func mustProfile(t *testing.T, name string) *Hardware {
	t.Helper()
	h, err := Profile(name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestProfiles(t *testing.T) {
	want := []string{"epyc-2c", "h100-pcie", "i5-10210u-sm61"}
	if got := Profiles(); !slices.Equal(got, want) {
		t.Fatalf("Profiles() = %v, want %v", got, want)
	}
	_, err := Profile("nope")
	if err == nil || !strings.Contains(err.Error(), "i5-10210u-sm61") || !strings.Contains(err.Error(), "epyc-2c") {
		t.Fatalf("unknown profile: error %v does not list the names", err)
	}
	if _, err := Profile("../profiles/epyc-2c"); err == nil {
		t.Fatal("a path as a profile name was accepted")
	}
}

func TestParseI5(t *testing.T) {
	h := mustProfile(t, "i5-10210u-sm61")
	c := h.CPU
	if h.Source != "profile i5-10210u-sm61" {
		t.Errorf("Source = %q", h.Source)
	}
	if c.PhysicalCores != 4 || c.Threads != 8 || c.Sockets != 1 || c.NUMANodes != 1 {
		t.Errorf("cores %d threads %d sockets %d nodes %d, want 4 8 1 1", c.PhysicalCores, c.Threads, c.Sockets, c.NUMANodes)
	}
	if c.L1D != 32<<10 || c.L1I != 32<<10 || c.L2 != 256<<10 || c.L3 != 6<<20 || c.LineSize != 64 {
		t.Errorf("caches L1D %d L1I %d L2 %d L3 %d line %d", c.L1D, c.L1I, c.L2, c.L3, c.LineSize)
	}
	wantCaches := []Cache{
		{Level: 1, Type: "Data", SizeBytes: 32 << 10, LineSize: 64, SharedBy: 2, Instances: 4},
		{Level: 1, Type: "Instruction", SizeBytes: 32 << 10, LineSize: 64, SharedBy: 2, Instances: 4},
		{Level: 2, Type: "Unified", SizeBytes: 256 << 10, LineSize: 64, SharedBy: 2, Instances: 4},
		{Level: 3, Type: "Unified", SizeBytes: 6 << 20, LineSize: 64, SharedBy: 8, Instances: 1},
	}
	if !slices.Equal(c.Caches, wantCaches) {
		t.Errorf("Caches = %+v\nwant %+v", c.Caches, wantCaches)
	}
	if !c.Has("AVX2") || !c.Has("FMA3") || !c.Has("F16C") || !c.Has("SSE4.2") || c.Has("AVX512F") {
		t.Errorf("Features = %v: want AVX2 FMA3 F16C SSE4.2, no AVX512F", c.Features)
	}
	if want := []string{"SSE4.2", "AVX", "AVX2", "FMA3", "F16C"}; !slices.Equal(c.Features, want) {
		t.Errorf("Features = %v, want %v", c.Features, want)
	}
	if h.Memory.TotalBytes != 16221044<<10 || h.Memory.AvailableBytes != 12968312<<10 || h.Memory.HugePageBytes != 2<<20 {
		t.Errorf("Memory = %+v", h.Memory)
	}
	if len(h.GPU.Devices) != 1 {
		t.Fatalf("GPU = %+v, want one device", h.GPU)
	}
	d := h.GPU.Devices[0]
	if d.SM() != "6.1" || d.SharedMemPerBlock != 48<<10 || d.Name != "NVIDIA GeForce MX250" {
		t.Errorf("GPU %+v: want MX250 SM 6.1 with 48 KiB shared memory per block", d)
	}
	// PCIe from the maximum link (gen3 x4), not the idle one (gen1).
	if want := 8e9 * 128 / 130 / 8 * 4; h.PCIeBandwidth != want {
		t.Errorf("PCIeBandwidth = %v, want %v", h.PCIeBandwidth, want)
	}
	if len(h.Warnings) != 0 {
		t.Errorf("Warnings = %v", h.Warnings)
	}
}

func TestParseEpyc(t *testing.T) {
	h := mustProfile(t, "epyc-2c")
	c := h.CPU
	if c.PhysicalCores != 2 || c.Threads != 2 || c.L2 != 512<<10 || c.L3 != 32<<20 || c.L1D != 32<<10 || c.LineSize != 64 {
		t.Errorf("CPU = %+v: want 2 cores, 2 threads, L2 512 KiB, L3 32 MiB", c)
	}
	if !c.Has("AVX2") || c.Has("AVX512F") {
		t.Errorf("Features = %v", c.Features)
	}
	if len(h.GPU.Devices) != 0 || h.GPU.Absent == "" || h.PCIeBandwidth != 0 {
		t.Errorf("GPU = %+v (PCIe %v): want none, with the reason", h.GPU, h.PCIeBandwidth)
	}
	if h.MemoryBandwidth <= 0 || h.DiskBandwidth != 0 {
		t.Errorf("bandwidths memory %v disk %v: want memory measured, disk unknown", h.MemoryBandwidth, h.DiskBandwidth)
	}
}

func TestParseH100(t *testing.T) {
	h := mustProfile(t, "h100-pcie")
	c := h.CPU
	if c.PhysicalCores != 16 || c.Threads != 32 || c.L1D != 48<<10 || c.L2 != 2<<20 || c.L3 != 38400<<10 {
		t.Errorf("CPU = %+v", c)
	}
	for _, f := range []string{"AVX512F", "AVX512BF16", "AVX512FP16", "AMXBF16"} {
		if !c.Has(f) {
			t.Errorf("no %s in %v", f, c.Features)
		}
	}
	if len(h.GPU.Devices) != 1 {
		t.Fatalf("GPU = %+v", h.GPU)
	}
	d := h.GPU.Devices[0]
	if d.PCIeMaxGen != 5 || d.PCIeMaxWidth != 16 || d.SM() != "9.0" {
		t.Errorf("GPU %+v: want SM 9.0 on gen5 x16", d)
	}
	if h.PCIeBandwidth < 60e9 || h.PCIeBandwidth > 64e9 {
		t.Errorf("PCIeBandwidth = %v, want about 63 GB/s", h.PCIeBandwidth)
	}
}

var llama8B = Model{HeadDim: 128, KVHeads: 8, Layers: 32, DTypeSize: 2}

func TestDeriveProfiles(t *testing.T) {
	for _, tc := range []struct {
		name                         string
		workers, prefetch, lookahead int
	}{
		{"i5-10210u-sm61", 4, 16, 8},            // 20 GB/s / 2 GB/s = 10 → 8
		{"epyc-2c", 2, 4, 9},                    // measured ~17 GB/s / assumed 2 GB/s: 8 or 9, clamped
		{"h100-pcie", 16, 64, MaxLookahead - 0}, // 180 / 6.5 → 8
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := mustProfile(t, tc.name)
			s := Derive(h, llama8B)
			if s.StageWorkers != h.CPU.PhysicalCores || s.StageWorkers != tc.workers {
				t.Errorf("StageWorkers = %d, want the %d physical cores", s.StageWorkers, h.CPU.PhysicalCores)
			}
			if s.PrefetchWorkers <= h.CPU.PhysicalCores || s.PrefetchWorkers != tc.prefetch {
				t.Errorf("PrefetchWorkers = %d, want %d (> %d cores)", s.PrefetchWorkers, tc.prefetch, h.CPU.PhysicalCores)
			}
			if s.BlockTokens != 64 {
				t.Errorf("BlockTokens = %d, want 64 (32 KiB K+V page of one head at head_dim 128 bf16)", s.BlockTokens)
			}
			if s.PageAlign != 4096 {
				t.Errorf("PageAlign = %d, want 4096", s.PageAlign)
			}
			if want := int64(h.Memory.AvailableBytes/2) &^ (1<<20 - 1); s.HostCapacity != want {
				t.Errorf("HostCapacity = %d, want half of %d = %d", s.HostCapacity, h.Memory.AvailableBytes, want)
			}
			if want := min(tc.lookahead, MaxLookahead); s.Lookahead != want {
				t.Errorf("Lookahead = %d, want %d", s.Lookahead, want)
			}
			if s.AttendThreads != 1 {
				t.Errorf("AttendThreads = %d", s.AttendThreads)
			}
			checkReasons(t, s)
		})
	}
}

// checkReasons: one Setting per field, in order, each with its value and
// a reason naming its inputs.
func checkReasons(t *testing.T, s Settings) {
	t.Helper()
	want := []struct {
		name   string
		value  int64
		inputs []string
	}{
		{"stage_workers", int64(s.StageWorkers), []string{"physical cores", "hardware threads"}},
		{"prefetch_workers", int64(s.PrefetchWorkers), []string{"hardware threads"}},
		{"block_tokens", int64(s.BlockTokens), []string{"head_dim", "L1D"}},
		{"page_align", int64(s.PageAlign), []string{"OS page"}},
		{"host_capacity", s.HostCapacity, []string{"available"}},
		{"lookahead", int64(s.Lookahead), []string{"memory", "disk"}},
		{"attend_threads", int64(s.AttendThreads), []string{"workers"}},
	}
	if len(s.Reasons) != len(want) {
		t.Fatalf("%d reasons, want %d: %+v", len(s.Reasons), len(want), s.Reasons)
	}
	for i, w := range want {
		r := s.Reasons[i]
		if r.Name != w.name || r.Value != w.value || r.Attribute == "" || r.Text == "" {
			t.Errorf("reason %d = %+v, want %s = %d", i, r, w.name, w.value)
		}
		for _, in := range w.inputs {
			if !strings.Contains(r.Reason, in) {
				t.Errorf("%s reason %q does not name %q", r.Name, r.Reason, in)
			}
		}
	}
}

func TestDeriveBlockTokens(t *testing.T) {
	for _, tc := range []struct {
		l1d          int64
		smem         int
		headDim, dsz int
		want         int
	}{
		{32 << 10, 0, 128, 2, 64},
		{48 << 10, 0, 128, 2, 64},
		{64 << 10, 0, 128, 2, 128},
		{32 << 10, 0, 64, 2, 128},
		{32 << 10, 0, 128, 4, 32},
		{32 << 10, 0, 256, 2, 32},
		{32 << 10, 0, 1024, 4, 16}, // nothing fits: the smallest
		{64 << 10, 48 << 10, 128, 2, 64},
		{64 << 10, 16 << 10, 128, 2, 32}, // a GPU with less shared memory than L1D binds
		{0, 0, 128, 2, 64},               // unknown L1D: 32 KiB assumed
	} {
		h := &Hardware{PageSize: 4096, CPU: CPU{PhysicalCores: 1, Threads: 1, L1D: tc.l1d, LineSize: 64}}
		if tc.smem > 0 {
			h = withGPU(h, tc.smem)
		}
		s := Derive(h, Model{HeadDim: tc.headDim, KVHeads: 1, DTypeSize: tc.dsz})
		if s.BlockTokens != tc.want {
			t.Errorf("L1D %d smem %d head_dim %d dtype %d: BlockTokens = %d, want %d (%s)",
				tc.l1d, tc.smem, tc.headDim, tc.dsz, s.BlockTokens, tc.want, s.Reasons[2].Reason)
		}
	}
}

func withGPU(h *Hardware, smem int) *Hardware {
	h.GPU.Devices = append(h.GPU.Devices, gpu.Device{Name: "test GPU", ComputeMajor: 8, SharedMemPerBlock: smem})
	return h
}

func TestDerivePageAlign(t *testing.T) {
	h := &Hardware{PageSize: 4096, CPU: CPU{PhysicalCores: 1, Threads: 1, L1D: 32 << 10, LineSize: 64}}
	// head_dim 8, f32: 2 × 128 × 8 × 4 = 8 KiB per head ≥ 4 KiB.
	if s := Derive(h, Model{HeadDim: 8, KVHeads: 1, DTypeSize: 4}); s.PageAlign != 4096 {
		t.Errorf("8 KiB page: PageAlign = %d, want 4096", s.PageAlign)
	}
	// head_dim 4, bf16: 2 × 128 × 4 × 2 = 2 KiB < 4 KiB.
	if s := Derive(h, Model{HeadDim: 4, KVHeads: 1, DTypeSize: 2}); s.PageAlign != 64 {
		t.Errorf("2 KiB page: PageAlign = %d, want the 64-byte line", s.PageAlign)
	}
	// Two KV heads make it a whole OS page.
	if s := Derive(h, Model{HeadDim: 4, KVHeads: 2, DTypeSize: 2}); s.PageAlign != 4096 {
		t.Errorf("4 KiB page: PageAlign = %d, want 4096", s.PageAlign)
	}
}

func TestDeriveLookahead(t *testing.T) {
	for _, tc := range []struct {
		mem, disk float64
		layers    int
		want      int
		reason    string
	}{
		{20e9, 2e9, 0, 8, "recorded"},
		{20e9, 5e9, 0, 4, "recorded"},
		{20e9, 6e9, 0, 4, "recorded"},
		{3e9, 6e9, 0, 1, "recorded"},
		{20e9, 2e9, 3, 3, "3 layers"},
		{0, 0, 0, 8, "assumed"},    // 20 / 2
		{10e9, 0, 0, 5, "assumed"}, // 10 / 2
	} {
		h := &Hardware{PageSize: 4096, CPU: CPU{PhysicalCores: 1, Threads: 1}, MemoryBandwidth: tc.mem, DiskBandwidth: tc.disk}
		s := Derive(h, Model{Layers: tc.layers})
		r := s.Reasons[5]
		if s.Lookahead != tc.want || r.Name != "lookahead" || !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("memory %v disk %v layers %d: Lookahead = %d (%s), want %d mentioning %q", tc.mem, tc.disk, tc.layers, s.Lookahead, r.Reason, tc.want, tc.reason)
		}
	}
}

func TestDeriveHostCapacity(t *testing.T) {
	h := &Hardware{PageSize: 4096, CPU: CPU{PhysicalCores: 1, Threads: 1},
		Memory: Memory{TotalBytes: 16 << 30, AvailableBytes: 10<<30 + 3<<20 + 5}}
	s := Derive(h, Model{})
	if want := int64(5<<30 + 1<<20); s.HostCapacity != want || s.Reasons[4].Text != `"5121MiB"` {
		t.Errorf("HostCapacity = %d %s, want %d", s.HostCapacity, s.Reasons[4].Text, want)
	}
	h.Memory.LimitBytes = 4 << 30
	if s := Derive(h, Model{}); s.HostCapacity != 2<<30 || !strings.Contains(s.Reasons[4].Reason, "cgroup") || s.Reasons[4].Text != `"2GiB"` {
		t.Errorf("with a 4 GiB cgroup limit: HostCapacity = %d %s (%s), want 2 GiB", s.HostCapacity, s.Reasons[4].Text, s.Reasons[4].Reason)
	}
	h.Memory = Memory{}
	if s := Derive(h, Model{}); s.HostCapacity != 1<<30 || !strings.Contains(s.Reasons[4].Reason, "unknown") {
		t.Errorf("memory unknown: HostCapacity = %d (%s)", s.HostCapacity, s.Reasons[4].Reason)
	}
}

func TestDeriveWorkersQuota(t *testing.T) {
	h := &Hardware{PageSize: 4096, CPU: CPU{PhysicalCores: 16, Threads: 32, Quota: 2.5}}
	s := Derive(h, Model{})
	if s.StageWorkers != 3 || !strings.Contains(s.Reasons[0].Reason, "quota") {
		t.Errorf("quota 2.5: StageWorkers = %d (%s), want 3", s.StageWorkers, s.Reasons[0].Reason)
	}
	if s.PrefetchWorkers != 64 {
		t.Errorf("PrefetchWorkers = %d, want 64", s.PrefetchWorkers)
	}
}

func readSample(t *testing.T, path string) *Sample {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := DecodeSample(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseCPUIDOnly(t *testing.T) {
	h, err := Parse(readSample(t, "testdata/cpuid-only.json"))
	if err != nil {
		t.Fatal(err)
	}
	c := h.CPU
	if c.PhysicalCores != 4 || c.Threads != 8 || c.L1D != 32<<10 || c.L3 != 32<<20 || c.LineSize != 64 || len(c.Caches) != 4 {
		t.Errorf("CPU = %+v: want cpuid's 4 cores, 8 threads and caches", c)
	}
	if h.Memory.TotalBytes != 0 || len(h.Warnings) == 0 || !strings.Contains(strings.Join(h.Warnings, "\n"), "/proc/meminfo") {
		t.Errorf("Memory %+v warnings %q: want unknown memory, said", h.Memory, h.Warnings)
	}
	s := Derive(h, llama8B)
	if s.HostCapacity != 1<<30 || s.StageWorkers != 4 {
		t.Errorf("Derive = %+v", s)
	}
}

func TestParseErrors(t *testing.T) {
	_, err := Parse(readSample(t, "testdata/bad-size.json"))
	if err == nil || !strings.Contains(err.Error(), "/sys/devices/system/cpu/cpu0/cache/index0/size") || !strings.Contains(err.Error(), "12Q") {
		t.Errorf("bad size: error %v, want one naming the file and the value", err)
	}

	base, err := ProfileSample("i5-10210u-sm61")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, contents string }{
		{sysCPU + "online", "0-x\n"},
		{sysCPU + "cpu3/topology/core_id", "three\n"},
		{sysCPU + "cpu3/topology/thread_siblings_list", "3-\n"},
		{sysCPU + "cpu1/cache/index2/level", "0\n"},
		{sysCPU + "cpu1/cache/index2/type", "Victim\n"},
		{sysCPU + "cpu0/cache/index3/size", "6144KB\n"},
		{sysCPU + "cpu0/cache/index3/coherency_line_size", "-64\n"},
		{sysCPU + "cpu0/cache/index3/shared_cpu_list", "7-0\n"},
		{sysNode + "node0/cpulist", "a\n"},
		{"/proc/meminfo", "MemTotal: lots kB\n"},
		{"/proc/meminfo", "MemFree: 5 kB\n"},
		{"/proc/meminfo", "MemTotal 5 kB\n"},
		{"/sys/fs/cgroup/cpu.max", "half\n"},
		{"/sys/fs/cgroup/memory.max", "-1\n"},
	} {
		s := *base
		s.Files = maps.Clone(base.Files)
		s.Files[tc.path] = tc.contents
		_, err := Parse(&s)
		if err == nil || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s = %q: error %v, want one naming the file", tc.path, tc.contents, err)
		}
	}
}

func TestParseSysSize(t *testing.T) {
	for in, want := range map[string]int64{"32K": 32 << 10, "6144K\n": 6 << 20, "1M": 1 << 20, "512": 512, "2G": 2 << 30} {
		if got, err := ParseSysSize(in); err != nil || got != want {
			t.Errorf("ParseSysSize(%q) = %d, %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"12Q", "", "K", "-1K", "1.5M", "99999999999999999999K"} {
		if _, err := ParseSysSize(in); err == nil {
			t.Errorf("ParseSysSize(%q) gave no error", in)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string][]int{"0-3,8": {0, 1, 2, 3, 8}, "0,4": {0, 4}, "": {}, "5\n": {5}, "2-3,0-1": {0, 1, 2, 3}} {
		if got, err := ParseCPUList(in); err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseCPUList(%q) = %v, %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"a", "1-", "3-1", "1,,2", "-1"} {
		if _, err := ParseCPUList(in); err == nil {
			t.Errorf("ParseCPUList(%q) gave no error", in)
		}
	}
}

func TestCollectHere(t *testing.T) {
	s, err := Collect(context.Background(), CollectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" && h.CPU.Threads != runtime.NumCPU() {
		t.Errorf("Threads = %d, runtime.NumCPU() = %d", h.CPU.Threads, runtime.NumCPU())
	}
	if h.CPU.PhysicalCores < 1 || h.CPU.PhysicalCores > h.CPU.Threads {
		t.Errorf("PhysicalCores = %d with %d threads", h.CPU.PhysicalCores, h.CPU.Threads)
	}
	if runtime.GOOS == "linux" && (h.Memory.TotalBytes == 0 || h.Memory.AvailableBytes == 0) {
		t.Errorf("Memory = %+v", h.Memory)
	}
	if len(h.GPU.Devices) > 0 {
		t.Logf("GPU present (%d devices): skipping the no-GPU check", len(h.GPU.Devices))
	} else if !strings.HasPrefix(h.GPU.Absent, "no GPU") {
		t.Errorf("GPU.Absent = %q, want a \"no GPU: ...\" reason", h.GPU.Absent)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Collect(ctx, CollectOptions{NoGPU: true}); err == nil {
		t.Error("Collect with a cancelled context gave no error")
	}
	d, err := Discover(context.Background())
	if err != nil || d.Source != "discovered" {
		t.Errorf("Discover = %+v, %v", d, err)
	}
}

func TestWriteText(t *testing.T) {
	h := mustProfile(t, "i5-10210u-sm61")
	var b bytes.Buffer
	if err := h.WriteText(&b, Derive(h, llama8B)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Hardware (profile i5-10210u-sm61)",
		"Intel(R) Core(TM) i5-10210U CPU @ 1.60GHz",
		"4 physical, 8 threads (2 per core), 1 socket, 1 NUMA node",
		"L1d 32 KiB ×4 (each shared by 2 threads)",
		"L3 6 MiB (shared by 8 threads)",
		"64-byte lines",
		"SSE4.2 AVX AVX2 FMA3 F16C",
		"NVIDIA GeForce MX250, SM 6.1, 2 GiB",
		"PCIe gen1 x4 (max gen3 x4), 48 KiB shared memory per block",
		"memory 20.0 GB/s, disk 2.0 GB/s, host→GPU 3.9 GB/s",
		"Derived settings",
		`stage "fetch"|"align"|"attend"|"evict" workers = 4`,
		`stage "prefetch" workers = 16`,
		"cache block_tokens = 64",
		"cache page_align = 4096",
		`tier "host" capacity = "6332MiB"`,
		`stage "prefetch" lookahead = 8`,
		`stage "attend" threads = 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("WriteText output lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	e := mustProfile(t, "epyc-2c")
	if err := e.WriteText(&b, Derive(e, llama8B)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "no GPU") {
		t.Errorf("epyc-2c output does not say there is no GPU:\n%s", b.String())
	}
}

// TestJSON: `flow hwinfo --json` marshals {"hardware": h, "settings": s}.
func TestJSON(t *testing.T) {
	h := mustProfile(t, "h100-pcie")
	s := Derive(h, llama8B)
	b, err := json.Marshal(map[string]any{"hardware": h, "settings": s})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"physical_cores":16`, `"block_tokens":64`, `"pcie_max_gen":5`, `"attribute":"cache block_tokens"`, `"available_bytes":`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Errorf("JSON lacks %s", key)
		}
	}
	var back struct {
		Hardware Hardware `json:"hardware"`
		Settings Settings `json:"settings"`
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Settings.Lookahead != s.Lookahead || back.Hardware.CPU.L3 != h.CPU.L3 {
		t.Errorf("round trip: %+v", back)
	}
}
