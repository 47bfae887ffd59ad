// Command membw generates internal/membw/membw_amd64.s: a read of a buffer
// with AVX2 loads, as fast as the memory system delivers. Run it with go
// generate in internal/membw/.
package main

import (
	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// block is the bytes read per iteration of the main loop: 8 loads of 32
// bytes into 4 accumulators.
const block = 256

func main() {
	TEXT("sumAVX2", NOSPLIT, "func(p *byte, n int) uint64")
	Doc("sumAVX2 returns the sum (mod 2^64) of the n/8 little-endian uint64",
		"words at p; n is a multiple of 32.")
	p := Load(Param("p"), GP64())
	n := Load(Param("n"), GP64())
	acc := make([]VecVirtual, 4)
	for i := range acc {
		acc[i] = YMM()
		VPXOR(acc[i], acc[i], acc[i])
	}

	Label("block")
	CMPQ(n, U32(block))
	JL(LabelRef("chunk"))
	for i := range block / 32 {
		VPADDQ(Mem{Base: p, Disp: 32 * i}, acc[i%4], acc[i%4])
	}
	ADDQ(U32(block), p)
	SUBQ(U32(block), n)
	JMP(LabelRef("block"))

	Label("chunk")
	CMPQ(n, U8(32))
	JL(LabelRef("done"))
	VPADDQ(Mem{Base: p}, acc[0], acc[0])
	ADDQ(U8(32), p)
	SUBQ(U8(32), n)
	JMP(LabelRef("chunk"))

	Label("done")
	VPADDQ(acc[1], acc[0], acc[0])
	VPADDQ(acc[3], acc[2], acc[2])
	VPADDQ(acc[2], acc[0], acc[0])
	hi := XMM()
	VEXTRACTI128(U8(1), acc[0], hi)
	s := XMM()
	VPADDQ(hi, acc[0].AsX(), s)
	t := XMM()
	VPSHUFD(U8(0x4e), s, t) // swap the two qwords
	VPADDQ(t, s, s)
	r := GP64()
	VMOVQ(s, r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()
	Generate()
}
