// Command ssescale measures eleva-redis serve's Server-Sent Events gateway at
// scale (issue 7, acceptance 4): it starts serve (and, for -backend redis, a
// private redis-server), opens -conns SSE connections, each on its own
// channel, measures serve's memory per idle connection, then publishes -rate
// messages/s in total through the HTTP API, each carrying its send time, and
// reports publish-to-receive latency. Markdown on stdout, progress on stderr.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"github.com/elevacare/eleva-redis/bench/internal/redisserver"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type config struct {
	Conns    int
	Rate     int
	Duration time.Duration
	Backend  string
	RedisURL string // redis backend: an existing Redis (or Cluster) instead of a private server
	Bin      string
	Settle   time.Duration // before the memory baseline
	Idle     time.Duration // after all connections are open, before the second sample
	Drain    time.Duration // after publishing, the longest wait for deliveries in flight
	Log      io.Writer
}

type report struct {
	Cfg                  config
	Published, Delivered int64
	Duplicates           int64
	Lat                  []time.Duration // sorted publish-to-receive
	PubLat               []time.Duration // sorted publisher HTTP
	Elapsed              time.Duration
	RSS0, RSS1           int64
	Heap0, Heap1         float64
	Gor0, Gor1           float64
	CPU                  float64
}

func main() {
	var c config
	flag.IntVar(&c.Conns, "conns", 10000, "SSE connections, one channel each")
	flag.IntVar(&c.Rate, "rate", 1000, "messages published per second, in total")
	flag.DurationVar(&c.Duration, "duration", 20*time.Second, "publishing time")
	flag.StringVar(&c.Backend, "backend", "redis", "redis (a private redis-server) or memory")
	flag.StringVar(&c.RedisURL, "redis-url", "", "redis backend: use this Redis or Cluster (serve's --redis-url syntax) instead of starting a private redis-server")
	flag.StringVar(&c.Bin, "bin", "", "eleva-redis binary; empty: go build it into a temporary directory")
	flag.Parse()
	c.Settle, c.Idle, c.Drain, c.Log = 3*time.Second, 5*time.Second, 2*time.Second, os.Stderr
	r, err := run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ssescale:", err)
		os.Exit(1)
	}
	r.markdown(os.Stdout)
}

func q(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[int(p*float64(len(s)-1))].Round(10 * time.Microsecond)
}

func (r report) markdown(w io.Writer) {
	c := r.Cfg
	n := float64(c.Conns)
	fmt.Fprintf(w, "## ssescale: %d SSE connections, backend %s, %d msg/s for %v\n\n", c.Conns, c.Backend, c.Rate, c.Duration)
	fmt.Fprintf(w, "| metric | value |\n|---|---|\n")
	fmt.Fprintf(w, "| published | %d in %v (%.0f/s) |\n", r.Published, r.Elapsed.Round(time.Millisecond), float64(r.Published)/r.Elapsed.Seconds())
	fmt.Fprintf(w, "| delivered | %d |\n| missing | %d |\n| duplicates | %d |\n", r.Delivered, r.Published-(r.Delivered-r.Duplicates), r.Duplicates)
	fmt.Fprintf(w, "| publish→receive p50 / p99 / p99.9 / max | %v / %v / %v / %v |\n", q(r.Lat, .5), q(r.Lat, .99), q(r.Lat, .999), q(r.Lat, 1))
	fmt.Fprintf(w, "| publisher HTTP p50 / p99 | %v / %v |\n", q(r.PubLat, .5), q(r.PubLat, .99))
	fmt.Fprintf(w, "| serve RSS before / after open | %.1f MiB / %.1f MiB |\n", float64(r.RSS0)/(1<<20), float64(r.RSS1)/(1<<20))
	fmt.Fprintf(w, "| RSS per idle connection | %.1f KB |\n", float64(r.RSS1-r.RSS0)/n/1024)
	fmt.Fprintf(w, "| heap inuse per idle connection | %.1f KB |\n", (r.Heap1-r.Heap0)/n/1024)
	fmt.Fprintf(w, "| serve goroutines before / after | %.0f / %.0f |\n", r.Gor0, r.Gor1)
	fmt.Fprintf(w, "| serve CPU over publish phase | %.1f s (%.0f%% of one core) |\n\n", r.CPU, r.CPU/r.Elapsed.Seconds()*100)
	fmt.Fprintf(w, "Harness, serve and redis-server share the machine's 2 cores.\n")
}

