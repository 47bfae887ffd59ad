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
	acc := zeroAccs()

	Label("block")
	CMPQ(n, U32(block))
	JL(LabelRef("chunk"))
	addBlock(p, acc)
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
	storeSum(acc)
	VZEROUPPER()
	RET()

	busy()
	Generate()
}

// busy generates sumBusyAVX2: sumAVX2's loop over 256-byte blocks with,
// after each block, rounds steps of two chains of dependent FMAs (a fixed
// number of cycles per step: the FMA latency), and a PREFETCHT0 of each
// line 2 KiB ahead: a stand-in for a kernel that computes a chosen time
// per byte it reads, with the same kind of software prefetch.
func busy() {
	TEXT("sumBusyAVX2", NOSPLIT, "func(p *byte, n, rounds int) uint64")
	Doc("sumBusyAVX2 returns what sumAVX2 returns for n a multiple of 256, after",
		"rounds steps of dependent multiply-adds per 256 bytes.")
	p := Load(Param("p"), GP64())
	n := Load(Param("n"), GP64())
	rounds := Load(Param("rounds"), GP64())
	acc := zeroAccs()
	// c += 0*0 keeps c's value (no overflow, no subnormals) while each
	// step still waits on the last.
	zero, c0, c1 := YMM(), YMM(), YMM()
	VXORPS(zero, zero, zero)
	VXORPS(c0, c0, c0)
	VXORPS(c1, c1, c1)

	Label("busyblock")
	CMPQ(n, U32(block))
	JL(LabelRef("busydone"))
	for i := range block / 64 {
		PREFETCHT0(Mem{Base: p, Disp: 2048 + 64*i})
	}
	addBlock(p, acc)
	r := GP64()
	MOVQ(rounds, r)
	Label("busyround")
	TESTQ(r, r)
	JZ(LabelRef("busynext"))
	VFMADD231PS(zero, zero, c0)
	VFMADD231PS(zero, zero, c1)
	DECQ(r)
	JMP(LabelRef("busyround"))
	Label("busynext")
	ADDQ(U32(block), p)
	SUBQ(U32(block), n)
	JMP(LabelRef("busyblock"))

	Label("busydone")
	storeSum(acc)
	VZEROUPPER()
	RET()
}

// storeSum returns the sum of the qwords of the 4 accumulators.
func storeSum(acc []VecVirtual) {
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
}

// zeroAccs returns 4 zeroed YMM accumulators.
func zeroAccs() []VecVirtual {
	acc := make([]VecVirtual, 4)
	for i := range acc {
		acc[i] = YMM()
		VPXOR(acc[i], acc[i], acc[i])
	}
	return acc
}

// addBlock adds the block bytes at p into the accumulators, 32 at a time.
func addBlock(p Register, acc []VecVirtual) {
	for i := range block / 32 {
		VPADDQ(Mem{Base: p, Disp: 32 * i}, acc[i%4], acc[i%4])
	}
}
