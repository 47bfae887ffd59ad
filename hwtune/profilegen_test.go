package hwtune

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvflow/kvflow/gpu"
)

// Regenerate the synthetic profiles:
//
//	go test ./hwtune -run TestWriteProfiles -write-profiles
//
// Record this machine as a profile (memory bandwidth measured):
//
//	go test ./hwtune -run TestWriteProfiles -record epyc-2c -record-note "..."
var (
	writeProfiles = flag.Bool("write-profiles", false, "write the synthetic profiles to profiles/")
	recordProfile = flag.String("record", "", "record this machine as profiles/`NAME`.json")
	recordNote    = flag.String("record-note", "", "description of the recorded profile")
)

func TestWriteProfiles(t *testing.T) {
	if !*writeProfiles && *recordProfile == "" {
		t.Skip("-write-profiles or -record NAME not given")
	}
	if *writeProfiles {
		for name, s := range syntheticProfiles() {
			writeSample(t, filepath.Join("profiles", name+".json"), s)
		}
	}
	if *recordProfile != "" {
		s, err := Collect(context.Background(), CollectOptions{MeasureMemory: true})
		if err != nil {
			t.Fatal(err)
		}
		s.Description = *recordNote
		writeSample(t, filepath.Join("profiles", *recordProfile+".json"), s)
	}
}

func writeSample(t *testing.T, path string, s *Sample) {
	t.Helper()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}

// synthCache is one cache index as /sys shows it; perCore caches are
// shared by a core's threads, the others by every CPU.
type synthCache struct {
	level   int
	typ     string
	size    string
	perCore bool
}

// synthSysfs writes the /sys and /proc files Linux shows for one socket
// of cores × tpc threads, numbered as Linux numbers Intel CPUs: thread t
// of core c is CPU c + t×cores (siblings "0,4").
func synthSysfs(cores, tpc int, caches []synthCache, meminfo string) map[string]string {
	n := cores * tpc
	all := fmt.Sprintf("0-%d", n-1)
	f := map[string]string{
		sysCPU + "online":           all + "\n",
		sysNode + "node0/cpulist":   all + "\n",
		"/proc/meminfo":             meminfo,
		"/sys/fs/cgroup/cpu.max":    "max 100000\n",
		"/sys/fs/cgroup/memory.max": "max\n",
	}
	for cpu := range n {
		core := cpu % cores
		var sib []string
		for t := range tpc {
			sib = append(sib, fmt.Sprint(core+t*cores))
		}
		siblings := strings.Join(sib, ",")
		dir := fmt.Sprintf("%scpu%d/", sysCPU, cpu)
		f[dir+"topology/core_id"] = fmt.Sprintf("%d\n", core)
		f[dir+"topology/physical_package_id"] = "0\n"
		f[dir+"topology/thread_siblings_list"] = siblings + "\n"
		for i, c := range caches {
			idx := fmt.Sprintf("%scache/index%d/", dir, i)
			f[idx+"level"] = fmt.Sprintf("%d\n", c.level)
			f[idx+"type"] = c.typ + "\n"
			f[idx+"size"] = c.size + "\n"
			f[idx+"coherency_line_size"] = "64\n"
			if c.perCore {
				f[idx+"shared_cpu_list"] = siblings + "\n"
			} else {
				f[idx+"shared_cpu_list"] = all + "\n"
			}
		}
	}
	return f
}

// synthMeminfo formats /proc/meminfo as Linux does (values in kB).
func synthMeminfo(totalKB, freeKB, availKB, buffersKB, cachedKB int64) string {
	var b strings.Builder
	kb := func(name string, v int64) { fmt.Fprintf(&b, "%-16s%8d kB\n", name+":", v) }
	kb("MemTotal", totalKB)
	kb("MemFree", freeKB)
	kb("MemAvailable", availKB)
	kb("Buffers", buffersKB)
	kb("Cached", cachedKB)
	kb("SwapCached", 0)
	kb("Active", (totalKB-freeKB)/2)
	kb("Inactive", (totalKB-freeKB)/3)
	kb("SwapTotal", 0)
	kb("SwapFree", 0)
	kb("Shmem", 65536)
	fmt.Fprintf(&b, "%-16s%8d\n", "HugePages_Total:", 0)
	fmt.Fprintf(&b, "%-16s%8d\n", "HugePages_Free:", 0)
	kb("Hugepagesize", 2048)
	kb("Hugetlb", 0)
	return b.String()
}

var intelClientFeatures = strings.Fields(`ADX AESNI AVX AVX2 BMI1 BMI2 CLMUL CMOV CMPXCHG8 CX16 ERMS F16C FLUSH_L1D FMA3
FXSR FXSROPT IBPB LAHF LZCNT MD_CLEAR MMX MOVBE NX OSXSAVE POPCNT RDRAND RDSEED RDTSCP SPEC_CTRL_SSBD SSE SSE2 SSE3
SSE4 SSE42 SSSE3 STIBP SYSCALL SYSEE VMX X87 XGETBV1 XSAVE XSAVEC XSAVEOPT XSAVES`)

