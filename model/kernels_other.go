//go:build !amd64

package model

// vecKernels is nil: there are no vector kernels off amd64.
var vecKernels *kernels
