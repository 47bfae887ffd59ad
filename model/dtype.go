package model

import "github.com/kvflow/kvflow/tensor"

// DType is the element type of KV pages and tensors; see package tensor.
type DType = tensor.DType

// The element types of KV pages.
const (
	BF16 = tensor.BF16
	F16  = tensor.F16
	F32  = tensor.F32
)

// ParseDType parses a dtype name such as "bf16" or "float32".
func ParseDType(s string) (DType, error) { return tensor.ParseDType(s) }
