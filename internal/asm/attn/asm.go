// Command attn generates model/kernels_amd64.s: the AVX2+FMA inner loops of
// paged attention (query-key scores, probability-weighted sums of value rows,
// and a vector exp). Run it with go generate in model/.
//
// Every routine works on one block of query heads (4, 2 or 1) over one page;
// the Go wrappers in model/kernels_amd64.go split the heads into blocks and
// send shapes the routines do not take (d not a multiple of 8, n or d zero)
// to the pure Go kernels.
package main

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/gotypes"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// scoresTiled generates scoresTiledBF16H<heads>(out, q, k, n, d, ostride,
// scale, pfA, pfB): for h < heads and t < n rounded up to whole tiles,
// out[h*ostride+t] = scale * Σ_c q[h*d+c]*K(t,c), with the bf16 keys at k in
// tiles of 16 tokens, each tile's d channels in turn with its 16 tokens'
// values together (model.KeyTile): the separate loops' scores (prefill,
// and decode shapes without the one-call routine) over such pages. The
// lanes are tokens, as in tiledRows, so no score needs a horizontal sum:
// one 32-byte load is a channel of 16 tokens, a shift gives the even
// tokens and a mask the odd ones, and each head's q value is broadcast.
// Two channels per iteration, 2*heads accumulators. With each 64 bytes of
// keys it asks for a line of pfA and of pfB (as many bytes as the keys').
// n > 0, d > 0 and even.
func scoresTiled(heads int) {
	name := fmt.Sprintf("scoresTiledBF16H%d", heads)
	TEXT(name, NOSPLIT, "func(out, q *float32, k *byte, n, d, ostride int, scale float32, pfA, pfB *byte)")
	Doc(fmt.Sprintf("%s sets out[h*ostride+t] = scale * Σ_c q[h*d+c]*K(t,c) for h < %d and", name, heads),
		"t < n rounded up to whole tiles, the keys at k in tiles of 16 tokens",
		"([d][16] bf16 each); n > 0, d > 0 and even. It prefetches as many",
		"bytes at pfA and pfB as it reads at k.")
	kt := Load(Param("k"), GP64())
	n := Load(Param("n"), GP64())
	op := Load(Param("out"), GP64())
	pfA := Load(Param("pfA"), GP64())
	pfB := Load(Param("pfB"), GP64())
	d4 := Load(Param("d"), GP64())
	SHLQ(U8(2), d4) // 4*d: the loop index runs over c*4, the keys at 8 times it
	qh := make([]Register, heads)
	qh[0] = Load(Param("q"), GP64())
	for h := 1; h < heads; h++ {
		qh[h] = GP64()
		LEAQ(Mem{Base: qh[h-1], Index: d4, Scale: 1}, qh[h])
	}
	os4 := Load(Param("ostride"), GP64())
	SHLQ(U8(2), os4)
	scale := YMM()
	VBROADCASTSS(addr(Param("scale")), scale)
	Label("tiles")
	acc := tileChans(kt, d4, heads, func(h int, i Register, u int) Mem {
		return Mem{Base: qh[h], Index: i, Scale: 1, Disp: 4 * u}
	}, func() {
		PREFETCHT0(Mem{Base: pfA})
		PREFETCHT0(Mem{Base: pfB})
		ADDQ(U8(64), pfA)
		ADDQ(U8(64), pfB)
	})

	// Lane j of acc[h][0] is token 2j of the tile (lanes 4-7: tokens
	// 8-14), of acc[h][1] token 2j+1: interleaved, then the 128-bit halves
	// regrouped, they are tokens 0-7 and 8-15 in order.
	oh := GP64()
	MOVQ(op, oh)
	for h := range heads {
		if h > 0 {
			ADDQ(os4, oh)
		}
		lo, hi := YMM(), YMM()
		VUNPCKLPS(acc[h][1], acc[h][0], lo) // tokens 0-3 | 8-11
		VUNPCKHPS(acc[h][1], acc[h][0], hi) // tokens 4-7 | 12-15
		a, b := YMM(), YMM()
		VPERM2F128(U8(0x20), hi, lo, a)
		VPERM2F128(U8(0x31), hi, lo, b)
		VMULPS(scale, a, a)
		VMULPS(scale, b, b)
		VMOVUPS(a, Mem{Base: oh})
		VMOVUPS(b, Mem{Base: oh, Disp: 32})
	}
	ADDQ(U8(64), op)
	// Next tile: 16 tokens of d channels, 32*d bytes.
	LEAQ(Mem{Base: kt, Index: d4, Scale: 8}, kt)
	SUBQ(U8(16), n)
	JG(LabelRef("tiles"))
	VZEROUPPER()
	RET()
}

func main() {
	consts := expConstants()
	pairMask = GLOBL("attn_pair_mask", RODATA|NOPTR)
	for i := range 8 {
		DATA(4*i, U32(0xffff0000))
	}
	for _, bf16 := range []bool{true, false} {
		for _, c := range []struct{ heads, rows int }{{4, 2}, {2, 2}, {1, 4}} {
			scores(bf16, c.heads, c.rows)
		}
		if bf16 {
			for _, c := range []struct{ heads, rows int }{{4, 3}, {2, 4}, {1, 6}} {
				scoresPair(c.heads, c.rows)
			}
			for _, heads := range []int{4, 2, 1} {
				scoresTiled(heads)
			}
		}
		for _, c := range []struct {
			heads  int
			widths []int
		}{{4, []int{3, 2, 1}}, {2, []int{4, 2, 1}}, {1, []int{8, 4, 2, 1}}} {
			accum(bf16, c.heads, c.widths)
		}
	}
	expSum(consts)
	decodePage(consts, false)
	decodePage(consts, true)
	toPairs()
	axpy()
	maxF32()
	for _, b := range [][2]int{{3, 4}, {3, 3}, {3, 2}, {3, 1}, {8, 1}, {1, 1}} {
		linearBlock(b[0], b[1])
	}
	fmaPeak()
	Generate()
}

// toPairs generates toPairsAVX2(dst, src, n, scale): dst = scale*src in
// pair order (see pairQ), n a positive multiple of 16. It prepares a decode
// token's q once per item of work, which in Go took 1% of a decode call.
func toPairs() {
	TEXT("toPairsAVX2", NOSPLIT, "func(dst, src *float32, n int, scale float32)")
	Doc("toPairsAVX2 sets dst[:n] to scale*src[:n] in pair order (each 16 floats",
		"as the 8 even ones, then the 8 odd ones); n a positive multiple of 16.")
	dst := Load(Param("dst"), GP64())
	src := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	SHRQ(U8(4), n)
	sc := YMM()
	VBROADCASTSS(addr(Param("scale")), sc)
	Label("pairs")
	e, o := evenOdd(Mem{Base: src})
	VMULPS(sc, e, e)
	VMULPS(sc, o, o)
	VMOVUPS(e, Mem{Base: dst})
	VMOVUPS(o, Mem{Base: dst, Disp: 32})
	ADDQ(U8(64), src)
	ADDQ(U8(64), dst)
	DECQ(n)
	JNZ(LabelRef("pairs"))
	VZEROUPPER()
	RET()
}

