package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

type machineInfo struct {
	CPU          string
	NumCPU       int
	GOMAXPROCS   int
	GoVersion    string
	OSArch       string
	RedisVersion string
	PoolSize     int
	Modules      []string
	LoadBefore   string
}

// loadAvg is the 1, 5 and 15-minute load averages: on a small machine
// anything else running skews the figures, so the report says so.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func collectMachineInfo(ctx context.Context, admin rueidis.Client, poolSize int) machineInfo {
	info := machineInfo{
		CPU:          cpuModel(),
		NumCPU:       runtime.NumCPU(),
		GOMAXPROCS:   runtime.GOMAXPROCS(0),
		GoVersion:    runtime.Version(),
		OSArch:       runtime.GOOS + "/" + runtime.GOARCH,
		RedisVersion: "n/a (no Redis benchmark selected)",
		PoolSize:     poolSize,
		LoadBefore:   loadAvg(),
	}
	if admin != nil {
		info.RedisVersion = "unknown"
		if s, err := admin.Do(ctx, admin.B().Info().Section("server").Build()).ToString(); err == nil {
			for _, line := range strings.Split(s, "\n") {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
					info.RedisVersion = v
				}
			}
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/redis/rueidis", "github.com/redis/go-redis/v9", "github.com/go-redis/redis_rate/v10",
				"github.com/ulule/limiter/v3", "github.com/sethvargo/go-limiter", "github.com/bsm/redislock":
				info.Modules = append(info.Modules, d.Path+" "+d.Version)
			}
		}
	}
	return info
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// render writes the results as markdown: machine, main table, details.
func render(rows []row, info machineInfo, cfg config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Results (%s)\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "- CPU: %s (%d logical CPUs), GOMAXPROCS %d, %s, %s\n", info.CPU, info.NumCPU, info.GOMAXPROCS, info.GoVersion, info.OSArch)
	fmt.Fprintf(&b, "- redis-server %s on loopback, client and server on the same machine\n", info.RedisVersion)
	fmt.Fprintf(&b, "- %s measured per side per cell, in %d alternating rounds each after a %s warm-up on a flushed database; peers' go-redis PoolSize %d\n",
		cfg.duration, max(cfg.rounds, 1), cfg.warmup, info.PoolSize)
	fmt.Fprintf(&b, "- load average (1/5/15 min) before: %s, after: %s\n", info.LoadBefore, loadAvg())
	if len(info.Modules) > 0 {
		fmt.Fprintf(&b, "- modules: %s\n", strings.Join(info.Modules, ", "))
	}
	b.WriteString("\n| benchmark | keys | goroutines | ours | peer | ratio (ours/peer) | target met? |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---|\n")
	var rl, locks []row
	for _, r := range rows {
		if r.Lock {
			locks = append(locks, r)
		} else {
			rl = append(rl, r)
		}
	}
	for _, r := range rows {
		name := fmt.Sprintf("%s vs %s", r.OursName, r.PeerName)
		if r.Lock {
			fmt.Fprintf(&b, "| %s %s (acquire+release/s) | %s | %d | %s/s | %s/s | %.2f | %s |\n",
				r.Bench, name, r.KeySpace, r.Goroutines, thousands(r.Ours.CyclesPerSec()), thousands(r.Peer.CyclesPerSec()),
				r.Ours.CyclesPerSec()/r.Peer.CyclesPerSec(), lockTarget(r))
			continue
		}
		if r.Memory {
			ns := r.Ours.NsPerOp() / r.Peer.NsPerOp()
			fmt.Fprintf(&b, "| %s (ns/op, lower is better) | %s | %d | %.1f ns/op | %.1f ns/op | %.2f | %s |\n",
				name, r.KeySpace, r.Goroutines, r.Ours.NsPerOp(), r.Peer.NsPerOp(), ns, memNsTarget(r))
			fmt.Fprintf(&b, "| %s (allocs/op) | %s | %d | %.3f allocs/op | %.3f allocs/op | %s | %s |\n",
				name, r.KeySpace, r.Goroutines, r.Ours.AllocsPerOp(), r.Peer.AllocsPerOp(), allocRatio(r), memAllocTarget(r))
			continue
		}
		fmt.Fprintf(&b, "| %s (decisions/s) | %s | %d | %s/s | %s/s | %.2f | %s |\n",
			name, r.KeySpace, r.Goroutines, thousands(r.Ours.OpsPerSec()), thousands(r.Peer.OpsPerSec()),
			r.Ours.OpsPerSec()/r.Peer.OpsPerSec(), redisTarget(r))
	}
	if len(rl) > 0 {
		renderRateDetails(&b, rl)
	}
	if len(locks) > 0 {
		renderLockDetails(&b, locks, cfg)
	}
	for _, r := range rows {
		for _, m := range []measurement{r.Ours, r.Peer} {
			if m.FirstErr != nil {
				fmt.Fprintf(&b, "\nfirst error (%s, %s keys, %d goroutines): %v\n", r.Bench, r.KeySpace, r.Goroutines, m.FirstErr)
			}
		}
	}
	return b.String()
}

