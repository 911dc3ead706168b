package testlog

import (
	"strings"
	"sync"
	"testing"
)

func TestBufferConcurrentWrites(t *testing.T) {
	log, buf := Logger()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log.Info("hello", "i", i)
		}()
	}
	wg.Wait()
	if n := strings.Count(buf.String(), "msg=hello"); n != 8 {
		t.Fatalf("%d lines logged, want 8:\n%s", n, buf.String())
	}
}
