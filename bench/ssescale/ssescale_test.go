package main

import (
	"bytes"
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	var log bytes.Buffer
	r, err := run(config{Conns: 20, Rate: 100, Duration: time.Second, Backend: "memory",
		Settle: 100 * time.Millisecond, Idle: 100 * time.Millisecond, Drain: time.Second, Log: &log})
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if r.Published == 0 || r.Delivered != r.Published {
		t.Fatalf("published %d, delivered %d", r.Published, r.Delivered)
	}
	if r.Duplicates != 0 {
		t.Fatalf("%d duplicates", r.Duplicates)
	}
	var out bytes.Buffer
	r.markdown(&out)
	if !bytes.Contains(out.Bytes(), []byte("p99")) {
		t.Fatalf("report lacks p99:\n%s", out.String())
	}
}