func renderRateDetails(b *strings.Builder, rows []row) {
	b.WriteString("\nDetails: decisions in the measured intervals (allowed should be ~100%, errors and degraded 0), and the mean time\n" +
		"redis-server spent executing one EVALSHA of that side (INFO commandstats, warm-up included):\n\n")
	b.WriteString("| benchmark | keys | goroutines | side | decisions | allowed | errors | degraded | redis-server µs per script call |\n")
	b.WriteString("|---|---|---:|---|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		for _, s := range []struct {
			name string
			m    measurement
		}{{r.OursName, r.Ours}, {r.PeerName, r.Peer}} {
			server := "—"
			if s.m.ServerCalls > 0 {
				server = fmt.Sprintf("%.2f", float64(s.m.ServerUsec)/float64(s.m.ServerCalls))
			}
			fmt.Fprintf(b, "| %s | %s | %d | %s | %d | %.1f%% | %d | %d | %s |\n",
				r.Bench, r.KeySpace, r.Goroutines, s.name, s.m.Ops, 100*float64(s.m.Allowed)/float64(s.m.Ops), s.m.Errors, s.m.Degraded, server)
		}
	}
}

// renderLockDetails writes, per side of each lock cell, what explains its
// throughput: Redis script calls and CPU per cycle, client CPU per cycle,
// and for the contended scenario the hand-offs and their latency.
func renderLockDetails(b *strings.Builder, rows []row, cfg config) {
	fmt.Fprintf(b, "\nLock details (measured intervals only; a cycle is one acquire plus its release). Hand-off: an acquire by another goroutine\n"+
		"than the name's previous holder; its latency runs from the previous holder's release start to this acquire's return.\n"+
		"Acquire p50/p99: duration of successful acquire calls (waiting included). Script calls: EVAL/EVALSHA/FCALL per cycle.\n"+
		"Redis CPU: redis-server user+sys CPU (INFO cpu) per cycle, and its share of one core; client CPU: this process's, per cycle and in cores.\n"+
		"Every lock has a ttl of %s; in lock-contended every side waits up to %s, redislock polling with LinearBackoff(%s). Lockers per side: %d.\n\n",
		lockTTL, lockWait, cfg.redislockBackoff, max(cfg.lockInstances, 1))
	b.WriteString("| benchmark | names | goroutines | side | cycles | not acquired | errors | hand-offs | hand-off p50 | hand-off p99 | acquire p50 | acquire p99 | script calls/cycle | µs per script call | Redis CPU µs/cycle | Redis CPU busy | client CPU µs/cycle | client CPU cores |\n")
	b.WriteString("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		for _, s := range []struct {
			name string
			m    measurement
		}{{r.OursName, r.Ours}, {r.PeerName, r.Peer}} {
			m := s.m
			handOffs := "—"
			if m.Allowed > 0 && strings.Contains(r.Bench, "contended") {
				handOffs = fmt.Sprintf("%.1f%%", 100*float64(m.HandOffs)/float64(m.Allowed))
			}
			fmt.Fprintf(b, "| %s | %s | %d | %s | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				r.Bench, r.KeySpace, r.Goroutines, s.name, m.Allowed, m.NotAcquired, m.Errors, handOffs,
				latency(m.HandOffLat, 0.50), latency(m.HandOffLat, 0.99), latency(m.AcquireLat, 0.50), latency(m.AcquireLat, 0.99),
				perCycle(float64(m.ServerCalls), m), ratioStr(float64(m.ServerUsec), float64(m.ServerCalls)),
				perCycle(float64(m.ServerCPU.Microseconds()), m), share(m.ServerCPU, m.Elapsed, "%"),
				perCycle(float64(m.ClientCPU.Microseconds()), m), share(m.ClientCPU, m.Elapsed, "cores"))
		}
	}
}

