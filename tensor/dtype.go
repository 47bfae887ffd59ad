package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
)

// DType is the element type of KV pages and tensors.
type DType uint8

// The supported element types. The zero value is deliberately invalid so that
// an unset DType is caught rather than silently meaning one of them.
const (
	BF16 DType = iota + 1
	F16
	F32
)

// Size returns the number of bytes per element, or 0 for an invalid DType.
func (d DType) Size() int {
	switch d {
	case BF16, F16:
		return 2
	case F32:
		return 4
	}
	return 0
}

// String returns "bf16", "f16" or "f32".
func (d DType) String() string {
	switch d {
	case BF16:
		return "bf16"
	case F16:
		return "f16"
	case F32:
		return "f32"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Valid reports whether d is one of BF16, F16 and F32.
func (d DType) Valid() bool { return d.Size() != 0 }

// ParseDType parses a dtype name: "bf16", "bfloat16", "f16", "float16",
// "fp16", "f32", "float32" or "fp32" (case-insensitive).
func ParseDType(s string) (DType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "bf16", "bfloat16":
		return BF16, nil
	case "f16", "float16", "fp16", "half":
		return F16, nil
	case "f32", "float32", "fp32", "float":
		return F32, nil
	}
	return 0, fmt.Errorf("unknown dtype %q (want bf16, f16 or f32)", s)
}

// Encode writes src into dst as little-endian elements of type d.
// dst must hold at least len(src)*d.Size() bytes.
func (d DType) Encode(dst []byte, src []float32) {
	switch d {
	case F32:
		dst = dst[:4*len(src)]
		for i, f := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
		}
	case BF16:
		dst = dst[:2*len(src)]
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], BF16FromF32(f))
		}
	case F16:
		dst = dst[:2*len(src)]
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], F16FromF32(f))
		}
	default:
		panic("model: Encode with invalid " + d.String())
	}
}

// Decode reads len(dst) little-endian elements of type d from src into dst.
// src must hold at least len(dst)*d.Size() bytes.
func (d DType) Decode(dst []float32, src []byte) {
	switch d {
	case F32:
		if v, ok := ViewF32(src, len(dst)); ok {
			copy(dst, v)
			return
		}
		src = src[:4*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case BF16:
		if u, ok := ViewU16(src, len(dst)); ok {
			u = u[:len(dst)]
			for i := range dst {
				dst[i] = math.Float32frombits(uint32(u[i]) << 16)
			}
			return
		}
		src = src[:2*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
		}
	case F16:
		if u, ok := ViewU16(src, len(dst)); ok {
			u = u[:len(dst)]
			for i := range dst {
				dst[i] = F32FromF16(u[i])
			}
			return
		}
		src = src[:2*len(dst)]
		for i := range dst {
			dst[i] = F32FromF16(binary.LittleEndian.Uint16(src[2*i:]))
		}
	default:
		panic("model: Decode with invalid " + d.String())
	}
}

// BF16FromF32 converts f to bfloat16, rounding to nearest with ties to even
// (as PyTorch does). NaNs stay NaN (quietened, sign kept); values beyond the
// bfloat16 range round to ±Inf.
func BF16FromF32(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		// Truncating a NaN's mantissa could turn it into Inf; set the
		// quiet bit so the result stays a NaN.
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F32FromBF16 converts a bfloat16 to float32; it is exact.
func F32FromBF16(b uint16) float32 {
	return math.Float32frombits(uint32(b) << 16)
}

// F16FromF32 converts f to IEEE 754 half precision, rounding to nearest with
// ties to even. Values beyond the half range become ±Inf, tiny values become
// subnormals or ±0, and NaNs stay NaN.
func F16FromF32(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7e00 | uint16(mant>>13)
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal half (or zero): the value in units of 2^-24 is
		// (mant|implicit) >> (14-e), rounded to nearest even.
		if e < -10 {
			return sign
		}
		m := mant | 0x800000
		shift := uint32(14 - e)
		r := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++ // may carry into the smallest normal, which is correct
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // a carry into the exponent is correct, up to Inf
	}
	return sign | uint16(r)
}

// F32FromF16 converts an IEEE 754 half to float32; it is exact.
func F32FromF16(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case 0:
		f := float32(mant) * (1.0 / (1 << 24)) // subnormal or zero, exact
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}