// evenOdd loads the 16 floats at m and returns the 8 even ones and the 8
// odd ones, in order: pair order.
func evenOdd(m Mem) (e, o VecVirtual) {
	a, b := YMM(), YMM()
	e, o = YMM(), YMM()
	VMOVUPS(m, a)
	VMOVUPS(m.Offset(32), b)
	VSHUFPS(U8(0x88), b, a, e)
	VSHUFPS(U8(0xdd), b, a, o)
	VPERMPD(U8(0xd8), e, e)
	VPERMPD(U8(0xd8), o, o)
	return e, o
}

// axpy generates axpyAVX2(y, x, n, a): y += a*x with one rounding (FMA),
// n a positive multiple of 8: the merge of a decode token's partial
// results, which in Go took 2-4% of a short context's call.
func axpy() {
	TEXT("axpyAVX2", NOSPLIT, "func(y, x *float32, n int, a float32)")
	Doc("axpyAVX2 sets y[i] += a*x[i] (one rounding) for i < n, a positive multiple of 8.")
	y := Load(Param("y"), GP64())
	x := Load(Param("x"), GP64())
	n := Load(Param("n"), GP64())
	av := YMM()
	VBROADCASTSS(addr(Param("a")), av)
	// vecs YMMs at a time while n allows, then on to next.
	loop := func(top, next string, vecs int) {
		Label(top)
		CMPQ(n, U8(8*vecs))
		JL(LabelRef(next))
		for j := range vecs {
			t := YMM()
			VMOVUPS(Mem{Base: y, Disp: 32 * j}, t)
			VFMADD231PS(Mem{Base: x, Disp: 32 * j}, av, t)
			VMOVUPS(t, Mem{Base: y, Disp: 32 * j})
		}
		ADDQ(U8(32*vecs), x)
		ADDQ(U8(32*vecs), y)
		SUBQ(U8(8*vecs), n)
		JMP(LabelRef(top))
	}
	loop("axpy32", "axpy8", 4)
	loop("axpy8", "axpyDone", 1)
	Label("axpyDone")
	VZEROUPPER()
	RET()
}

// maxF32 generates maxF32AVX2, the largest of n > 0 floats: a page's
// scores are reduced to their max once per query row before the
// exponentials, and a scalar loop of Go's NaN-aware max costs more than
// the exponentials themselves.
func maxF32() {
	TEXT("maxF32AVX2", NOSPLIT, "func(x *float32, n int) float32")
	Doc("maxF32AVX2 returns the largest of x[:n]; n > 0.")
	xp := Load(Param("x"), GP64())
	n := Load(Param("n"), GP64())
	m := YMM()
	VBROADCASTSS(Mem{Base: xp}, m)
	Label("chunk")
	CMPQ(n, U8(8))
	JL(LabelRef("tail"))
	VMAXPS(Mem{Base: xp}, m, m)
	ADDQ(U8(32), xp)
	SUBQ(U8(8), n)
	JMP(LabelRef("chunk"))
	Label("tail")
	hi := XMM()
	VEXTRACTF128(U8(1), m, hi)
	r := XMM()
	VMAXPS(hi, m.AsX(), r)
	t := XMM()
	VPERMILPS(U8(0x4e), r, t)
	VMAXPS(t, r, r)
	VPERMILPS(U8(0xb1), r, t)
	VMAXPS(t, r, r)
	Label("scalar")
	CMPQ(n, U8(0))
	JE(LabelRef("done"))
	VMAXSS(Mem{Base: xp}, r, r)
	ADDQ(U8(4), xp)
	DECQ(n)
	JMP(LabelRef("scalar"))
	Label("done")
	VMOVSS(r, addr(ReturnIndex(0)))
	VZEROUPPER()
	RET()
}

// fmaPeak generates fmaPeakAVX2, 12 independent FMAs per iteration: the
// core's multiply-add throughput, which the page kernels' benchmarks report
// their rate against (the clock of a shared machine moves too much to
// compare timings taken minutes apart).
func fmaPeak() {
	TEXT("fmaPeakAVX2", NOSPLIT, "func(n int)")
	Doc("fmaPeakAVX2 runs n iterations of 12 independent 8-lane FMAs.")
	n := Load(Param("n"), GP64())
	a, b := YMM(), YMM()
	CMPQ(n, U8(0))
	JLE(LabelRef("none"))
	VXORPS(a, a, a)
	VXORPS(b, b, b)
	acc := make([]VecVirtual, 12)
	for i := range acc {
		acc[i] = YMM()
		VXORPS(acc[i], acc[i], acc[i])
	}
	Label("loop")
	for i := range acc {
		VFMADD231PS(a, b, acc[i])
	}
	DECQ(n)
	JNZ(LabelRef("loop"))
	// Keep the accumulators live to the end.
	for i := 1; i < len(acc); i++ {
		VADDPS(acc[i], acc[0], acc[0])
	}
	VADDPS(acc[0], a, a)
	Label("none")
	VZEROUPPER()
	RET()
}

// addr is the stack address of an argument or result, for VEX loads and
// stores (Load and Store use SSE moves for floats).
func addr(c gotypes.Component) Mem {
	b, err := c.Resolve()
	if err != nil {
		panic(err)
	}
	return b.Addr
}

func typeName(bf16 bool) string {
	if bf16 {
		return "BF16"
	}
	return "F32"
}

// elemSize is the size in bytes of one element of K or V.
func elemSize(bf16 bool) int {
	if bf16 {
		return 2
	}
	return 4
}

// loadRow loads 8 elements of a K or V row at m into a YMM of float32.
func loadRow(bf16 bool, m Mem) VecVirtual {
	y := YMM()
	if bf16 {
		VPMOVZXWD(m, y)
		VPSLLD(U8(16), y, y)
	} else {
		VMOVUPS(m, y)
	}
	return y
}

// headMem addresses base + h*stride (stride, stride3 = 3*stride in bytes).
func headMem(base, stride, stride3 Register, h, disp int) Mem {
	switch h {
	case 0:
		return Mem{Base: base, Disp: disp}
	case 1:
		return Mem{Base: base, Index: stride, Scale: 1, Disp: disp}
	case 2:
		return Mem{Base: base, Index: stride, Scale: 2, Disp: disp}
	case 3:
		return Mem{Base: base, Index: stride3, Scale: 1, Disp: disp}
	}
	panic("headMem: h > 3")
}

// hsum reduces the YMMs a (len 1, 2 or 4) to an XMM whose lane i is the sum
// of the lanes of a[i].
func hsum(a []VecVirtual) VecVirtual {
	var t VecVirtual
	switch len(a) {
	case 4:
		t1, t2 := YMM(), YMM()
		VHADDPS(a[1], a[0], t1)
		VHADDPS(a[3], a[2], t2)
		t = YMM()
		VHADDPS(t2, t1, t)
	case 2:
		t = YMM()
		VHADDPS(a[1], a[0], t)
		VHADDPS(t, t, t)
	case 1:
		t = YMM()
		VHADDPS(a[0], a[0], t)
		VHADDPS(t, t, t)
	default:
		panic("hsum")
	}
	hi := XMM()
	VEXTRACTF128(U8(1), t, hi)
	s := XMM()
	VADDPS(hi, t.AsX(), s)
	return s
}

