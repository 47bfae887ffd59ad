package tensor

import (
	"errors"
	"fmt"
	"math"
)

// Tensor is a dense, row-major array of DType elements stored little-endian
// in Data.
type Tensor struct {
	Shape []int
	DType DType
	Data  []byte
}

// ErrShape is wrapped by errors about a shape that has no size.
var ErrShape = errors.New("invalid tensor shape")

// Size returns the bytes a tensor of shape and dtype occupies, or an error
// for a negative dimension, an invalid dtype or a size that overflows int64.
func Size(shape []int, dt DType) (int64, error) {
	if !dt.Valid() {
		return 0, fmt.Errorf("dtype %v: %w", dt, ErrShape)
	}
	n := int64(dt.Size())
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("dimension %d is %d: %w", i, d, ErrShape)
		}
		if d != 0 && n > math.MaxInt64/int64(d) {
			return 0, fmt.Errorf("shape %v of %v overflows: %w", shape, dt, ErrShape)
		}
		n *= int64(d)
	}
	return n, nil
}

// Elems returns the number of elements.
func (t *Tensor) Elems() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}
