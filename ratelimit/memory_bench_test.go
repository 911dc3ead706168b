package ratelimit

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// The memory backend's target (it is also the FailLocal fallback): at most
// 150 ns/op under b.RunParallel on 2 cores with 0 allocations per decision on
// existing keys. The benchmarks use the real clock (time.Now), as production
// does. The limit (100 per 10ms per key) is near the rate a key sees when
// 1024 keys are cycled, so both the admitting and the denying path run; the
// hot-key benchmarks are mostly denials.

const memBenchKeys = 1024

var memBenchLimit = Limit{Limit: 100, Window: 10 * time.Millisecond}

func memBenchSetup(b *testing.B, a Algorithm) (Limiter, []string, Limit) {
	b.Helper()
	m := NewMemory(Config{})
	l := memBenchLimit
	l.Algorithm = a
	keys := make([]string, memBenchKeys)
	ctx := context.Background()
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
		// Existing keys, sliding-log rings grown to the limit.
		for j := 0; j < l.Limit; j++ {
			if _, err := m.Allow(ctx, keys[i], l); err != nil {
				b.Fatal(err)
			}
		}
	}
	return m, keys, l
}

var memBenchAlgorithms = []Algorithm{GCRA, SlidingLog, SlidingWindow, FixedWindow}

// BenchmarkMemoryAllow: one goroutine, 1024 existing keys in turn.
func BenchmarkMemoryAllow(b *testing.B) {
	for _, a := range memBenchAlgorithms {
		b.Run(string(a), func(b *testing.B) {
			m, keys, l := memBenchSetup(b, a)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := m.Allow(ctx, keys[i&(memBenchKeys-1)], l); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMemoryAllowParallel: every goroutine cycles through the 1024
// existing keys from its own offset.
func BenchmarkMemoryAllowParallel(b *testing.B) {
	for _, a := range memBenchAlgorithms {
		b.Run(string(a), func(b *testing.B) {
			m, keys, l := memBenchSetup(b, a)
			ctx := context.Background()
			var goroutine atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(goroutine.Add(1)) * 397
				for pb.Next() {
					if _, err := m.Allow(ctx, keys[i&(memBenchKeys-1)], l); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkMemoryAllowParallelHotKey: every goroutine on one key (one shard
// mutex: the contended worst case).
func BenchmarkMemoryAllowParallelHotKey(b *testing.B) {
	for _, a := range memBenchAlgorithms {
		b.Run(string(a), func(b *testing.B) {
			m, keys, l := memBenchSetup(b, a)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.Allow(ctx, keys[0], l); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkMemoryAllowAll: a two-rule policy (user and IP tags) on existing
// keys; AllowAll allocates its Decisions slice, so it is reported, not
// targeted.
func BenchmarkMemoryAllowAll(b *testing.B) {
	m := NewMemory(Config{})
	ctx := context.Background()
	l := memBenchLimit
	l.Algorithm = GCRA
	checks := make([][]Check, memBenchKeys)
	for i := range checks {
		checks[i] = []Check{
			{Name: "user", Key: "p:user", Tag: "user:" + strconv.Itoa(i), Limit: l},
			{Name: "ip", Key: "p:ip", Tag: "ip:" + strconv.Itoa(i%64), Limit: l},
		}
		if _, err := m.AllowAll(ctx, checks[i]...); err != nil {
			b.Fatal(err)
		}
	}
	var goroutine atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(goroutine.Add(1)) * 397
		for pb.Next() {
			if _, err := m.AllowAll(ctx, checks[i&(memBenchKeys-1)]...); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