// scores generates scores<T>H<heads>(out, q, k, n, d, ostride, scale): for
// h < heads, t < n, out[h*ostride+t] = scale * Σ_c q[h*d+c]*K(t,c), taking
// rows key rows at a time (then one at a time for the rest) so that
// heads*rows independent FMA chains hide the FMA latency. d must be a
// positive multiple of 8 and n positive.
func scores(bf16 bool, heads, rows int) {
	name := fmt.Sprintf("scores%sH%d", typeName(bf16), heads)
	if bf16 {
		// The shapes scoresPair does not take.
		name = fmt.Sprintf("scoresBF16NarrowH%d", heads)
	}
	ktype := "*float32"
	if bf16 {
		ktype = "*byte"
	}
	TEXT(name, NOSPLIT, fmt.Sprintf("func(out, q *float32, k %s, n, d, ostride int, scale float32)", ktype))
	Doc(fmt.Sprintf("%s sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)", name),
		fmt.Sprintf("for h < %d, t < n; n > 0, d > 0 and d%%8 == 0.", heads))
	esz := elemSize(bf16)
	out := Load(Param("out"), GP64())
	q := Load(Param("q"), GP64())
	kcur := Load(Param("k"), GP64())
	n := Load(Param("n"), GP64())
	d := Load(Param("d"), GP64())
	os := Load(Param("ostride"), GP64())
	SHLQ(U8(2), os)
	var os3 Register
	if heads == 4 {
		os3 = GP64()
		LEAQ(Mem{Base: os, Index: os, Scale: 2}, os3)
	}
	scale := XMM()
	VBROADCASTSS(addr(Param("scale")), scale)

	// The q rows and the K rows are addressed from their ends with a
	// negative byte offset i into K that counts up to 0; q's offset is
	// i*4/esz.
	rowBytes := GP64()
	MOVQ(d, rowBytes)
	if esz == 2 {
		SHLQ(U8(1), rowBytes)
	} else {
		SHLQ(U8(2), rowBytes)
	}
	dq := GP64()
	MOVQ(d, dq)
	SHLQ(U8(2), dq)
	qe := ends(q, dq, dq, heads)
	qscale := uint8(4 / esz)

	block := func(r int, loop string) {
		kr, acc, i := rowBlock(kcur, rowBytes, r, heads)
		Label(loop)
		kv := make([]VecVirtual, r)
		for j := range kv {
			kv[j] = loadRow(bf16, Mem{Base: kr[j], Index: i, Scale: 1})
		}
		for h := range heads {
			qv := YMM()
			VMOVUPS(Mem{Base: qe[h], Index: i, Scale: qscale}, qv)
			for j := range kv {
				VFMADD231PS(kv[j], qv, acc[j][h])
			}
		}
		ADDQ(U8(8*esz), i)
		JNZ(LabelRef(loop))

		for j := range acc {
			s := hsum(acc[j])
			VMULPS(scale, s, s)
			for h := range heads {
				m := headMem(out, os, os3, h, 4*j)
				if h == 0 {
					VMOVSS(s, m)
				} else {
					VEXTRACTPS(U8(h), s, m)
				}
			}
		}
		MOVQ(kr[r-1], kcur)
		ADDQ(U8(4*r), out)
		SUBQ(U8(r), n)
	}

	if rows > 1 {
		Label("rows")
		CMPQ(n, U8(rows))
		JL(LabelRef("row"))
		block(rows, "chunks")
		JMP(LabelRef("rows"))
	}
	Label("row")
	CMPQ(n, U8(0))
	JE(LabelRef("done"))
	block(1, "chunk")
	JMP(LabelRef("row"))

	Label("done")
	VZEROUPPER()
	RET()
}

// ends returns k pointers: the first base+length, each next one step past
// the one before (the ends of k rows of length bytes, step bytes apart,
// which loops address with a negative index counting up to 0).
func ends(base, length, step Register, k int) []GPVirtual {
	p := make([]GPVirtual, k)
	for j := range p {
		p[j] = GP64()
		if j == 0 {
			LEAQ(Mem{Base: base, Index: length, Scale: 1}, p[j])
		} else {
			LEAQ(Mem{Base: p[j-1], Index: step, Scale: 1}, p[j])
		}
	}
	return p
}

// rowBlock starts a block of r key rows of the scores: kr[j] points past the
// end of row j (rows of rowBytes from kcur), acc[j][h] is a zeroed
// accumulator per row and head, and i = -rowBytes is the offset that counts
// up to 0 along the rows.
func rowBlock(kcur, rowBytes Register, r, heads int) (kr []GPVirtual, acc [][]VecVirtual, i GPVirtual) {
	kr = ends(kcur, rowBytes, rowBytes, r)
	acc = make([][]VecVirtual, r)
	for j := range acc {
		acc[j] = make([]VecVirtual, heads)
		for h := range acc[j] {
			acc[j][h] = YMM()
			VXORPS(acc[j][h], acc[j][h], acc[j][h])
		}
	}
	i = GP64()
	MOVQ(rowBytes, i)
	NEGQ(i)
	return kr, acc, i
}

// pairMaxD is the largest d scoresPair takes: its permuted copy of q
// lives in a fixed stack frame of pairMaxD floats per head.
const pairMaxD = 256

// scoresPair generates scoresBF16H<heads>(out, q, k, n, d, ostride, scale,
// mx, pfA, pfB), the bf16 scores for d a multiple of 16 up to pairMaxD.
// It converts 16 bf16 of a key row at a time with one 32-byte load: the
// dword j holds elements 2j (low half) and 2j+1 (high half), so a left
// shift by 16 gives the even channels as float32 and a mask of the high
// halves the odd ones. q is copied once per call into a stack buffer in
// the same even/odd order. rows key rows are taken at a time (then one at
// a time), heads*rows accumulators. It also keeps mx[h] = max(mx[h],
// out[h*ostride+t]). With each 32 bytes of a block's key rows it reads, it
// issues PREFETCHT0 for the matching lines of pfA and of pfB (n*2*d bytes
// each; in decode this page's V rows and the next page's K rows), so that
// they are asked for a few lines at a time, spread evenly over the call: a
// whole page asked for at once stalls the core.
func scoresPair(heads, rows int) {
	name := fmt.Sprintf("scoresBF16H%d", heads)
	TEXT(name, 0, "func(out, q *float32, k *byte, n, d, ostride int, scale float32, mx *float32, pfA, pfB *byte)")
	Doc(fmt.Sprintf("%s sets out[h*ostride+t] = scale * Σ_{c<d} q[h*d+c]*K(t,c)", name),
		fmt.Sprintf("and mx[h] = max(mx[h], out[h*ostride+t]) for h < %d, t < n; n > 0,", heads),
		fmt.Sprintf("d > 0, d%%16 == 0 and d <= %d. It also prefetches n*2*d bytes at pfA and pfB.", pairMaxD))
	slot := 4 * pairMaxD
	// 128 bytes more than the copy: 64 to start it on a cache line, and 64
	// because the loads below address it from the end of each slot with a
	// negative index, and go vet reads a displacement at or past the frame
	// size as an argument.
	qbuf := AllocLocal(heads*slot + 128)
	qb := pairQ(qbuf, heads, slot)

	out := Load(Param("out"), GP64())
	os := Load(Param("ostride"), GP64())
	SHLQ(U8(2), os)
	var os3 Register
	if heads == 4 {
		os3 = GP64()
		LEAQ(Mem{Base: os, Index: os, Scale: 2}, os3)
	}
	mx := Load(Param("mx"), GP64())
	pairRows(heads, rows, slot, qb, false, false, func(j int, s VecVirtual) {
		for h := range heads {
			m := headMem(out, os, os3, h, 4*j)
			if h == 0 {
				VMOVSS(s, m)
			} else {
				VEXTRACTPS(U8(h), s, m)
			}
		}
		m := XMM()
		switch heads {
		case 4:
			VMOVUPS(Mem{Base: mx}, m)
			VMAXPS(s, m, m)
			VMOVUPS(m, Mem{Base: mx})
		case 2:
			VMOVSD(Mem{Base: mx}, m)
			VMAXPS(s, m, m)
			VMOVSD(m, Mem{Base: mx})
		case 1:
			VMOVSS(Mem{Base: mx}, m)
			VMAXSS(s, m, m)
			VMOVSS(m, Mem{Base: mx})
		}
	}, func(r int) { ADDQ(U8(4*r), out) })
	VZEROUPPER()
	RET()
}

