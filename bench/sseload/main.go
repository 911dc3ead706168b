// Command sseload measures eleva-redis serve's Server-Sent Events gateway at
// scale (issue 7, acceptance 4): it starts serve (and, for -backend redis, a
// private redis-server), opens -conns SSE connections, each on its own
// channel, measures serve's memory per idle connection, then publishes -rate
// messages/s in total through the HTTP API, each carrying its send time, and
// reports publish-to-receive latency and what was missing. See README.md.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func rss(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

func cpu(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
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
		l := sc.Text()
		if strings.HasPrefix(l, name+" ") {
			v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return v
		}
	}
	return -1
}

func main() {
	backend := flag.String("backend", "redis", "redis (a private redis-server) or memory")
	bin := flag.String("bin", "", "eleva-redis binary; empty: build ../cmd/eleva-redis (run from bench/) into a temporary directory")
	conns := flag.Int("conns", 10000, "SSE connections, one channel each")
	rate := flag.Int("rate", 1000, "messages published per second, in total")
	dur := flag.Duration("duration", 20*time.Second, "publishing time")
	flag.Parse()
	tmp, err := os.MkdirTemp("", "sseload")
	check(err)
	defer os.RemoveAll(tmp)
	if *bin == "" {
		*bin = filepath.Join(tmp, "eleva-redis")
		// Built in the main module (run from bench/): its go.sum, not bench's.
		build := exec.Command("go", "build", "-o", *bin, "./cmd/eleva-redis")
		build.Dir = ".."
		build.Stderr = os.Stderr
		check(build.Run())
	}
	args := []string{"serve", "--listen", "127.0.0.1:" + strconv.Itoa(freePort()), "--log-level", "warn"}
	if *backend == "redis" {
		port := freePort()
		rs := start("redis-server", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no")
		defer rs.Process.Kill()
		waitTCP("127.0.0.1:" + strconv.Itoa(port))
		args = append(args, "--redis-url", "redis://127.0.0.1:"+strconv.Itoa(port))
	}
	srv := start(*bin, args...)
	defer srv.Process.Kill()
	a := args[2]
	addr, pid := &a, &srv.Process.Pid
	waitTCP(*addr)
	fmt.Printf("backend %s, %d connections, %d msg/s for %v; GOMAXPROCS of every process 2 (serve, redis-server and this load generator share the machine)\n\n", *backend, *conns, *rate, *dur)
	// Let serve finish starting before the baseline.
	settle := func() { time.Sleep(3 * time.Second) }
	settle()
	r0, h0 := rss(*pid), metric(*addr, "go_memstats_heap_inuse_bytes")
	var mu sync.Mutex
	lats := make([]time.Duration, 0, (*rate)*int(dur.Seconds())+1000)
	var recv, ready atomic.Int64
	for i := 0; i < *conns; i++ {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial", i, err)
			os.Exit(1)
		}
		fmt.Fprintf(c, "GET /v1/realtime/sse?channels=c%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		go func(i int, c net.Conn) {
			br := bufio.NewReaderSize(c, 2048)
			first := true
			for {
				l, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if first && bytes.HasPrefix(l, []byte("id: ")) {
					first = false
					ready.Add(1)
				}
				if bytes.HasPrefix(l, []byte("data: ")) {
					now := time.Now().UnixNano()
					k := bytes.Index(l, []byte(`"t":`))
					if k < 0 {
						continue
					}
					e := bytes.IndexByte(l[k+4:], '}')
					t, _ := strconv.ParseInt(string(l[k+4:k+4+e]), 10, 64)
					mu.Lock()
					lats = append(lats, time.Duration(now-t))
					mu.Unlock()
					recv.Add(1)
				}
			}
		}(i, c)
	}
	for ready.Load() < int64(*conns) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(5 * time.Second)
	r1, h1 := rss(*pid), metric(*addr, "go_memstats_heap_inuse_bytes")
	g := metric(*addr, "go_goroutines")
	fmt.Printf("conns %d: serve RSS %d MiB -> %d MiB = %.1f KB/conn; heap inuse %.1f KB/conn; goroutines %v\n",
		*conns, r0>>20, r1>>20, float64(r1-r0)/float64(*conns)/1024, (h1-h0)/float64(*conns)/1024, g)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	cl := &http.Client{Transport: tr}
	var pub atomic.Int64
	var plMu sync.Mutex
	var plat []time.Duration
	c0 := cpu(*pid)
	start := time.Now()
	total := *rate * int(dur.Seconds())
	jobs := make(chan int, 1000)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range jobs {
				t := time.Now().UnixNano()
				body := fmt.Sprintf(`{"data":{"t":%d}}`, t)
				resp, err := cl.Post("http://"+*addr+"/v1/channels/c"+strconv.Itoa(ch)+"/publish", "application/json", strings.NewReader(body))
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					continue
				}
				resp.Body.Close()
				d := time.Since(time.Unix(0, t))
				if resp.StatusCode == 200 {
					pub.Add(1)
				}
				plMu.Lock()
				plat = append(plat, d)
				plMu.Unlock()
			}
		}()
	}
	for i := 0; i < total; i++ {
		next := start.Add(time.Duration(i) * time.Second / time.Duration(*rate))
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		jobs <- rand.IntN(*conns)
	}
	close(jobs)
	wg.Wait()
	el := time.Since(start)
	c1 := cpu(*pid)
	time.Sleep(2 * time.Second)
	mu.Lock()
	sort.Slice(lats, func(a, b int) bool { return lats[a] < lats[b] })
	q := func(p float64) time.Duration {
		if len(lats) == 0 {
			return 0
		}
		return lats[int(p*float64(len(lats)-1))]
	}
	sort.Slice(plat, func(a, b int) bool { return plat[a] < plat[b] })
	fmt.Printf("published %d in %v (%.0f/s), received %d, missing %d (more received than published would be duplicates)\n", pub.Load(), el.Round(time.Millisecond), float64(pub.Load())/el.Seconds(), recv.Load(), pub.Load()-recv.Load())
	fmt.Printf("publish->receive p50 %v p99 %v p99.9 %v max %v\n", q(.5).Round(10*time.Microsecond), q(.99).Round(10*time.Microsecond), q(.999).Round(10*time.Microsecond), lats[len(lats)-1].Round(10*time.Microsecond))
	fmt.Printf("publisher HTTP p50 %v p99 %v; serve CPU %.1fs over %v (%.0f%% of one core)\n", plat[len(plat)/2].Round(10*time.Microsecond), plat[len(plat)*99/100].Round(10*time.Microsecond), c1-c0, el.Round(time.Second), (c1-c0)/el.Seconds()*100)
	mu.Unlock()
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "sseload:", err)
		os.Exit(1)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs a child that the kernel kills if this process dies.
func start(name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Stderr = os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	check(c.Start())
	return c
}

func waitTCP(addr string) {
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	check(fmt.Errorf("%s does not answer", addr))
}
