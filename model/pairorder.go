package model

// Pair order is the order in which the vector decode routine keeps a decode
// token's q and acc: each 16 channels as the 8 even ones, then the 8 odd
// ones. It is the order in which one 32-byte load of 16 bf16 values becomes
// two vectors of float32 (a shift gives the even channels, a mask the odd
// ones), so that the routine's multiply-adds need no shuffles; q is put in
// pair order once per decode token, and acc back in channel order once its
// pages are done.

// pairSlot is the floats a query head's prepared q takes: the largest
// head_dim the vector decode routine takes.
const pairSlot = 256

// decodeQLen is the length of the prepared q (kernels.decodeQ) of nh query
// heads: a slot per head, and room to start on a 64-byte boundary.
func decodeQLen(nh int) int { return nh*pairSlot + 16 }

// toPairOrder sets dst to scale*src in pair order; len(src) a multiple of 16,
// len(dst) >= len(src).
func toPairOrder(dst, src []float32, scale float32) {
	for c := 0; c+16 <= len(src); c += 16 {
		x, y := src[c:c+16], dst[c:c+16]
		for j := range 8 {
			y[j] = scale * x[2*j]
			y[8+j] = scale * x[2*j+1]
		}
	}
}

// fromPairOrder puts x, in pair order, back in channel order; len(x) a
// multiple of 16.
func fromPairOrder(x []float32) {
	var t [16]float32
	for c := 0; c+16 <= len(x); c += 16 {
		copy(t[:], x[c:c+16])
		for j := range 8 {
			x[c+2*j] = t[j]
			x[c+2*j+1] = t[8+j]
		}
	}
}
