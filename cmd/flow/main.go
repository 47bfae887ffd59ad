// Command flow runs kvflow pipelines.
//
//	flow run FILE [--var name=value]... [--json PATH]
//	flow validate FILE [--var name=value]...
//	flow verify FIXTURE...
//	flow version
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