func syntheticProfiles() map[string]*Sample {
	i5 := &Sample{
		Description: "synthetic: the laptop kvflow started from. Intel Core i5-10210U (Comet Lake, 4 cores, 8 threads, " +
			"L1D 32K and L2 256K per core, L3 6 MB shared, 64-byte lines, AVX2/FMA3/F16C, no AVX-512), 16 GiB DDR4-2666 " +
			"dual channel (memory bandwidth assumed 20 GB/s all-core read), NVMe PCIe 3.0 x4 SSD (assumed 2 GB/s read), " +
			"NVIDIA GeForce MX250 (GP108, SM 6.1, 2 GiB, PCIe gen3 x4, idle at gen1, 48 KiB shared memory per block)",
		Arch:     "amd64",
		PageSize: 4096,
		CPUID: CPUIDSample{
			Brand: "Intel(R) Core(TM) i5-10210U CPU @ 1.60GHz", Vendor: "Intel", VendorString: "GenuineIntel",
			Family: 6, Model: 142, Stepping: 12,
			PhysicalCores: 4, ThreadsPerCore: 2, LogicalCores: 8, CacheLine: 64,
			L1I: 32 << 10, L1D: 32 << 10, L2: 256 << 10, L3: 6 << 20,
			Hz: 1600000000, BoostHz: 4200000000,
			Features: append([]string{"HLE", "MPX", "RTM", "SGX"}, intelClientFeatures...),
		},
		Files: synthSysfs(4, 2, []synthCache{
			{1, "Data", "32K", true}, {1, "Instruction", "32K", true}, {2, "Unified", "256K", true}, {3, "Unified", "6144K", false},
		}, synthMeminfo(16221044, 9812344, 12968312, 412236, 3215680)),
		GPU: gpu.Info{Driver: "535.183.01", CUDA: "12.2", Devices: []gpu.Device{{
			Index: 0, Name: "NVIDIA GeForce MX250",
			MemoryBytes: 2048 << 20, FreeBytes: 1985 << 20,
			ComputeMajor: 6, ComputeMinor: 1,
			PCIeGen: 1, PCIeWidth: 4, PCIeMaxGen: 3, PCIeMaxWidth: 4,
			SharedMemPerBlock: gpu.SharedMemPerBlock(6, 1),
		}}},
		MemoryBandwidth: 20e9,
		DiskBandwidth:   2e9,
	}
	spr := append(strings.Fields(`AMXBF16 AMXINT8 AMXTILE AVX512BF16 AVX512BITALG AVX512BW AVX512CD AVX512DQ AVX512F
AVX512FP16 AVX512IFMA AVX512VBMI AVX512VBMI2 AVX512VL AVX512VNNI AVX512VPOPCNTDQ AVXVNNI GFNI SHA VAES VPCLMULQDQ`), intelClientFeatures...)
	h100 := &Sample{
		Description: "synthetic: a 1-socket server with one H100 PCIe. Intel Xeon Gold 6426Y (Sapphire Rapids, 16 cores, " +
			"32 threads, L1D 48K and L2 2 MiB per core, L3 37.5 MB shared, AVX-512 with BF16/FP16, AMX), 256 GiB DDR5-4800 " +
			"in 8 channels (memory bandwidth assumed 180 GB/s all-core read), NVMe PCIe 4.0 SSD (assumed 6.5 GB/s read), " +
			"NVIDIA H100 PCIe 80 GB (SM 9.0, PCIe gen5 x16)",
		Arch:     "amd64",
		PageSize: 4096,
		CPUID: CPUIDSample{
			Brand: "Intel(R) Xeon(R) Gold 6426Y", Vendor: "Intel", VendorString: "GenuineIntel",
			Family: 6, Model: 143, Stepping: 8,
			PhysicalCores: 16, ThreadsPerCore: 2, LogicalCores: 32, CacheLine: 64,
			L1I: 32 << 10, L1D: 48 << 10, L2: 2 << 20, L3: 38400 << 10,
			Hz: 2500000000, BoostHz: 4100000000,
			Features: spr,
		},
		Files: synthSysfs(16, 2, []synthCache{
			{1, "Data", "48K", true}, {1, "Instruction", "32K", true}, {2, "Unified", "2048K", true}, {3, "Unified", "38400K", false},
		}, synthMeminfo(263719864, 248113232, 257290116, 1203448, 6924016)),
		GPU: gpu.Info{Driver: "550.54.15", CUDA: "12.4", Devices: []gpu.Device{{
			Index: 0, Name: "NVIDIA H100 PCIe", UUID: "GPU-00000000-0000-0000-0000-000000000000",
			MemoryBytes: 81559 << 20, FreeBytes: 81004 << 20,
			ComputeMajor: 9, ComputeMinor: 0,
			PCIeGen: 5, PCIeWidth: 16, PCIeMaxGen: 5, PCIeMaxWidth: 16,
			SharedMemPerBlock: gpu.SharedMemPerBlock(9, 0),
		}}},
		MemoryBandwidth: 180e9,
		DiskBandwidth:   6.5e9,
	}
	return map[string]*Sample{"i5-10210u-sm61": i5, "h100-pcie": h100}
}
