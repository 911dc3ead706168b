package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
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
				"github.com/ulule/limiter/v3", "github.com/sethvargo/go-limiter":
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
	for _, r := range rows {
		name := fmt.Sprintf("%s vs %s", r.OursName, r.PeerName)
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
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %d | %.1f%% | %d | %d | %s |\n",
				r.Bench, r.KeySpace, r.Goroutines, s.name, s.m.Ops, 100*float64(s.m.Allowed)/float64(s.m.Ops), s.m.Errors, s.m.Degraded, server)
		}
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

// valid reports whether both sides made only clean backend decisions; a cell
// with errors or degraded decisions cannot meet a target.
func valid(r row) bool {
	return r.Ours.Errors == 0 && r.Peer.Errors == 0 && r.Ours.Degraded == 0
}

func verdict(ok bool, r row, what string) string {
	switch {
	case !valid(r):
		return "invalid (errors or degraded decisions): " + what
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
