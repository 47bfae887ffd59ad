package gpu

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Device is one GPU as the driver reports it.
type Device struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	UUID  string `json:"uuid,omitempty"`
	// MemoryBytes is the device memory; FreeBytes what was free when asked.
	MemoryBytes uint64 `json:"memory_bytes"`
	FreeBytes   uint64 `json:"free_bytes"`
	// ComputeMajor.ComputeMinor is the CUDA compute capability (SM).
	ComputeMajor int `json:"compute_major"`
	ComputeMinor int `json:"compute_minor"`
	// PCIe link: the generation and lane width it runs at now, and the
	// most the device and its slot support (a GPU at rest may train its
	// link down; the maximum is what copies get).
	PCIeGen      int `json:"pcie_gen"`
	PCIeWidth    int `json:"pcie_width"`
	PCIeMaxGen   int `json:"pcie_max_gen"`
	PCIeMaxWidth int `json:"pcie_max_width"`
	// SharedMemPerBlock is the shared memory a thread block may use, in
	// bytes: NVML does not report it, so it comes from the compute
	// capability (SharedMemPerBlock), 0 when unknown.
	SharedMemPerBlock int `json:"shared_mem_per_block"`
}

// SM returns the compute capability as "major.minor".
func (d Device) SM() string { return fmt.Sprintf("%d.%d", d.ComputeMajor, d.ComputeMinor) }

// Info is what discovery found: the driver and its GPUs, or why there are
// none.
type Info struct {
	Driver  string   `json:"driver,omitempty"` // e.g. "580.65.06"
	CUDA    string   `json:"cuda,omitempty"`   // the driver's CUDA API version, e.g. "13.0"
	Devices []Device `json:"devices"`
	// Absent says why no GPU is usable (no driver library, no driver
	// loaded, no device); empty when Devices is not.
	Absent string `json:"absent,omitempty"`
}

// Discover asks NVML, which it loads from the driver's libnvidia-ml.so.1 at
// run time. It never fails and never exits: without the library, the
// driver or a device, Info.Absent says which.
func Discover() Info { return DiscoverWith(nvml.New()) }

// DiscoverWith is Discover over an NVML implementation (a mock in tests).
// Every NVML call is made only after Init succeeded: go-nvml's functions
// abort the process when the library was not loaded.
func DiscoverWith(lib nvml.Interface) Info {
	switch ret := lib.Init(); ret {
	case nvml.SUCCESS:
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return Info{Devices: []Device{}, Absent: "no GPU: the NVIDIA driver library (libnvidia-ml.so.1) is not installed"}
	case nvml.ERROR_DRIVER_NOT_LOADED:
		lib.Shutdown()
		return Info{Devices: []Device{}, Absent: "no GPU: the NVIDIA driver is not loaded"}
	default:
		lib.Shutdown()
		return Info{Devices: []Device{}, Absent: fmt.Sprintf("no GPU: NVML initialisation failed: %v", ret)}
	}
	defer lib.Shutdown()
	info := Info{Devices: []Device{}}
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		info.Driver = v
	}
	if v, ret := lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		info.CUDA = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		info.Absent = fmt.Sprintf("no GPU: counting devices failed: %v", ret)
		return info
	}
	for i := range n {
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		info.Devices = append(info.Devices, describe(i, dev))
	}
	if len(info.Devices) == 0 {
		info.Absent = "no GPU: the driver reports no device"
	}
	return info
}

// describe reads what NVML knows of one device; a query a device does not
// support leaves its field zero.
func describe(i int, dev nvml.Device) Device {
	d := Device{Index: i}
	if v, ret := dev.GetName(); ret == nvml.SUCCESS {
		d.Name = v
	}
	if v, ret := dev.GetUUID(); ret == nvml.SUCCESS {
		d.UUID = v
	}
	if m, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
		d.MemoryBytes, d.FreeBytes = m.Total, m.Free
	}
	if major, minor, ret := dev.GetCudaComputeCapability(); ret == nvml.SUCCESS {
		d.ComputeMajor, d.ComputeMinor = major, minor
	}
	if v, ret := dev.GetCurrPcieLinkGeneration(); ret == nvml.SUCCESS {
		d.PCIeGen = v
	}
	if v, ret := dev.GetCurrPcieLinkWidth(); ret == nvml.SUCCESS {
		d.PCIeWidth = v
	}
	if v, ret := dev.GetMaxPcieLinkGeneration(); ret == nvml.SUCCESS {
		d.PCIeMaxGen = v
	}
	if v, ret := dev.GetMaxPcieLinkWidth(); ret == nvml.SUCCESS {
		d.PCIeMaxWidth = v
	}
	d.SharedMemPerBlock = SharedMemPerBlock(d.ComputeMajor, d.ComputeMinor)
	return d
}

// SharedMemPerBlock returns the shared memory one thread block may use on
// a GPU of compute capability major.minor without opting in to more: 48
// KiB on every architecture since Kepler (the opt-in maximum is larger
// from Volta on). 0 for an unknown capability.
func SharedMemPerBlock(major, minor int) int {
	if major < 3 {
		return 0
	}
	return 48 << 10
}

// PCIeBandwidth returns the payload bandwidth of one direction of a PCIe
// link in bytes per second: the lane rate after line coding, times the
// lanes. 0 for an unknown generation or width.
func PCIeBandwidth(gen, width int) float64 {
	// Per lane: GT/s × encoding efficiency / 8 bits.
	perLane := map[int]float64{
		1: 2.5e9 * 8 / 10 / 8,
		2: 5e9 * 8 / 10 / 8,
		3: 8e9 * 128 / 130 / 8,
		4: 16e9 * 128 / 130 / 8,
		5: 32e9 * 128 / 130 / 8,
		6: 64e9 * 242 / 256 / 8,
	}[gen]
	if width <= 0 {
		return 0
	}
	return perLane * float64(width)
}
