// Package gpu is kvflow's GPU support.
//
// Discovery (Discover) asks NVIDIA's NVML through github.com/NVIDIA/go-nvml,
// which loads the driver's libnvidia-ml.so.1 at run time: a machine without
// the driver gets Info.Absent ("no GPU: ...") rather than an error or an
// exit, so every build of kvflow includes it (it needs cgo, not CUDA).
//
// The CUDA side (a device memory tier and a decode attention kernel, through
// gorgonia.org/cu) is behind the build tag `cuda`: cu initialises the driver
// in its package init and exits the process when there is no GPU, so the
// default flow binary must not import it.
package gpu
