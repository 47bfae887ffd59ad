// Command copyhash generates storage/copyhash_amd64.s: XXH3-64's bulk
// accumulation fused with a copy, so that a verified read of a page touches
// each byte once. Run it with go generate in storage/.
package main

import (
	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// XXH3 geometry: a stripe is 64 bytes, consumed against the secret at a
// stride of 8 bytes; a block is 16 stripes, after which the accumulators
// are scrambled with the secret's last 64 bytes (offset 128 of 192).
const (
	stripe          = 64
	stripesPerBlock = 16
	block           = stripe * stripesPerBlock
	scrambleOffset  = 128
)

func main() {
	prime := GLOBL("copyhash_prime32_1", RODATA|NOPTR)
	DATA(0, U64(2654435761))

	blocks(prime)
	stripes()
	Generate()
}

// accumulate copies one stripe from src to dst at off and folds it into the
// accumulators acc, with the secret at secret+soff.
func accumulate(acc [2]VecVirtual, dst, src, secret Register, off, soff int) {
	var d [2]VecVirtual
	for i := range d {
		d[i] = YMM()
		VMOVDQU(Mem{Base: src, Disp: off + 32*i}, d[i])
	}
	for i := range d {
		VMOVDQU(d[i], Mem{Base: dst, Disp: off + 32*i})
	}
	for i := range d {
		k := YMM()
		VPXOR(Mem{Base: secret, Disp: soff + 32*i}, d[i], k)
		h := YMM()
		VPSHUFD(U8(0x31), k, h) // each lane's high half into its low half
		VPMULUDQ(k, h, k)       // lo32 × hi32 per 64-bit lane
		VPSHUFD(U8(0x4e), d[i], d[i])
		VPADDQ(acc[i], k, acc[i])
		VPADDQ(acc[i], d[i], acc[i]) // the neighbour lane's input (lane i^1)
	}
}

func loadAcc(p Register) [2]VecVirtual {
	acc := [2]VecVirtual{YMM(), YMM()}
	VMOVDQU(Mem{Base: p}, acc[0])
	VMOVDQU(Mem{Base: p, Disp: 32}, acc[1])
	return acc
}

func storeAcc(p Register, acc [2]VecVirtual) {
	VMOVDQU(acc[0], Mem{Base: p})
	VMOVDQU(acc[1], Mem{Base: p, Disp: 32})
}

func blocks(primeConst Mem) {
	TEXT("copyAccumBlocksAVX2", NOSPLIT, "func(acc *[8]uint64, dst, src, secret *byte, n uint64)")
	Doc("copyAccumBlocksAVX2 copies n blocks of 1024 bytes from src to dst and",
		"folds them into acc as XXH3's long hash does, scrambling after each block.")
	accp := Load(Param("acc"), GP64())
	dst := Load(Param("dst"), GP64())
	src := Load(Param("src"), GP64())
	secret := Load(Param("secret"), GP64())
	n := Load(Param("n"), GP64())
	acc := loadAcc(accp)
	prime := YMM()
	VPBROADCASTQ(primeConst, prime)

	Label("block")
	CMPQ(n, Imm(0))
	JE(LabelRef("done"))
	for s := range stripesPerBlock {
		PREFETCHT0(Mem{Base: src, Disp: s*stripe + block})
		accumulate(acc, dst, src, secret, s*stripe, 8*s)
	}
	// Scramble: acc ^= acc >> 47; acc ^= secret[128:]; acc *= PRIME32_1.
	for i := range acc {
		t := YMM()
		VPSRLQ(U8(47), acc[i], t)
		VPXOR(acc[i], t, acc[i])
		VPXOR(Mem{Base: secret, Disp: scrambleOffset + 32*i}, acc[i], acc[i])
		hi := YMM()
		VPSRLQ(U8(32), acc[i], hi)
		VPMULUDQ(prime, acc[i], acc[i])
		VPMULUDQ(prime, hi, hi)
		VPSLLQ(U8(32), hi, hi)
		VPADDQ(hi, acc[i], acc[i])
	}
	ADDQ(U32(block), src)
	ADDQ(U32(block), dst)
	DECQ(n)
	JMP(LabelRef("block"))

	Label("done")
	storeAcc(accp, acc)
	VZEROUPPER()
	RET()
}

func stripes() {
	TEXT("copyAccumStripesAVX2", NOSPLIT, "func(acc *[8]uint64, dst, src, secret *byte, n uint64)")
	Doc("copyAccumStripesAVX2 copies n stripes of 64 bytes from src to dst and",
		"folds them into acc, the secret advancing 8 bytes a stripe; n < 16.")
	accp := Load(Param("acc"), GP64())
	dst := Load(Param("dst"), GP64())
	src := Load(Param("src"), GP64())
	secret := Load(Param("secret"), GP64())
	n := Load(Param("n"), GP64())
	acc := loadAcc(accp)

	Label("stripe")
	CMPQ(n, Imm(0))
	JE(LabelRef("end"))
	accumulate(acc, dst, src, secret, 0, 0)
	ADDQ(U32(stripe), src)
	ADDQ(U32(stripe), dst)
	ADDQ(U32(8), secret)
	DECQ(n)
	JMP(LabelRef("stripe"))

	Label("end")
	storeAcc(accp, acc)
	VZEROUPPER()
	RET()
}
