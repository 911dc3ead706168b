// Command eleva-redis serves the Eleva Redis HTTP API (see run.go and
// `eleva-redis help`).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// SIGINT or SIGTERM cancel ctx: run shuts the server down gracefully,
	// within --shutdown-timeout.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