// pairQ copies q (Param "q", heads rows of Param "d" floats) to the end of
// the slots of qbuf, each 16 floats as the 8 even then the 8 odd ones: the
// order in which pairRows converts key rows.
func pairQ(qbuf Mem, heads, slot int) GPVirtual {
	// The slots start on a 64-byte line (qbuf has 64 bytes to spare), so
	// that no 32-byte load of q straddles two lines.
	qb := GP64()
	LEAQ(qbuf.Offset(63), qb)
	ANDQ(I8(-64), qb)
	q := Load(Param("q"), GP64())
	d := Load(Param("d"), GP64())
	dst := GP64()
	cnt := GP64()
	for h := range heads {
		// dst = &qb[h*slot + slot - 4*d]
		LEAQ(Mem{Base: qb, Disp: (h + 1) * slot}, dst)
		MOVQ(d, cnt)
		SHLQ(U8(2), cnt)
		SUBQ(cnt, dst)
		MOVQ(d, cnt)
		SHRQ(U8(4), cnt)
		lbl := fmt.Sprintf("perm%d", h)
		Label(lbl)
		e, o := evenOdd(Mem{Base: q})
		VMOVUPS(e, Mem{Base: dst})
		VMOVUPS(o, Mem{Base: dst, Disp: 32})
		ADDQ(U8(64), q)
		ADDQ(U8(64), dst)
		DECQ(cnt)
		JNZ(LabelRef(lbl))
	}
	return qb
}

// pairRows emits the key-row loops of the bf16 scores over Param "k" (Param
// "n" rows of Param "d" bf16), with q at qb as pairQ lays it out: blocks of
// rows key rows, then single rows. For row j of a block it calls emit with
// an XMM whose lane h is the score of head h, times Param "scale" unless
// prescaled (q comes scaled), then advance(r) once the block of r rows is
// done. It prefetches as scoresPair says, from Params "pfA" and "pfB" (only
// pfA if onlyA).
func pairRows(heads, rows, slot int, qb Register, prescaled, onlyA bool, emit func(j int, s VecVirtual), advance func(r int)) {
	kcur := Load(Param("k"), GP64())
	n := Load(Param("n"), GP64())
	pfA := Load(Param("pfA"), GP64())
	var pfB Register
	if !onlyA {
		pfB = Load(Param("pfB"), GP64())
	}
	rowBytes := Load(Param("d"), GP64())
	SHLQ(U8(1), rowBytes)
	mask := mkMask()

	block := func(r int, loop string) {
		kr, acc, i := rowBlock(kcur, rowBytes, r, heads)
		Label(loop)
		for half := range 2 {
			kv := make([]VecVirtual, r)
			for j := range kv {
				kv[j] = YMM()
				VMOVDQU(Mem{Base: kr[j], Index: i, Scale: 1}, kv[j])
				if half == 0 {
					VPSLLD(U8(16), kv[j], kv[j])
				} else {
					VPAND(mask, kv[j], kv[j])
				}
			}
			for h := range heads {
				qv := YMM()
				// q of head h, 16 channels at K byte offset i: 64 bytes
				// per 32 of K, from the end of slot h.
				VMOVUPS(Mem{Base: qb, Disp: (h+1)*slot + 32*half, Index: i, Scale: 2}, qv)
				for j := range kv {
					VFMADD231PS(kv[j], qv, acc[j][h])
				}
			}
		}
		// Ask for the lines of pfA and pfB that match the 32*r bytes of
		// key rows just read: every other 32-byte chunk and the last one
		// cover each 64-byte line of them.
		for c := 0; c < r; c++ {
			if c%2 == 0 || c == r-1 {
				PREFETCHT0(Mem{Base: pfA, Disp: 32 * c})
				if pfB != nil {
					PREFETCHT0(Mem{Base: pfB, Disp: 32 * c})
				}
			}
		}
		ADDQ(U8(32*r), pfA)
		if pfB != nil {
			ADDQ(U8(32*r), pfB)
		}
		ADDQ(U8(32), i)
		JNZ(LabelRef(loop))

		var scale VecVirtual
		if !prescaled {
			scale = XMM()
			VBROADCASTSS(addr(Param("scale")), scale)
		}
		for j := range acc {
			s := hsum(acc[j])
			if !prescaled {
				VMULPS(scale, s, s)
			}
			emit(j, s)
		}
		MOVQ(kr[r-1], kcur)
		advance(r)
		SUBQ(U8(r), n)
	}

	Label("rows")
	CMPQ(n, U8(rows))
	JL(LabelRef("row"))
	block(rows, "chunks")
	JMP(LabelRef("rows"))
	Label("row")
	CMPQ(n, U8(0))
	JE(LabelRef("scored"))
	block(1, "chunk")
	JMP(LabelRef("row"))
	Label("scored")
}

// pairMask is the memory operand of 8 dwords 0xffff0000: the high bf16 of
// each dword as a float32.
var pairMask Mem

func mkMask() Mem { return pairMask }

// accum generates accum<T>H<heads>(acc, p, v, n, d, pstride): for h <
// heads, c < d, acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c). The channels
// are taken in blocks of 8*w for each w of widths in turn (largest first,
// each as long as it fits), with heads*w accumulators held over all n
// tokens. n > 0, d > 0 and d%8 == 0.
func accum(bf16 bool, heads int, widths []int) {
	name := fmt.Sprintf("accum%sH%d", typeName(bf16), heads)
	vtype := "*float32"
	if bf16 {
		vtype = "*byte"
	}
	TEXT(name, NOSPLIT, fmt.Sprintf("func(acc, p *float32, v %s, n, d, pstride int)", vtype))
	Doc(fmt.Sprintf("%s adds acc[h*d+c] += Σ_{t<n} p[h*pstride+t]*V(t,c)", name),
		fmt.Sprintf("for h < %d, c < d; n > 0, d > 0 and d%%8 == 0.", heads))
	ps := Load(Param("pstride"), GP64())
	SHLQ(U8(2), ps)
	var ps3 Register
	if heads == 4 {
		ps3 = GP64()
		LEAQ(Mem{Base: ps, Index: ps, Scale: 2}, ps3)
	}
	accumRows(bf16, heads == 4, heads, widths, func(pp Register, h int) Mem { return headMem(pp, ps, ps3, h, 0) })
	VZEROUPPER()
	RET()
}

