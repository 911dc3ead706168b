// Package redistest starts real redis-server processes for tests: a shared
// standalone server and a shared 3-node Redis Cluster per test binary, and
// dedicated servers that a test may stop and restart (failure tests).
//
// Servers listen on free loopback ports, keep their files in temporary
// directories and never persist. They stop when Run (called from TestMain)
// returns, and the kernel kills them if the test binary dies first.
//
// ELEVA_TEST_REDIS_URL and ELEVA_TEST_REDIS_CLUSTER_URL point the shared
// helpers at existing servers instead. When redis-server is missing and no URL
// is set, tests fail with an install hint: they never skip.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// InstallHint is the message of the failure when redis-server cannot be found.
const InstallHint = "redis-server not found in PATH: run `make test` (it installs redis-server with apt-get when run as root), " +
	"or `sudo apt-get install -y redis-server`, or set ELEVA_TEST_REDIS_URL and ELEVA_TEST_REDIS_CLUSTER_URL to existing servers"

var (
	mu         sync.Mutex
	shared     *Server
	sharedErr  error
	cluster    []*Server
	clusterURL string
	clusterErr error
	seq        atomic.Uint64
)

// Run runs the tests and then stops the shared servers. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(redistest.Run(m)) }
func Run(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if shared != nil {
		shared.stop()
	}
	for _, s := range cluster {
		s.stop()
	}
	return code
}

// URL returns the URL of the shared standalone server (or ELEVA_TEST_REDIS_URL).
func URL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("ELEVA_TEST_REDIS_URL"); u != "" {
		return u
	}
	mu.Lock()
	defer mu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = start(false, false)
	}
	if sharedErr != nil {
		t.Fatalf("redistest: %v", sharedErr)
	}
	return shared.URL()
}

// ClusterURL returns the URL of the shared 3-node cluster (or
// ELEVA_TEST_REDIS_CLUSTER_URL), in the rueidis form
// "redis://127.0.0.1:P1?addr=127.0.0.1:P2&addr=127.0.0.1:P3".
func ClusterURL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("ELEVA_TEST_REDIS_CLUSTER_URL"); u != "" {
		return u
	}
	mu.Lock()
	defer mu.Unlock()
	if clusterURL == "" && clusterErr == nil {
		cluster, clusterURL, clusterErr = startCluster(3)
	}
	if clusterErr != nil {
		t.Fatalf("redistest: %v", clusterErr)
	}
	return clusterURL
}

// NewCluster starts a private n-node cluster, stopped when the test ends,
// for tests that change its topology (MoveSlot). It returns its URL (the
// form of ClusterURL) and the nodes' addresses.
func NewCluster(t testing.TB, n int) (url string, addrs []string) {
	t.Helper()
	nodes, u, err := startCluster(n)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(func() {
		for _, s := range nodes {
			s.stop()
		}
	})
	for _, s := range nodes {
		addrs = append(addrs, s.Addr)
	}
	return u, addrs
}

