// Package gpu is reserved for kvflow's GPU support: CUDA through
// gorgonia.org/cu behind the build tag `cuda` (a device tier and a decode
// kernel), and GPU discovery through github.com/NVIDIA/go-nvml, which loads
// the driver library at run time and reports "no GPU" cleanly.
//
// Nothing is implemented here yet: kvflow runs on the CPU, and a pipeline
// file that asks for a GPU tier is rejected by validation (only the "host"
// tier exists).
package gpu
