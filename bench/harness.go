package main

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// decideFunc makes one rate-limit decision for key. degraded reports a
// decision that did not come from the backend under test (our failure
// policy); such decisions would flatter our side, so they are counted and
// flagged, never hidden.
type decideFunc func(ctx context.Context, key string) (allowed, degraded bool, err error)

// measurement is what one side of one cell did in its measured interval.
type measurement struct {
	Ops      uint64        // decisions completed in the measured interval
	Allowed  uint64        // of which allowed
	Errors   uint64        // of which returned an error
	Degraded uint64        // of which came from our failure policy
	Elapsed  time.Duration // length of the measured interval
	Mallocs  uint64        // heap allocations during the measured interval (whole process)
	// ServerCalls and ServerUsec are redis-server's command count and time
	// spent in commands (INFO commandstats), warm-up included: they tell
	// how much server CPU one decision costs.
	ServerCalls, ServerUsec uint64
	FirstErr                error

	// Lock benchmarks only (Allowed counts acquire+release cycles that
	// succeeded). ServerCalls and ServerUsec then exclude the warm-up.
	NotAcquired uint64          // acquires that ended without the lock (held, or the wait ran out)
	HandOffs    uint64          // acquisitions from another goroutine than the name's previous holder
	HandOffLat  []time.Duration // per hand-off: previous holder's release start to this acquire's return
	AcquireLat  []time.Duration // per successful cycle: duration of the acquire call (waiting included)
	ServerCPU   time.Duration   // redis-server CPU time (INFO cpu) in the measured interval
	ClientCPU   time.Duration   // this process's CPU time in the measured interval
}

// add accumulates another round of the same side.
func (m *measurement) add(o measurement) {
	m.Ops += o.Ops
	m.Allowed += o.Allowed
	m.Errors += o.Errors
	m.Degraded += o.Degraded
	m.Elapsed += o.Elapsed
	m.Mallocs += o.Mallocs
	m.ServerCalls += o.ServerCalls
	m.ServerUsec += o.ServerUsec
	m.NotAcquired += o.NotAcquired
	m.HandOffs += o.HandOffs
	m.HandOffLat = append(m.HandOffLat, o.HandOffLat...)
	m.AcquireLat = append(m.AcquireLat, o.AcquireLat...)
	m.ServerCPU += o.ServerCPU
	m.ClientCPU += o.ClientCPU
	if m.FirstErr == nil {
		m.FirstErr = o.FirstErr
	}
}

// OpsPerSec is decisions per second over the measured interval.
func (m measurement) OpsPerSec() float64 {
	if m.Elapsed <= 0 {
		return 0
	}
	return float64(m.Ops) / m.Elapsed.Seconds()
}

// CyclesPerSec is successful lock acquire+release cycles per second.
func (m measurement) CyclesPerSec() float64 {
	if m.Elapsed <= 0 {
		return 0
	}
	return float64(m.Allowed) / m.Elapsed.Seconds()
}

// NsPerOp is wall time per decision with all goroutines running, the same
// definition as testing.B.RunParallel's ns/op.
func (m measurement) NsPerOp() float64 {
	if m.Ops == 0 {
		return 0
	}
	return float64(m.Elapsed.Nanoseconds()) / float64(m.Ops)
}

// AllocsPerOp is heap allocations per decision.
func (m measurement) AllocsPerOp() float64 {
	if m.Ops == 0 {
		return 0
	}
	return float64(m.Mallocs) / float64(m.Ops)
}

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// measure runs fn from g goroutines over keys: warmup first (not counted),
// then a measured interval of d. Each goroutine picks a key uniformly at
// random per decision with its own xorshift state (no shared RNG, no
// allocation), from a key slice built before the run, so both sides pay the
// same, tiny, per-decision harness cost.
func measure(ctx context.Context, g int, warmup, d time.Duration, keys []string, fn decideFunc) measurement {
	var (
		phase    atomic.Int32
		mu       sync.Mutex
		total    measurement
		wg       sync.WaitGroup
		started  sync.WaitGroup
		n        = uint64(len(keys))
		startRun = make(chan struct{})
	)
	for i := 0; i < g; i++ {
		wg.Add(1)
		started.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			var local measurement
			x := seed*0x9E3779B97F4A7C15 | 1
			started.Done()
			<-startRun
			for {
				p := phase.Load()
				if p == phaseStop {
					break
				}
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				allowed, degraded, err := fn(ctx, keys[x%n])
				if p != phaseMeasure || phase.Load() != phaseMeasure {
					// Started in the warm-up or finished after the end:
					// not part of the measured interval.
					continue
				}
				local.Ops++
				switch {
				case err != nil:
					local.Errors++
					if local.FirstErr == nil {
						local.FirstErr = err
					}
				case degraded:
					local.Degraded++
				case allowed:
					local.Allowed++
				}
			}
			mu.Lock()
			total.Ops += local.Ops
			total.Allowed += local.Allowed
			total.Errors += local.Errors
			total.Degraded += local.Degraded
			if total.FirstErr == nil {
				total.FirstErr = local.FirstErr
			}
			mu.Unlock()
		}(uint64(i + 1))
	}
	started.Wait()
	close(startRun)
	time.Sleep(warmup)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	phase.Store(phaseMeasure)
	time.Sleep(d)
	phase.Store(phaseStop)
	total.Elapsed = time.Since(start)
	runtime.ReadMemStats(&after)
	wg.Wait()
	total.Mallocs = after.Mallocs - before.Mallocs
	return total
}