func perCycle(v float64, m measurement) string {
	if m.Allowed == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", v/float64(m.Allowed))
}

func ratioStr(a, b float64) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func share(busy, elapsed time.Duration, unit string) string {
	if elapsed <= 0 {
		return "—"
	}
	f := busy.Seconds() / elapsed.Seconds()
	if unit == "%" {
		return fmt.Sprintf("%.0f%%", 100*f)
	}
	return fmt.Sprintf("%.2f", f)
}

// latency is the q-quantile (nearest rank) of ds, formatted; "—" when empty.
func latency(ds []time.Duration, q float64) string {
	if len(ds) == 0 {
		return "—"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	d := s[min(max(i, 0), len(s)-1)]
	if d < time.Millisecond {
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// valid reports whether both sides made only clean backend decisions; a cell
// with errors or degraded decisions cannot meet a target.
func valid(r row) bool {
	return r.Ours.Errors == 0 && r.Peer.Errors == 0 && r.Ours.Degraded == 0 && r.Ours.NotAcquired == 0 && r.Peer.NotAcquired == 0
}

func verdict(ok bool, r row, what string) string {
	switch {
	case !valid(r):
		return "invalid (errors, degraded decisions or failed acquires): " + what
	case ok:
		return "met: " + what
	default:
		return "**NOT met**: " + what
	}
}

func primaryKeySpace(r row) bool { return !strings.HasPrefix(r.KeySpace, "1 hot") }

func redisTarget(r row) string {
	if r.Bench != benchGCRA || r.Goroutines != targetGoroutines || !primaryKeySpace(r) {
		return "—"
	}
	return verdict(r.Ours.OpsPerSec() >= targetGCRARatio*r.Peer.OpsPerSec(), r, fmt.Sprintf("≥ %.0fx redis_rate", targetGCRARatio))
}

// lockTarget is the verdict of the lock target, on both scenarios against
// redislock at targetLockGoroutines.
func lockTarget(r row) string {
	if r.PeerName != targetLockPeer || r.Goroutines != targetLockGoroutines {
		return "—"
	}
	return verdict(r.Ours.CyclesPerSec() >= targetLockRatio*r.Peer.CyclesPerSec(), r, fmt.Sprintf("≥ %.1fx redislock", targetLockRatio))
}

func memNsTarget(r row) string {
	if !primaryKeySpace(r) {
		return "—"
	}
	return verdict(r.Ours.NsPerOp() <= targetMemNsPerOp, r, fmt.Sprintf("≤ %.0f ns/op", targetMemNsPerOp))
}

func memAllocTarget(r row) string {
	if !primaryKeySpace(r) {
		return "—"
	}
	// Allocations are counted for the whole process over the interval, so
	// a stray runtime allocation can leave a tiny fraction: round to the
	// nearest hundredth, as testing's allocs/op rounds to integers.
	return verdict(math.Round(r.Ours.AllocsPerOp()*100)/100 <= targetMemAllocsOp, r, "0 allocs/op")
}

func allocRatio(r row) string {
	if r.Peer.AllocsPerOp() < 0.005 {
		return "—"
	}
	return fmt.Sprintf("%.2f", r.Ours.AllocsPerOp()/r.Peer.AllocsPerOp())
}

// thousands formats n rounded to an integer with comma separators.
func thousands(n float64) string {
	s := fmt.Sprintf("%.0f", n)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}
