// Command flow runs kvflow pipelines.
//
//	flow run FILE [--var name=value]... [--json PATH] [--log-level LEVEL] [--progress DURATION]
//	         [--sweep NAME=V1,V2,... [--sweep-out DIR]]
//	flow validate FILE [--var name=value]...
//	flow verify FIXTURE...
//	flow version
//
// Progress goes to stderr: a bar when it is a terminal, log lines otherwise.
// --sweep runs the pipeline once per value of a variable and writes
// sweep.csv, hit_ratio.png and stall_cdf.png into --sweep-out (default
// sweep-NAME).
//
// Exit status: 0 on success, 1 when a run or a verification fails, 2 for bad
// configuration or usage.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
