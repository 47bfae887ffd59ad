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

func verifyCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("verify", stderr)
	block := fs.Int("block-tokens", 16, "tokens per KV page")
	dtypeName := fs.String("dtype", "f32", "page dtype: f32 or bf16")
	tol := fs.Float64("tolerance", 1e-4, "largest relative error that passes")
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
		res, err := fx.Verify(dtype, *block)
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
		fmt.Fprintf(stdout, "%s: %s  max rel err %.3g (prefill %.3g, decode %.3g over %d steps, cache K %.3g V %.3g; tolerance %g, %s pages of %d tokens)\n",
			path, verdict, res.Max, res.Prefill, dec, len(res.Decode), res.CacheK, res.CacheV, *tol, dtype, *block)
	}
	return code
}