// accumRows emits the loops of accum over Params "acc", "v", "n", "d" and
// the weights in Param "p": weight (t, h) at pAt(p+4*t, h).
func accumRows(bf16, perHead bool, heads int, widths []int, pAt func(pp Register, h int) Mem) {
	esz := elemSize(bf16)
	ac := Load(Param("acc"), GP64())
	vc := Load(Param("v"), GP64())
	d := Load(Param("d"), GP64())
	rowBytes := GP64()
	MOVQ(d, rowBytes)
	if esz == 2 {
		SHLQ(U8(1), rowBytes)
	} else {
		SHLQ(U8(2), rowBytes)
	}
	dq := GP64()
	MOVQ(d, dq)
	SHLQ(U8(2), dq)
	rem := d // channels left

	for wi, w := range widths {
		top := fmt.Sprintf("w%d", w)
		next := "accumulated"
		if wi+1 < len(widths) {
			next = fmt.Sprintf("w%d", widths[wi+1])
		}
		Label(top)
		// A width runs while what it leaves can be taken by the next ones
		// (widths 3, 2, 1: 128 channels as 4 blocks of 3 and 2 of 2).
		least := 8 * w
		if wi+1 < len(widths) && w == 3 {
			least = 40
		}
		CMPQ(rem, U8(least))
		JL(LabelRef(next))

		// Load the accumulators: head h at ac + h*dq.
		acc := make([][]VecVirtual, heads)
		ah := GP64()
		MOVQ(ac, ah)
		for h := range acc {
			if h > 0 {
				ADDQ(dq, ah)
			}
			acc[h] = make([]VecVirtual, w)
			for j := range acc[h] {
				acc[h][j] = YMM()
				VMOVUPS(Mem{Base: ah, Disp: 32 * j}, acc[h][j])
			}
		}
		pp := Load(Param("p"), GP64())
		cnt := Load(Param("n"), GP64())
		vp := GP64()
		MOVQ(vc, vp)
		loop := fmt.Sprintf("tokens%d", w)
		Label(loop)
		if perHead {
			// The row's w vectors first, then one broadcast weight at a
			// time: 5w+1 registers, so 4 heads take w = 3 (12
			// accumulators, which the FMA latency needs).
			vv := make([]VecVirtual, w)
			for j := range vv {
				vv[j] = loadRow(bf16, Mem{Base: vp, Disp: 8 * esz * j})
			}
			for h := range heads {
				pb := YMM()
				VBROADCASTSS(pAt(pp, h), pb)
				for j := range w {
					VFMADD231PS(vv[j], pb, acc[h][j])
				}
			}
		} else {
			pb := make([]VecVirtual, heads)
			for h := range pb {
				pb[h] = YMM()
				VBROADCASTSS(pAt(pp, h), pb[h])
			}
			for j := range w {
				vv := loadRow(bf16, Mem{Base: vp, Disp: 8 * esz * j})
				for h := range heads {
					VFMADD231PS(vv, pb[h], acc[h][j])
				}
			}
		}
		ADDQ(rowBytes, vp)
		ADDQ(U8(4), pp)
		DECQ(cnt)
		JNZ(LabelRef(loop))

		MOVQ(ac, ah)
		for h := range acc {
			if h > 0 {
				ADDQ(dq, ah)
			}
			for j := range acc[h] {
				VMOVUPS(acc[h][j], Mem{Base: ah, Disp: 32 * j})
			}
		}
		ADDQ(U32(32*w), ac)
		ADDQ(U32(8*esz*w), vc)
		SUBQ(U8(8*w), rem)
		JMP(LabelRef(top))
	}
	Label("accumulated")
}

// decodePage generates decodePageBF16H4: one page of bf16 K/V folded into
// the online softmax of 4 query heads of one decode token, in one call:
// the scores (as scoresPair, prefetching pfA only), the new running
// max, the rescaling of l and acc by exp(m_old - m_new) when the max
// moved, the weights exp(s - m_new) and their sums, and the weighted sum
// of the value rows (accumPairs, prefetching pfB). The scores live in s as [n][4] floats, so
// a row's four heads are one XMM store and the exponentials run 8 lanes
// (two rows) at a time.
// decodePage generates decodePageBF16H4, or with tiled
// decodePageTiledBF16H4: the same fold over keys laid out in tiles of 16
// tokens (see tiledRows), which needs no horizontal sums.
func decodePage(c expConsts, tiled bool) {
	name := "decodePageBF16H4"
	keys, qlay, s4, pfa := "rows of d", "in pair order at the end", "s[:4*n]", "n*2*d bytes at pfA"
	if tiled {
		name = "decodePageTiledBF16H4"
		keys, qlay, s4, pfa = "d channels of 16 tokens", "in channel order at the start", "s[:4*ceil(n/16)*16]",
			"ceil(n/16)*32*d bytes at pfA (the keys' bytes)"
	}
	TEXT(name, NOSPLIT, "func(qp *float32, k, v *byte, n, d int, s, m, l, acc *float32, pfA, pfB *byte)")
	Doc(fmt.Sprintf("%s folds the n keys (tiles of %s) and values (rows of d) of a", name, keys),
		"bf16 page into the running max m[h], denominator l[h] and weighted sum",
		fmt.Sprintf("acc[h*d:(h+1)*d] of query heads h < 4, using %s as scratch. qp", s4),
		fmt.Sprintf("(64-byte aligned) holds each head's q, scaled, %s of a slot", qlay),
		fmt.Sprintf("of %d floats; acc is in pair order. n > 0, d > 0, d%%16 == 0, d <= %d;", pairMaxD, pairMaxD),
		fmt.Sprintf("it prefetches %s and n*2*d bytes at pfB.", pfa))
	const heads = 4
	slot := 4 * pairMaxD
	// 16 bytes of running max and 16 of the correction factors.
	frame := AllocLocal(32)
	mxAt := frame
	corrAt := mxAt.Offset(16)
	// q comes scaled and in the order pairRows reads it, prepared once per
	// decode token rather than per page.
	qb := Load(Param("qp"), GP64())

	// A row's scores are one store, with no chain from row to row (a
	// running max kept in memory made one, whose latency held up
	// retirement at the end of each block of rows).
	if tiled {
		tiledRows(slot, qb)
	} else {
		sp := Load(Param("s"), GP64())
		pairRows(heads, 3, slot, qb, true, true, func(j int, sv VecVirtual) {
			VMOVUPS(sv, Mem{Base: sp, Disp: 16 * j})
		}, func(r int) { ADDQ(U8(16*r), sp) })
	}

	// The new max, from m and the scores, two rows at a time.
	mp := Load(Param("m"), GP64())
	{
		mx := YMM()
		VBROADCASTF128(Mem{Base: mp}, mx)
		sp := Load(Param("s"), GP64())
		n := Load(Param("n"), GP64())
		Label("maxpairs")
		CMPQ(n, U8(2))
		JL(LabelRef("maxlast"))
		// MAXPS returns its second source when either is NaN: with the
		// scores first, a NaN score is passed over (its weight is then 0,
		// as in the Go loops) instead of becoming the max.
		t2 := YMM()
		VMOVUPS(Mem{Base: sp}, t2)
		VMAXPS(mx, t2, mx)
		ADDQ(U8(32), sp)
		SUBQ(U8(2), n)
		JMP(LabelRef("maxpairs"))
		Label("maxlast")
		CMPQ(n, U8(0))
		JE(LabelRef("maxed"))
		t := YMM()
		VBROADCASTF128(Mem{Base: sp}, t)
		VMAXPS(mx, t, mx)
		Label("maxed")
		hi := XMM()
		VEXTRACTF128(U8(1), mx, hi)
		r := XMM()
		VMAXPS(hi, mx.AsX(), r)
		VMOVUPS(r, mxAt)
	}

	// corr = exp(m_old - m_new); m = m_new; l *= corr.
	lo, log2e, one, bias := c.regs()
	mp = Load(Param("m"), GP64())
	mnew := YMM()
	VBROADCASTF128(mxAt, mnew) // [m_new | m_new]
	// Whole-register writes only: a write to the XMM half of a virtual YMM
	// would keep the YMM live from the function's entry.
	x := YMM()
	VBROADCASTF128(Mem{Base: mp}, x)
	VMOVUPS(mnew.AsX(), Mem{Base: mp})
	corr := expLanes(c, x, mnew, lo, log2e, one, bias)
	lp := Load(Param("l"), GP64())
	lv := XMM()
	VMULPS(Mem{Base: lp}, corr.AsX(), lv)
	// Rescale acc unless every factor is 1 (the max did not move), which
	// is most pages once the context's largest scores have been seen.
	eq := YMM()
	VCMPPS(U8(0), one, corr, eq) // EQ_OQ
	bits := GP32()
	VMOVMSKPS(eq.AsX(), bits)
	CMPL(bits, U8(15))
	JE(LabelRef("weights"))
	VMOVUPS(corr.AsX(), corrAt)
	{
		ap := Load(Param("acc"), GP64())
		d := Load(Param("d"), GP64())
		for h := range heads {
			f := YMM()
			VBROADCASTSS(corrAt.Offset(4*h), f)
			cnt := GP64()
			MOVQ(d, cnt)
			SHRQ(U8(3), cnt)
			lbl := fmt.Sprintf("rescale%d", h)
			Label(lbl)
			t := YMM()
			VMULPS(Mem{Base: ap}, f, t)
			VMOVUPS(t, Mem{Base: ap})
			ADDQ(U8(32), ap)
			DECQ(cnt)
			JNZ(LabelRef(lbl))
		}
	}

	// s = exp(s - m_new), two rows (8 lanes) at a time; l += their sums.
	Label("weights")
	{
		sp := Load(Param("s"), GP64())
		n := Load(Param("n"), GP64())
		sum := YMM()
		VXORPS(sum, sum, sum)
		expChunks(c, "pairs", "last", sp, n, 2, mnew, sum, lo, log2e, one, bias)
		Label("last")
		CMPQ(n, U8(0))
		JE(LabelRef("summed"))
		xt := YMM()
		VBROADCASTF128(Mem{Base: sp}, xt) // the last row twice
		et := expLanes(c, xt, mnew, lo, log2e, one, bias)
		VMOVUPS(et.AsX(), Mem{Base: sp})
		et4 := YMM()
		VXORPS(et4, et4, et4)
		VBLENDPS(U8(0x0f), et, et4, et4) // the row once
		VADDPS(et4, sum, sum)
		Label("summed")
		hi := XMM()
		VEXTRACTF128(U8(1), sum, hi)
		VADDPS(hi, sum.AsX(), hi)
		VADDPS(hi, lv, lv)
		lp := Load(Param("l"), GP64())
		VMOVUPS(lv, Mem{Base: lp})
	}

	accumPairs()
	VZEROUPPER()
	RET()
}

