//go:build cuda

package gpu

// Built reports whether this binary was built with CUDA (the `cuda` tag).
const Built = true
