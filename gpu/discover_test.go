package gpu

import (
	"math"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// A failed Init must be the last NVML call: the mock's other functions are
// nil and panic if called, as go-nvml's would abort the process.
func TestDiscoverWithoutDriver(t *testing.T) {
	for _, c := range []struct {
		ret      nvml.Return
		want     string
		shutdown bool
	}{
		{nvml.ERROR_LIBRARY_NOT_FOUND, "driver library (libnvidia-ml.so.1) is not installed", false},
		{nvml.ERROR_DRIVER_NOT_LOADED, "driver is not loaded", true},
		{nvml.ERROR_UNKNOWN, "initialisation failed", true},
	} {
		shut := false
		lib := &mock.Interface{
			InitFunc:     func() nvml.Return { return c.ret },
			ShutdownFunc: func() nvml.Return { shut = true; return nvml.SUCCESS },
		}
		info := DiscoverWith(lib)
		if len(info.Devices) != 0 || !strings.Contains(info.Absent, c.want) || !strings.HasPrefix(info.Absent, "no GPU") {
			t.Errorf("Init %v: %+v, want no devices and %q", c.ret, info, c.want)
		}
		if shut != c.shutdown {
			t.Errorf("Init %v: Shutdown called %v, want %v (the library is loaded only when Init got past loading it)", c.ret, shut, c.shutdown)
		}
	}
}

// On a machine without an NVIDIA driver (as in CI), real discovery reports
// the absence instead of failing or exiting.
func TestDiscoverHere(t *testing.T) {
	info := Discover()
	if len(info.Devices) > 0 {
		for _, d := range info.Devices {
			t.Logf("GPU %d: %s, SM %s, %.1f GiB, PCIe gen%d x%d (max gen%d x%d); driver %s, CUDA %s",
				d.Index, d.Name, d.SM(), float64(d.MemoryBytes)/(1<<30), d.PCIeGen, d.PCIeWidth, d.PCIeMaxGen, d.PCIeMaxWidth, info.Driver, info.CUDA)
			if d.Name == "" || d.MemoryBytes == 0 || d.ComputeMajor == 0 {
				t.Errorf("device %d incompletely described: %+v", d.Index, d)
			}
		}
		return
	}
	if !strings.HasPrefix(info.Absent, "no GPU") {
		t.Fatalf("no devices and no reason: %+v", info)
	}
}

func TestDiscoverDevices(t *testing.T) {
	h100 := &mock.Device{
		GetNameFunc:                   func() (string, nvml.Return) { return "NVIDIA H100 PCIe", nvml.SUCCESS },
		GetUUIDFunc:                   func() (string, nvml.Return) { return "GPU-1", nvml.SUCCESS },
		GetMemoryInfoFunc:             func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: 80 << 30, Free: 79 << 30}, nvml.SUCCESS },
		GetCudaComputeCapabilityFunc:  func() (int, int, nvml.Return) { return 9, 0, nvml.SUCCESS },
		GetCurrPcieLinkGenerationFunc: func() (int, nvml.Return) { return 1, nvml.SUCCESS }, // idle link
		GetCurrPcieLinkWidthFunc:      func() (int, nvml.Return) { return 16, nvml.SUCCESS },
		GetMaxPcieLinkGenerationFunc:  func() (int, nvml.Return) { return 5, nvml.SUCCESS },
		GetMaxPcieLinkWidthFunc:       func() (int, nvml.Return) { return 16, nvml.SUCCESS },
	}
	unsupported := func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	mx250 := &mock.Device{
		GetNameFunc:                   func() (string, nvml.Return) { return "NVIDIA GeForce MX250", nvml.SUCCESS },
		GetUUIDFunc:                   func() (string, nvml.Return) { return "", nvml.ERROR_NOT_SUPPORTED },
		GetMemoryInfoFunc:             func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: 2 << 30, Free: 2 << 30}, nvml.SUCCESS },
		GetCudaComputeCapabilityFunc:  func() (int, int, nvml.Return) { return 6, 1, nvml.SUCCESS },
		GetCurrPcieLinkGenerationFunc: unsupported,
		GetCurrPcieLinkWidthFunc:      unsupported,
		GetMaxPcieLinkGenerationFunc:  func() (int, nvml.Return) { return 3, nvml.SUCCESS },
		GetMaxPcieLinkWidthFunc:       func() (int, nvml.Return) { return 4, nvml.SUCCESS },
	}
	devs := []nvml.Device{h100, mx250}
	lib := &mock.Interface{
		InitFunc:                       func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "580.65.06", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 13000, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc:     func(i int) (nvml.Device, nvml.Return) { return devs[i], nvml.SUCCESS },
	}
	info := DiscoverWith(lib)
	if info.Absent != "" || info.Driver != "580.65.06" || info.CUDA != "13.0" || len(info.Devices) != 2 {
		t.Fatalf("%+v", info)
	}
	a, b := info.Devices[0], info.Devices[1]
	if a.Name != "NVIDIA H100 PCIe" || a.MemoryBytes != 80<<30 || a.SM() != "9.0" || a.PCIeGen != 1 || a.PCIeMaxGen != 5 || a.PCIeMaxWidth != 16 || a.SharedMemPerBlock != 48<<10 {
		t.Errorf("H100: %+v", a)
	}
	if b.Index != 1 || b.UUID != "" || b.SM() != "6.1" || b.PCIeGen != 0 || b.PCIeWidth != 0 || b.PCIeMaxGen != 3 || b.PCIeMaxWidth != 4 || b.SharedMemPerBlock != 48<<10 {
		t.Errorf("MX250 (unsupported queries left zero): %+v", b)
	}
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.SUCCESS }
	if info := DiscoverWith(lib); !strings.Contains(info.Absent, "no device") {
		t.Errorf("no devices: %+v", info)
	}
}

func TestPCIeBandwidth(t *testing.T) {
	for _, c := range []struct {
		gen, width int
		want       float64 // GB/s
	}{{3, 16, 15.75}, {4, 16, 31.5}, {5, 16, 63.02}, {3, 4, 3.94}, {1, 1, 0.25}, {7, 16, 0}, {4, 0, 0}} {
		if got := PCIeBandwidth(c.gen, c.width) / 1e9; math.Abs(got-c.want) > 0.01 {
			t.Errorf("gen %d x%d: %.3f GB/s, want %.2f", c.gen, c.width, got, c.want)
		}
	}
}
