// Package hwtune discovers the hardware kvflow runs on and derives default
// pipeline settings from it, each with the reason for its value.
//
// Discovery is two steps so that the second can be tested, and profiles
// defined, without the hardware:
//
//   - Collect records a Sample: what github.com/klauspost/cpuid/v2 reports
//     (brand, cores, threads, cache sizes and line, feature names), the
//     /sys and /proc files that describe CPU topology, caches, NUMA
//     nodes, memory and the cgroup's CPU quota and memory limit (by path,
//     as read; missing files are left out), gpu.Discover's answer ("no
//     GPU: ..." on a machine without one), and optionally the host memory
//     read bandwidth (internal/membw).
//   - Parse turns a Sample into Hardware, purely. /sys wins over cpuid
//     where both answer; malformed files are errors naming the path; a
//     missing /proc/meminfo leaves memory unknown with a warning (Derive
//     then says what it assumed).
//
// Discover is the two together. Derive(h, Model) gives Settings: stage
// workers (physical cores), prefetch workers (2 × hardware threads, in
// [4, 64]), the page size in tokens (the largest of 16/32/64/128 whose K+V
// page of one KV head fits in L1D and a GPU's shared memory per block),
// page alignment (the OS page, or the cache line for pages smaller than
// one), the host tier's capacity (half the available memory) and prefetch
// lookahead (ceil of memory over disk bandwidth, in [1, 8]), and attend
// threads (1). Each comes with a Setting naming the HCL attribute it is a
// default for and why; explicit settings in a pipeline file win.
//
// Profiles are embedded Samples (profiles/*.json) for planning on other
// hardware: "i5-10210u-sm61" (the laptop the project started from: Core
// i5-10210U, 4 cores and 8 threads, 6 MB L3, with a GeForce MX250, SM 6.1,
// 48 KiB shared memory per block; synthetic), "epyc-2c" (the 2-vCPU
// development VM, recorded) and "h100-pcie" (a 16-core Xeon with one H100
// PCIe, synthetic). profilegen_test.go regenerates the synthetic ones and
// records new ones. Hardware.WriteText prints what was found and what was
// derived (`flow hwinfo`); Hardware and Settings marshal to snake_case
// JSON (`flow hwinfo --json`).
package hwtune
