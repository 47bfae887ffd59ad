//go:build !cuda

package gpu

// Built reports whether this binary was built with CUDA (the `cuda` tag).
// Without it there is no device tier and no GPU kernel, only discovery.
const Built = false