// MoveSlot moves slot, with its keys, to the node at addr, the way a
// resharding does (SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE on
// every node).
func MoveSlot(t testing.TB, addrs []string, slot int, to string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := map[string]rueidis.Client{}
	ids := map[string]string{}
	for _, a := range addrs {
		c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{a}, ForceSingleClient: true, DisableCache: true})
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		defer c.Close()
		clients[a] = c
		id, err := c.Do(ctx, c.B().Arbitrary("CLUSTER", "MYID").Build()).ToString()
		if err != nil {
			t.Fatalf("redistest: cluster myid: %v", err)
		}
		ids[a] = id
	}
	from := ""
	for a, c := range clients {
		nodes, err := c.Do(ctx, c.B().Arbitrary("CLUSTER", "NODES").Build()).ToString()
		if err != nil {
			t.Fatalf("redistest: cluster nodes: %v", err)
		}
		for _, line := range strings.Split(nodes, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "myself") {
				continue
			}
			for _, r := range f[8:] {
				lo, hi, _ := strings.Cut(r, "-")
				l, err1 := strconv.Atoi(lo)
				h, err2 := strconv.Atoi(hi)
				if hi == "" {
					h, err2 = l, nil
				}
				if err1 == nil && err2 == nil && l <= slot && slot <= h {
					from = a
				}
			}
		}
	}
	if from == "" || from == to {
		t.Fatalf("redistest: slot %d is on %q; cannot move it to %s", slot, from, to)
	}
	sl := strconv.Itoa(slot)
	do := func(c rueidis.Client, args ...string) {
		if err := c.Do(ctx, c.B().Arbitrary(args[0]).Args(args[1:]...).Build()).Error(); err != nil {
			t.Fatalf("redistest: %v: %v", args, err)
		}
	}
	do(clients[to], "CLUSTER", "SETSLOT", sl, "IMPORTING", ids[from])
	do(clients[from], "CLUSTER", "SETSLOT", sl, "MIGRATING", ids[to])
	host, port, _ := net.SplitHostPort(to)
	for {
		keys, err := clients[from].Do(ctx, clients[from].B().Arbitrary("CLUSTER", "GETKEYSINSLOT").Args(sl, "100").Build()).AsStrSlice()
		if err != nil {
			t.Fatalf("redistest: getkeysinslot: %v", err)
		}
		if len(keys) == 0 {
			break
		}
		do(clients[from], append([]string{"MIGRATE", host, port, "", "0", "5000", "KEYS"}, keys...)...)
	}
	do(clients[to], "CLUSTER", "SETSLOT", sl, "NODE", ids[to])
	for _, a := range addrs {
		if a != to {
			do(clients[a], "CLUSTER", "SETSLOT", sl, "NODE", ids[to])
		}
	}
}

// Client returns a new rueidis client for url, closed when the test ends.
// Each call makes an independent client: use several to play several
// application instances.
func Client(t testing.TB, url string) rueidis.Client { t.Helper(); return ClientNamed(t, url, "") }

// ClientNamed is Client with every connection named (CLIENT SETNAME), so a
// failure test can kill its own connections (see ClientIDs) without cutting
// the other tests sharing the server.
func ClientNamed(t testing.TB, url, name string) rueidis.Client {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Fatalf("redistest: parse %q: %v", url, err)
	}
	opt.ClientName = name
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatalf("redistest: connect %q: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

// ClientIDs returns the ids of node's connections named name whose type
// is typ ("normal", "pubsub"), for CLIENT KILL ID.
func ClientIDs(ctx context.Context, node rueidis.Client, typ, name string) ([]int64, error) {
	list, err := node.Do(ctx, node.B().Arbitrary("CLIENT", "LIST", "TYPE", typ).Build()).ToString()
	if err != nil {
		return nil, err
	}
	// RESP3 answers a verbatim string: "txt:" precedes the first line.
	list = strings.TrimPrefix(list, "txt:")
	var ids []int64
	for _, line := range strings.Split(list, "\n") {
		var id int64 = -1
		named := false
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "id":
				id, _ = strconv.ParseInt(v, 10, 64)
			case "name":
				named = v == name
			}
		}
		if named && id >= 0 {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Prefix returns a key prefix unique to this test, so tests sharing a server
// never see each other's keys.
func Prefix(t testing.TB) string {
	var b strings.Builder
	for _, r := range t.Name() {
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	return fmt.Sprintf("t%d-%d-%s:", os.Getpid(), seq.Add(1), b.String())
}

// Server is a redis-server process owned by the tests.
type Server struct {
	Addr    string
	dir     string
	cluster bool
	aof     bool // appendonly yes, appendfsync always
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
}

// NewServer starts a dedicated standalone redis-server for this test, stopped
// when the test ends. Failure tests stop and restart it.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s, err := start(false, false)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.stop)
	return s
}

// NewAOFServer is NewServer with the append-only file on and fsynced before
// every reply (appendfsync always): a write a client saw succeed survives
// Stop (SIGKILL) and Start, which reloads the file.
func NewAOFServer(t testing.TB) *Server {
	t.Helper()
	s, err := start(false, true)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.stop)
	return s
}

// URL is "redis://" + Addr.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Stop kills the server (SIGKILL: the way a crash or a network cut looks to
// clients) and waits until it has exited.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop()
}