// accumPairs emits the value sums of decodePage: acc += Σ_t s[4t+h]*V(t,·)
// for h < 4 (Params "acc", "s", "v", "n", "d"; d a multiple of 16), 16
// channels of all 4 heads at a time. Each 32 bytes of a value row are
// converted as in pairRows (a shift for the even channels, a mask for the
// odd ones): one shift and one AND per 16 channels, against two
// zero-extending loads and two shifts, which share the FMA units' ports.
// acc is in that pair order (each 16 channels as the 8 even, then the 8
// odd ones) from page to page: shuffling it to channel order and back at
// every page cost 3% of the page's cycles. It prefetches the n*2*d bytes at Param "pfB" a line
// per two tokens: for d = 128 spread over all 8 blocks (a line per token,
// over the first half, asks for them faster than memory delivers them
// and stalls the loop: 5-8% slower from memory).
func accumPairs() {
	const heads = 4
	ac := Load(Param("acc"), GP64())
	vc := Load(Param("v"), GP64())
	d := Load(Param("d"), GP64())
	rowBytes := GP64()
	MOVQ(d, rowBytes)
	SHLQ(U8(1), rowBytes)
	dq := GP64()
	MOVQ(d, dq)
	SHLQ(U8(2), dq)
	blocks := GP64()
	MOVQ(d, blocks)
	SHRQ(U8(4), blocks)
	pf := Load(Param("pfB"), GP64())
	pfEnd := GP64()
	{
		n := Load(Param("n"), GP64())
		IMULQ(rowBytes, n)
		LEAQ(Mem{Base: pf, Index: n, Scale: 1}, pfEnd)
	}
	mask := YMM()
	VMOVDQU(pairMask, mask)

	Label("vblock")
	// 16 channels of each head, the even then the odd ones (acc is kept
	// in that order from page to page): head h at ac + h*dq.
	ev, od := make([]VecVirtual, heads), make([]VecVirtual, heads)
	ah := GP64()
	MOVQ(ac, ah)
	for h := range heads {
		if h > 0 {
			ADDQ(dq, ah)
		}
		ev[h], od[h] = YMM(), YMM()
		VMOVUPS(Mem{Base: ah}, ev[h])
		VMOVUPS(Mem{Base: ah, Disp: 32}, od[h])
	}
	pp := Load(Param("s"), GP64())
	cnt := Load(Param("n"), GP64())
	vp := GP64()
	MOVQ(vc, vp)
	token := func(disp int) {
		e, o := YMM(), YMM()
		row := Mem{Base: vp}
		if disp == 1 {
			row = Mem{Base: vp, Index: rowBytes, Scale: 1}
		}
		VMOVDQU(row, o)
		VPSLLD(U8(16), o, e)
		VPAND(mask, o, o)
		for h := range heads {
			pb := YMM()
			VBROADCASTSS(Mem{Base: pp, Disp: 16*disp + 4*h}, pb)
			VFMADD231PS(e, pb, ev[h])
			VFMADD231PS(o, pb, od[h])
		}
	}
	Label("vtokens")
	CMPQ(cnt, U8(2))
	JL(LabelRef("vlast"))
	token(0)
	token(1)
	// One line of pfB per two tokens until its n*2*d bytes are asked for.
	nextLine := func(done string) {
		CMPQ(pf, pfEnd)
		JAE(LabelRef(done))
		PREFETCHT0(Mem{Base: pf})
		ADDQ(U8(64), pf)
	}
	nextLine("vprefetched")
	Label("vprefetched")
	LEAQ(Mem{Base: vp, Index: rowBytes, Scale: 2}, vp)
	ADDQ(U8(32), pp)
	SUBQ(U8(2), cnt)
	JMP(LabelRef("vtokens"))
	Label("vlast")
	CMPQ(cnt, U8(0))
	JE(LabelRef("vsummed"))
	token(0)
	// The odd last token asks for a line too, so that every block does
	// ceil(n/2): d/16 blocks of them cover the n*2*d bytes.
	nextLine("vsummed")
	Label("vsummed")

	MOVQ(ac, ah)
	for h := range heads {
		if h > 0 {
			ADDQ(dq, ah)
		}
		VMOVUPS(ev[h], Mem{Base: ah})
		VMOVUPS(od[h], Mem{Base: ah, Disp: 32})
	}
	ADDQ(U8(64), ac)
	ADDQ(U8(32), vc)
	DECQ(blocks)
	JNZ(LabelRef("vblock"))
}

