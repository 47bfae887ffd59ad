package main

import (
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/kvflow/kvflow/model"
)

// maxVerifyBlock bounds --block-tokens: pages far larger than any fixture's
// sequence only waste memory.
const maxVerifyBlock = 1 << 12

// maxVerifyThreads bounds --threads.
const maxVerifyThreads = 1 << 10

func verifyCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("verify", stderr)
	block := fs.Int("block-tokens", 16, "tokens per KV page")
	dtypeName := fs.String("dtype", "f32", "page dtype: f32 or bf16")
	tol := fs.Float64("tolerance", 1e-4, "largest relative error that passes")
	threads := fs.Int("threads", 1, "goroutines each attention call may use")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) == 0 {
		fmt.Fprintf(stderr, "flow verify: want at least one fixture\n%s", usage)
		return exitUsage
	}
	dtype, err := model.ParseDType(*dtypeName)
	if err != nil {
		fmt.Fprintf(stderr, "flow verify: --dtype %q: want f32, bf16 or f16\n", *dtypeName)
		return exitUsage
	}
	if *block < 1 || *block > maxVerifyBlock {
		fmt.Fprintf(stderr, "flow verify: --block-tokens %d: want 1 to %d\n", *block, maxVerifyBlock)
		return exitUsage
	}
	if *threads < 1 || *threads > maxVerifyThreads {
		fmt.Fprintf(stderr, "flow verify: --threads %d: want 1 to %d\n", *threads, maxVerifyThreads)
		return exitUsage
	}
	if !(*tol >= 0) || math.IsInf(*tol, 0) {
		fmt.Fprintf(stderr, "flow verify: --tolerance %v: want a finite number >= 0\n", *tol)
		return exitUsage
	}
	code := exitOK
	for _, path := range pos {
		fx, err := model.LoadFixture(path)
		if err != nil {
			fmt.Fprintf(stderr, "flow verify: %v\n", err)
			code = max(code, exitUsage)
			continue
		}
		res, err := fx.VerifyWith(dtype, *block, model.Options{Workers: *threads})
		if err != nil {
			fmt.Fprintf(stderr, "flow verify: %s: %v\n", path, err)
			code = max(code, exitFailed)
			continue
		}
		verdict := "ok"
		if !(res.Max <= *tol) {
			verdict = "FAIL"
			code = max(code, exitFailed)
		}
		dec := 0.0
		if len(res.Decode) > 0 {
			dec = slices.Max(res.Decode)
		}
		fmt.Fprintf(stdout, "%s: %s  dense: max rel err %.3g (prefill %.3g, decode %.3g over %d steps, cache K %.3g V %.3g; tolerance %g, %s pages of %d tokens)\n",
			path, verdict, res.Max, res.Prefill, dec, len(res.Decode), res.CacheK, res.CacheV, *tol, dtype, *block)
		code = max(code, verifySparse(fx, res, dtype, *block, *threads, path, stdout, stderr))
	}
	return code
}

// verifySparse runs the fixture with the block-sparse kernel, its top_k
// covering every page: each decode token then reads its pages through the
// routed page lists and the split over threads (no page needs scoring), and
// must give exactly the dense outputs.
func verifySparse(fx *model.Fixture, dense *model.VerifyResult, dtype model.DType, block, threads int, path string, stdout, stderr io.Writer) int {
	pages := (fx.Prefill.Tokens() + len(fx.Decode) + block - 1) / block
	res, err := fx.VerifyWith(dtype, block, model.Options{Kernel: model.KernelBlockSparse, TopK: pages, Workers: threads})
	if err != nil {
		fmt.Fprintf(stderr, "flow verify: %s: block_sparse: %v\n", path, err)
		return exitFailed
	}
	differ := 0
	if len(res.Out) != len(dense.Out) {
		differ = max(len(res.Out), len(dense.Out))
	} else {
		for i, v := range res.Out {
			if v != dense.Out[i] {
				differ++
			}
		}
	}
	verdict, code := "ok", exitOK
	if differ > 0 {
		verdict, code = "FAIL", exitFailed
	}
	fmt.Fprintf(stdout, "%s: %s  block_sparse (top_k %d, every page) vs dense: %d of %d outputs differ\n",
		path, verdict, pages, differ, len(res.Out))
	return code
}