// Start restarts a stopped server on the same address.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.launch(); err != nil {
		t.Fatalf("redistest: restart %s: %v", s.Addr, err)
	}
}

func (s *Server) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

func start(clustered, aof bool) (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort(clustered)
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "eleva-redistest-")
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, cluster: clustered, aof: aof}
		if lastErr = s.launch(); lastErr == nil {
			return s, nil
		}
		if errors.Is(lastErr, exec.ErrNotFound) {
			return nil, errors.New(InstallHint)
		}
	}
	return nil, lastErr
}

func (s *Server) launch() error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("%w: %s", exec.ErrNotFound, InstallHint)
	}
	_, port, _ := net.SplitHostPort(s.Addr)
	appendonly := "no"
	if s.aof {
		appendonly = "yes"
	}
	args := []string{
		"--port", port, "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--appendonly", appendonly, "--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"), "--maxclients", "20000",
	}
	if s.aof {
		args = append(args, "--appendfsync", "always")
	}
	if s.cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000")
	}
	cmd := exec.Command(bin, args...)
	// The server dies with the test binary even when TestMain never runs Run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			ok := ping(c)
			c.Close()
			if ok {
				break
			}
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server on %s exited at start-up; log: %s", s.Addr, tail(filepath.Join(s.dir, "redis.log")))
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("redis-server on %s did not answer within 10s", s.Addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

func ping(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// freePort finds a free loopback port; for cluster nodes its bus port
// (port+10000) must be free too.
func freePort(clustered bool) (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !clustered {
			return port, nil
		}
		if port+10000 > 65535 {
			continue
		}
		if bl, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000)); err == nil {
			bl.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port pair for a cluster node")
}

func startCluster(n int) ([]*Server, string, error) {
	nodes := make([]*Server, 0, n)
	fail := func(err error) ([]*Server, string, error) {
		for _, s := range nodes {
			s.stop()
		}
		return nil, "", err
	}
	for i := 0; i < n; i++ {
		s, err := start(true, false)
		if err != nil {
			return fail(err)
		}
		nodes = append(nodes, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := make([]rueidis.Client, n)
	for i, s := range nodes {
		c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{s.Addr}, ForceSingleClient: true, DisableCache: true})
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		clients[i] = c
	}
	per := 16384 / n
	for i, c := range clients {
		lo, hi := i*per, (i+1)*per-1
		if i == n-1 {
			hi = 16383
		}
		if err := c.Do(ctx, c.B().Arbitrary("CLUSTER", "ADDSLOTSRANGE").Args(strconv.Itoa(lo), strconv.Itoa(hi)).Build()).Error(); err != nil {
			return fail(fmt.Errorf("cluster addslots: %w", err))
		}
	}
	for _, s := range nodes[1:] {
		host, port, _ := net.SplitHostPort(s.Addr)
		if err := clients[0].Do(ctx, clients[0].B().Arbitrary("CLUSTER", "MEET").Args(host, port).Build()).Error(); err != nil {
			return fail(fmt.Errorf("cluster meet: %w", err))
		}
	}
	// Wait until every node agrees the cluster is up and knows every node.
	for {
		ready := true
		for _, c := range clients {
			info, err := c.Do(ctx, c.B().ClusterInfo().Build()).ToString()
			if err != nil {
				return fail(fmt.Errorf("cluster info: %w", err))
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)) {
				ready = false
			}
			slots, err := c.Do(ctx, c.B().ClusterSlots().Build()).ToArray()
			if err != nil || len(slots) != n {
				ready = false
			}
		}
		if ready {
			break
		}
		select {
		case <-ctx.Done():
			return fail(errors.New("cluster did not become ready within 30s"))
		case <-time.After(50 * time.Millisecond):
		}
	}
	u := "redis://" + nodes[0].Addr + "?"
	for i, s := range nodes[1:] {
		if i > 0 {
			u += "&"
		}
		u += "addr=" + s.Addr
	}
	return nodes, u, nil
}
