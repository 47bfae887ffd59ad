package tensor

import (
	"math"
	"testing"
)

func TestDTypeNames(t *testing.T) {
	for _, c := range []struct {
		in   string
		want DType
		size int
	}{
		{"bf16", BF16, 2}, {"bfloat16", BF16, 2}, {"BF16", BF16, 2},
		{"f16", F16, 2}, {"float16", F16, 2}, {"fp16", F16, 2},
		{"f32", F32, 4}, {"float32", F32, 4}, {" fp32 ", F32, 4},
	} {
		got, err := ParseDType(c.in)
		if err != nil || got != c.want || got.Size() != c.size {
			t.Errorf("ParseDType(%q) = %v (size %d), %v; want %v", c.in, got, got.Size(), err, c.want)
		}
		if back, err := ParseDType(got.String()); err != nil || back != got {
			t.Errorf("ParseDType(%v.String()) = %v, %v", got, back, err)
		}
	}
	for _, s := range []string{"", "int8", "f64"} {
		if _, err := ParseDType(s); err == nil {
			t.Errorf("ParseDType(%q): no error", s)
		}
	}
	if DType(0).Valid() || DType(0).Size() != 0 || DType(9).String() != "DType(9)" {
		t.Error("invalid DTypes must report size 0 and a descriptive name")
	}
}

func TestBF16(t *testing.T) {
	// Every bfloat16 survives a round trip through float32.
	for b := range 1 << 16 {
		h := uint16(b)
		f := F32FromBF16(h)
		got := BF16FromF32(f)
		if f != f { // NaN: must stay NaN
			if g := F32FromBF16(got); g == g {
				t.Fatalf("NaN %#04x became %#04x", h, got)
			}
			continue
		}
		if got != h {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, f, got)
		}
	}
	bits := math.Float32frombits
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{-2, 0xc000},
		{bits(0x3f808000), 0x3f80},      // tie, even below: down
		{bits(0x3f818000), 0x3f82},      // tie, odd below: up
		{bits(0x3f808001), 0x3f81},      // just above the tie: up
		{bits(0x3f807fff), 0x3f80},      // just below the tie: down
		{math.MaxFloat32, 0x7f80},       // rounds to +Inf
		{float32(math.Inf(-1)), 0xff80}, // -Inf
		{bits(0x00000001), 0x0000},      // tiniest subnormal rounds to +0
		{bits(0x80000000), 0x8000},      // -0 keeps its sign
		{bits(0x7f800001), 0x7fc0},      // a signalling NaN whose payload would be cut stays NaN
		{bits(0xffc00000), 0xffc0},      // negative quiet NaN
		{bits(0x7f7f8000), 0x7f80},      // tie at the top rounds to Inf (odd below)
		{bits(0x3effffff), 0x3f00},      // mantissa carry into the exponent
		{bits(0x007f8000), 0x0080},      // subnormal carry into the smallest normal
	} {
		if got := BF16FromF32(c.in); got != c.want {
			t.Errorf("BF16FromF32(%#08x) = %#04x, want %#04x", math.Float32bits(c.in), got, c.want)
		}
	}
}

func TestF16(t *testing.T) {
	for b := range 1 << 16 {
		h := uint16(b)
		f := F32FromF16(h)
		got := F16FromF32(f)
		if f != f {
			if g := F32FromF16(got); g == g {
				t.Fatalf("NaN %#04x became %#04x", h, got)
			}
			continue
		}
		if got != h {
			t.Fatalf("f16 %#04x -> %v -> %#04x", h, f, got)
		}
	}
	// Random float32s round to the nearest half, ties to even: compare with
	// the neighbouring halves.
	s := uint64(1)
	for range 200000 {
		s += 0x9e3779b97f4a7c15
		r := splitmix(s)
		// Exponents around the half range, including subnormals and overflow.
		f := math.Float32frombits(uint32(r)&0x807fffff | uint32(96+r>>32%48)<<23)
		h := F16FromF32(f)
		x := float64(f)
		if math.Abs(x) >= 65520 { // beyond max half + half an ulp
			if h&0x7fff != 0x7c00 {
				t.Fatalf("F16FromF32(%g) = %#04x, want Inf", f, h)
			}
			continue
		}
		got := float64(F32FromF16(h))
		for _, n := range []uint16{h + 1, h - 1} {
			if n&0x7c00 == 0x7c00 || (h&0x7fff == 0 && n == h-1) {
				continue
			}
			other := float64(F32FromF16(n))
			dg, do := math.Abs(got-x), math.Abs(other-x)
			if do < dg || (do == dg && h&1 == 1) {
				t.Fatalf("F16FromF32(%g) = %#04x (%g), but %#04x (%g) is nearer or even", f, h, got, n, other)
			}
		}
	}
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {65520, 0x7c00}, {65519, 0x7bff},
		{float32(math.Ldexp(1, -24)), 0x0001}, {float32(math.Ldexp(1, -25)), 0x0000},
		{float32(math.Ldexp(1.5, -25)), 0x0001}, {float32(math.Ldexp(3, -25)), 0x0002},
		{float32(math.Ldexp(1, -14)), 0x0400}, {float32(math.Inf(-1)), 0xfc00},
	} {
		if got := F16FromF32(c.in); got != c.want {
			t.Errorf("F16FromF32(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
}

func TestEncodeDecode(t *testing.T) {
	src := randFloats(37, 5)
	src[3] = float32(math.Inf(1))
	for _, d := range []DType{F32, BF16, F16} {
		// Offsets 0 and 1 exercise the in-place (aligned) and the
		// byte-wise (unaligned) paths.
		for off := range 2 {
			buf := make([]byte, off+len(src)*d.Size())
			d.Encode(buf[off:], src)
			got := make([]float32, len(src))
			d.Decode(got, buf[off:])
			for i, f := range src {
				var want float32
				switch d {
				case F32:
					want = f
				case BF16:
					want = F32FromBF16(BF16FromF32(f))
				case F16:
					want = F32FromF16(F16FromF32(f))
				}
				if got[i] != want {
					t.Fatalf("%v offset %d: element %d = %v, want %v", d, off, i, got[i], want)
				}
			}
		}
	}
}

// splitmix is SplitMix64's output function: a cheap, well-mixed stream for
// test inputs.
func splitmix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// randFloats returns n uniform floats in [-1, 1), a function of seed.
func randFloats(n int, seed uint64) []float32 {
	out := make([]float32, n)
	s := splitmix(seed)
	for i := range out {
		s += 0x9e3779b97f4a7c15
		out[i] = float32(splitmix(s)>>40)*(2.0/(1<<24)) - 1
	}
	return out
}