// Constants of the vector exp, each replicated 8 times (32 bytes) so that
// it can be an FMA's memory operand.
type expConsts struct {
	table Mem
	off   map[string]int
}

func (c expConsts) mem(name string) Mem {
	o, ok := c.off[name]
	if !ok {
		panic("no constant " + name)
	}
	return c.table.Offset(o)
}

// expMin is ln(2^-126) rounded up to float32: exp(y) for y >= expMin is a
// normal float32; below it the kernels return 0.
const expMin = -87.33654

func expConstants() expConsts {
	vals := []struct {
		name string
		v    float32
	}{
		{"min", expMin},
		{"log2e", math.Log2E},
		// ln 2 = c1 + c2, c1 with few significant bits (Cephes expf).
		{"c1", 0.693359375},
		{"c2", -2.12194440e-4},
		// e^r ≈ 1 + r + r²·P(r) on |r| <= ln2/2 (Cephes expf).
		{"p0", 1.9875691500e-4},
		{"p1", 1.3981999507e-3},
		{"p2", 8.3334519073e-3},
		{"p3", 4.1665795894e-2},
		{"p4", 1.6666665459e-1},
		{"p5", 5.0000001201e-1},
		{"one", 1},
	}
	table := GLOBL("attn_exp_consts", RODATA|NOPTR)
	c := expConsts{table: table, off: map[string]int{}}
	o := 0
	for _, v := range vals {
		c.off[v.name] = o
		for range 8 {
			// As bits: avo prints F32(1) as $(1), which the assembler
			// reads as the integer 1.
			DATA(o, U32(math.Float32bits(v.v)))
			o += 4
		}
	}
	c.off["bias"] = o
	for range 8 {
		DATA(o, U32(127))
		o += 4
	}
	// Tail masks: 8 all-ones dwords then 8 zero dwords; the 8 dwords from
	// offset 4*(8-r) enable the first r lanes.
	c.off["mask"] = o
	for i := range 16 {
		if i < 8 {
			DATA(o, U32(0xffffffff))
		} else {
			DATA(o, U32(0))
		}
		o += 4
	}
	return c
}

// regs loads the constants expLanes keeps in registers.
func (c expConsts) regs() (lo, log2e, one, bias VecVirtual) {
	lo, log2e, one, bias = YMM(), YMM(), YMM(), YMM()
	VMOVUPS(c.mem("min"), lo)
	VMOVUPS(c.mem("log2e"), log2e)
	VMOVUPS(c.mem("one"), one)
	VMOVDQU(c.mem("bias"), bias)
	return lo, log2e, one, bias
}

// expChunks emits the loop at label top that, while n >= per, replaces the
// 8 floats at p with exp(x-m), adds them to sum, and advances p by 32 bytes
// and n by per (per rows of the 8 lanes); then it goes to label done.
func expChunks(c expConsts, top, done string, p, n Register, per int, m, sum, lo, log2e, one, bias VecVirtual) {
	Label(top)
	CMPQ(n, U8(per))
	JL(LabelRef(done))
	x := YMM()
	VMOVUPS(Mem{Base: p}, x)
	e := expLanes(c, x, m, lo, log2e, one, bias)
	VMOVUPS(e, Mem{Base: p})
	VADDPS(e, sum, sum)
	ADDQ(U8(32), p)
	SUBQ(U8(per), n)
	JMP(LabelRef(top))
}

// expLanes returns exp(x-m) for the 8 lanes of x (x is overwritten), 0 in
// lanes where x-m < expMin, -Inf or NaN.
func expLanes(c expConsts, x, m, lo, log2e, one, bias VecVirtual) VecVirtual {
	VSUBPS(m, x, x)
	keep := YMM()
	VCMPPS(U8(0x1d), lo, x, keep) // x >= min (GE_OQ): false for NaN
	VMAXPS(lo, x, x)
	k := YMM()
	VMULPS(log2e, x, k)
	VROUNDPS(U8(8), k, k) // nearest, no precision exception
	VFNMADD231PS(c.mem("c1"), k, x)
	VFNMADD231PS(c.mem("c2"), k, x) // x = r, |r| <= ln2/2
	p := YMM()
	VMOVUPS(c.mem("p0"), p)
	for _, name := range []string{"p1", "p2", "p3", "p4", "p5"} {
		VFMADD213PS(c.mem(name), x, p) // p = p*r + P
	}
	z := YMM()
	VMULPS(x, x, z)
	VFMADD213PS(x, z, p) // p = p*r² + r
	VADDPS(one, p, p)
	ki := YMM()
	VCVTPS2DQ(k, ki)
	VPADDD(bias, ki, ki)
	VPSLLD(U8(23), ki, ki) // 2^k, k in [-126, 0]
	VMULPS(ki, p, p)
	VANDPS(keep, p, p)
	return p
}

func expSum(c expConsts) {
	TEXT("expSumAVX2", NOSPLIT, "func(x *float32, n int, m float32) float32")
	Doc("expSumAVX2 sets x[i] = exp(x[i]-m) for i < n and returns their sum;",
		"results below the smallest normal float32 are 0.")
	xp := Load(Param("x"), GP64())
	n := Load(Param("n"), GP64())
	m := YMM()
	VBROADCASTSS(addr(Param("m")), m)
	lo, log2e, one, bias := c.regs()
	sum := YMM()
	VXORPS(sum, sum, sum)

	expChunks(c, "chunk", "tail", xp, n, 8, m, sum, lo, log2e, one, bias)

	Label("tail")
	CMPQ(n, U8(0))
	JE(LabelRef("done"))
	// mask = the 8 dwords at mask + 4*(8-n).
	tb := GP64()
	LEAQ(c.mem("mask"), tb)
	idx := GP64()
	MOVQ(U32(8), idx)
	SUBQ(n, idx)
	mask := YMM()
	VMOVDQU(Mem{Base: tb, Index: idx, Scale: 4}, mask)
	xt := YMM()
	VMASKMOVPS(Mem{Base: xp}, mask, xt)
	et := expLanes(c, xt, m, lo, log2e, one, bias)
	VANDPS(mask, et, et)
	VMASKMOVPS(et, mask, Mem{Base: xp})
	VADDPS(et, sum, sum)

	Label("done")
	s := hsum([]VecVirtual{sum})
	VMOVSS(s, addr(ReturnIndex(0)))
	VZEROUPPER()
	RET()
}

// tileChans emits the channel loop over one tile of 16 keys at kt ([d][16]
// bf16, d4 = 4*d): it returns acc[h][0] and acc[h][1] (zeroed first), the
// dot products of head h's q with the even and the odd tokens of the tile,
// lane j holding tokens 2j and 2j+1 (lanes 4-7: 8 more). One 32-byte load
// is a channel of 16 tokens: a shift gives the even tokens as float32, a
// mask the odd ones; q's value of channel c for head h, qAt(h, i, u) with
// i = 4*c' and c = c'+u, is broadcast. Two channels per iteration; step
// emits what each iteration adds (the prefetches).
func tileChans(kt, d4 Register, heads int, qAt func(h int, i Register, u int) Mem, step func()) [][2]VecVirtual {
	mask := mkMask()
	acc := make([][2]VecVirtual, heads)
	for h := range acc {
		for j := range 2 {
			acc[h][j] = YMM()
			VXORPS(acc[h][j], acc[h][j], acc[h][j])
		}
	}
	i := GP64()
	XORQ(i, i)
	Label("chans")
	for u := range 2 {
		x, e := YMM(), YMM()
		VMOVDQU(Mem{Base: kt, Index: i, Scale: 8, Disp: 32 * u}, x)
		VPSLLD(U8(16), x, e)
		VPAND(mask, x, x)
		for h := range heads {
			b := YMM()
			VBROADCASTSS(qAt(h, i, u), b)
			VFMADD231PS(e, b, acc[h][0])
			VFMADD231PS(x, b, acc[h][1])
		}
	}
	step()
	ADDQ(U8(8), i)
	CMPQ(i, d4)
	JL(LabelRef("chans"))
	return acc
}