func run(c config) (r report, err error) {
	r.Cfg = c
	logf := func(f string, a ...any) {
		if c.Log != nil {
			fmt.Fprintf(c.Log, f+"\n", a...)
		}
	}
	tmp, err := os.MkdirTemp("", "ssescale")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(tmp)
	if c.Bin == "" {
		c.Bin = filepath.Join(tmp, "eleva-redis")
		// Built inside the main module so its go.sum applies.
		dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/elevacare/eleva-redis").Output()
		if err != nil {
			return r, fmt.Errorf("locating main module: %w", err)
		}
		b := exec.Command("go", "build", "-o", c.Bin, "github.com/elevacare/eleva-redis/cmd/eleva-redis")
		b.Dir = strings.TrimSpace(string(dir))
		b.Stderr = os.Stderr
		logf("building %s", c.Bin)
		if err := b.Run(); err != nil {
			return r, fmt.Errorf("go build: %w", err)
		}
	}
	p, err := freePort()
	if err != nil {
		return r, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(p)
	args := []string{"serve", "--listen", addr}
	switch c.Backend {
	case "redis":
		url := c.RedisURL
		if url == "" {
			rs, err := redisserver.Start()
			if err != nil {
				return r, err
			}
			defer rs.Stop()
			url = rs.URL()
		}
		args = append(args, "--redis-url", url)
	case "memory":
	default:
		return r, fmt.Errorf("unknown backend %q", c.Backend)
	}
	srv, err := start(c.Bin, args...)
	if err != nil {
		return r, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	pid := srv.Process.Pid
	if err := waitHealthy(addr); err != nil {
		return r, err
	}
	time.Sleep(c.Settle)
	r.RSS0, r.Heap0, r.Gor0 = rss(pid), metric(addr, "go_memstats_heap_inuse_bytes"), metric(addr, "go_goroutines")

	var mu sync.Mutex
	r.Lat = make([]time.Duration, 0, c.Rate*int(c.Duration.Seconds()+1)+1000)
	seen := make([]map[int64]bool, c.Conns)
	var ready, recv, dups atomic.Int64
	conns := make([]net.Conn, 0, c.Conns)
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	logf("opening %d SSE connections to %s", c.Conns, addr)
	for i := 0; i < c.Conns; i++ {
		cn, err := net.Dial("tcp", addr)
		if err != nil {
			return r, fmt.Errorf("dial %d (after %d open): %w", i, len(conns), err)
		}
		conns = append(conns, cn)
		if _, err := fmt.Fprintf(cn, "GET /v1/realtime/sse?channels=c%d HTTP/1.1\r\nHost: x\r\n\r\n", i); err != nil {
			return r, err
		}
		seen[i] = map[int64]bool{}
		go func(i int, cn net.Conn) {
			br := bufio.NewReaderSize(cn, 4096)
			first := true
			for {
				l, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if first && bytes.HasPrefix(l, []byte("id:")) {
					first = false
					ready.Add(1)
				}
				if !bytes.HasPrefix(l, []byte("data: ")) {
					continue
				}
				now := time.Now().UnixNano()
				k := bytes.Index(l, []byte(`"t":`))
				if k < 0 {
					continue
				}
				e := bytes.IndexByte(l[k+4:], '}')
				if e < 0 {
					continue
				}
				t, err := strconv.ParseInt(string(l[k+4:k+4+e]), 10, 64)
				if err != nil {
					continue
				}
				recv.Add(1)
				mu.Lock()
				if seen[i][t] {
					dups.Add(1)
				}
				seen[i][t] = true
				r.Lat = append(r.Lat, time.Duration(now-t))
				mu.Unlock()
			}
		}(i, cn)
		if (i+1)%1000 == 0 {
			logf("  %d dialled, %d ready", i+1, ready.Load())
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for ready.Load() < int64(c.Conns) {
		if time.Now().After(deadline) {
			return r, fmt.Errorf("only %d of %d connections got their first id: line", ready.Load(), c.Conns)
		}
		time.Sleep(20 * time.Millisecond)
	}
	logf("all %d ready; idling %v", c.Conns, c.Idle)
	time.Sleep(c.Idle)
	r.RSS1, r.Heap1, r.Gor1 = rss(pid), metric(addr, "go_memstats_heap_inuse_bytes"), metric(addr, "go_goroutines")

	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxIdleConns: 64}}
	var pub atomic.Int64
	var plMu sync.Mutex
	jobs := make(chan int, 1000)
	var wg sync.WaitGroup
	var perr atomic.Value
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range jobs {
				t := time.Now().UnixNano()
				body := fmt.Sprintf(`{"data":{"t":%d}}`, t)
				resp, err := cl.Post("http://"+addr+"/v1/channels/c"+strconv.Itoa(ch)+"/publish", "application/json", strings.NewReader(body))
				if err != nil {
					perr.Store(err)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				d := time.Since(time.Unix(0, t))
				if resp.StatusCode != 200 {
					perr.Store(fmt.Errorf("publish: %s", resp.Status))
					continue
				}
				pub.Add(1)
				plMu.Lock()
				r.PubLat = append(r.PubLat, d)
				plMu.Unlock()
			}
		}()
	}
	logf("publishing %d msg/s for %v", c.Rate, c.Duration)
	c0 := cpu(pid)
	t0 := time.Now()
	total := int(float64(c.Rate) * c.Duration.Seconds())
	tick := time.NewTicker(10 * time.Millisecond)
	sent := 0
	for sent < total {
		<-tick.C
		want := min(total, int(time.Since(t0).Seconds()*float64(c.Rate)))
		for ; sent < want; sent++ {
			jobs <- rand.IntN(c.Conns)
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	r.Elapsed = time.Since(t0)
	r.CPU = cpu(pid) - c0
	if e, ok := perr.Load().(error); ok {
		logf("publish error (last): %v", e)
	}
	// Wait for the deliveries still in flight, at most Drain: a message
	// that has not arrived by then counts as missing.
	for end := time.Now().Add(c.Drain); recv.Load() < pub.Load() && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	r.Published, r.Delivered, r.Duplicates = pub.Load(), recv.Load(), dups.Load()
	slices.Sort(r.Lat)
	slices.Sort(r.PubLat)
	if r.Published == 0 {
		return r, errors.New("nothing published")
	}
	return r, nil
}

func rss(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for l := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

// cpu is utime+stime of pid in seconds (CLK_TCK 100).
func cpu(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	i := strings.LastIndex(s, ")")
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100
}

func metric(addr, name string) float64 {
	r, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer r.Body.Close()
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, name+" ") {
			v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return v
		}
	}
	return -1
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs a child that the kernel kills if this process dies.
func start(name string, args ...string) (*exec.Cmd, error) {
	c := exec.Command(name, args...)
	c.Stderr = os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return c, c.Start()
}

func waitHealthy(addr string) error {
	for range 300 {
		if r, err := http.Get("http://" + addr + "/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("serve at %s: /healthz never 200", addr)
}
