// Package hwtune is reserved for hardware discovery (CPU model, cores, cache
// sizes, SIMD features, memory, GPUs) and the settings derived from it, with
// named profiles for planning on other machines.
//
// Nothing is implemented here yet: stages default to runtime.GOMAXPROCS(0)
// workers, and pipeline files set everything else explicitly.
package hwtune