// tiledRows emits the key loops of decodePageTiledBF16H4 over Param "k"
// laid out in tiles of 16 tokens: for each tile, for each channel c < d,
// the 16 tokens' bf16 values (32 bytes). One load gives a channel of 8 even
// and 8 odd tokens (a shift and a mask, as in pairRows), multiplied by the
// channel of q broadcast, so the lanes are tokens and a score needs no
// horizontal sum: with rows, those sums are about 13% of the routine's
// cycles. The scores are stored to Param "s" as s[4t+h], as pairRows
// leaves them, for ceil(n/16)*16 tokens. It prefetches Param "pfA" a line
// per 64 bytes of keys.
func tiledRows(slot int, qb Register) {
	const heads = 4
	kt := Load(Param("k"), GP64())
	n := Load(Param("n"), GP64())
	sp := Load(Param("s"), GP64())
	pfA := Load(Param("pfA"), GP64())
	d4 := Load(Param("d"), GP64())
	SHLQ(U8(2), d4) // 4*d: the loop index runs over c*4
	Label("tiles")
	acc := tileChans(kt, d4, heads, func(h int, i Register, u int) Mem {
		return Mem{Base: qb, Index: i, Scale: 1, Disp: h*slot + 4*u}
	}, func() {
		PREFETCHT0(Mem{Base: pfA})
		ADDQ(U8(64), pfA)
	})

	// 4x4 transposes within each 128-bit lane: X[p][j] holds the 4 heads'
	// scores of lanes j and j+4 of parity p.
	var X [2][4]VecVirtual
	for p := range 2 {
		a, b, c2, d := YMM(), YMM(), YMM(), YMM()
		VUNPCKLPS(acc[1][p], acc[0][p], a)
		VUNPCKHPS(acc[1][p], acc[0][p], b)
		VUNPCKLPS(acc[3][p], acc[2][p], c2)
		VUNPCKHPS(acc[3][p], acc[2][p], d)
		for j := range 4 {
			X[p][j] = YMM()
		}
		VUNPCKLPD(c2, a, X[p][0])
		VUNPCKHPD(c2, a, X[p][1])
		VUNPCKLPD(d, b, X[p][2])
		VUNPCKHPD(d, b, X[p][3])
	}
	// Lane j of parity p is token 2j+p of the tile: lanes j and j+4 are
	// tokens 2j+p and 2j+p+8, so each pair of X makes two 32-byte stores
	// of two tokens' 4 scores.
	for j := range 4 {
		lo, hi := YMM(), YMM()
		VPERM2F128(U8(0x20), X[1][j], X[0][j], lo)
		VPERM2F128(U8(0x31), X[1][j], X[0][j], hi)
		VMOVUPS(lo, Mem{Base: sp, Disp: 16 * 2 * j})
		VMOVUPS(hi, Mem{Base: sp, Disp: 16 * (2*j + 8)})
	}
	ADDQ(U32(16*16), sp)
	// Next tile: 16 tokens of d channels, 32*d bytes.
	LEAQ(Mem{Base: kt, Index: d4, Scale: 8}, kt)
	SUBQ(U8(16), n)
	JG(LabelRef("tiles"))
}

// linearBlock generates linearR<rows>T<toks>(y, ystride, x, xstride, w,
// wstride, in): y[t*ystride+r] = Σ_{i<in} x[t*xstride+i]*w[r*wstride+i] for
// r < rows, t < toks, strides in floats, in a positive multiple of 8: a
// block of the projections' y = x·Wᵀ, rows*toks accumulators over in, each
// reduced once at the end. rows is 1, 3, 4 or a multiple of 4.
func linearBlock(rows, toks int) {
	name := fmt.Sprintf("linearR%dT%d", rows, toks)
	TEXT(name, NOSPLIT, "func(y *float32, ystride int, x *float32, xstride int, w *float32, wstride int, in int)")
	Doc(fmt.Sprintf("%s sets y[t*ystride+r] = Σ_{i<in} x[t*xstride+i]*w[r*wstride+i] for r < %d,", name, rows),
		fmt.Sprintf("t < %d; strides in floats, in a positive multiple of 8.", toks))
	in := Load(Param("in"), GP64())
	SHLQ(U8(2), in) // bytes
	// Row and token pointers at the end of their in floats; i counts up
	// from -in to 0.
	rowEnds := func(base, stride string, k int) []GPVirtual {
		b := Load(Param(base), GP64())
		var s Register
		if k > 1 {
			s = Load(Param(stride), GP64())
			SHLQ(U8(2), s)
		}
		return ends(b, in, s, k)
	}
	wp := rowEnds("w", "wstride", rows)
	xp := rowEnds("x", "xstride", toks)
	acc := make([][]VecVirtual, toks)
	for t := range acc {
		acc[t] = make([]VecVirtual, rows)
		for r := range acc[t] {
			acc[t][r] = YMM()
			VXORPS(acc[t][r], acc[t][r], acc[t][r])
		}
	}
	i := GP64()
	MOVQ(in, i)
	NEGQ(i)
	Label("chunk")
	if toks == 1 {
		// Each weight is used once: an operand of its FMA, which leaves
		// registers for 8 rows.
		xv := YMM()
		VMOVUPS(Mem{Base: xp[0], Index: i, Scale: 1}, xv)
		for r := range rows {
			VFMADD231PS(Mem{Base: wp[r], Index: i, Scale: 1}, xv, acc[0][r])
		}
	} else {
		wv := make([]VecVirtual, rows)
		for r := range wv {
			wv[r] = YMM()
			VMOVUPS(Mem{Base: wp[r], Index: i, Scale: 1}, wv[r])
		}
		for t := range toks {
			xv := YMM()
			VMOVUPS(Mem{Base: xp[t], Index: i, Scale: 1}, xv)
			for r := range rows {
				VFMADD231PS(xv, wv[r], acc[t][r])
			}
		}
	}
	ADDQ(U8(32), i)
	JNZ(LabelRef("chunk"))

	y := Load(Param("y"), GP64())
	ys := Load(Param("ystride"), GP64())
	SHLQ(U8(2), ys)
	for t := range toks {
		// The sums of up to 4 rows at a time, stored as that many floats.
		for r0 := 0; r0 < rows; r0 += 4 {
			g := acc[t][r0:min(rows, r0+4)]
			at := Mem{Base: y, Disp: 4 * r0}
			switch len(g) {
			case 4:
				VMOVUPS(hsum(g), at)
			case 3:
				s := hsum([]VecVirtual{g[0], g[1], g[2], g[2]})
				VMOVSD(s, at)
				VEXTRACTPS(U8(2), s, at.Offset(8))
			case 1:
				VMOVSS(hsum(g), at)
			default:
				panic("linearBlock: rows")
			}
		}
		if t+1 < toks {
			ADDQ(ys, y)
		}
	}
	VZEROUPPER()
	RET()
}
