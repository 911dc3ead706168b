package redistest

// Extra servers for connection tests: a TLS-only redis-server with a CA
// generated on the fly, a Redis Sentinel watching a dedicated server, and ACL
// users. Each helper stops its process when the test ends, and the kernel
// kills it if the test binary dies first (Pdeathsig), like the servers in
// redistest.go.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// TLSServer is a redis-server that accepts TLS connections only (no plain
// port). Its certificate is signed by a CA generated for this test and is
// valid for 127.0.0.1 and localhost. Clients are not asked for certificates.
type TLSServer struct {
	Addr string
	// RootCAs holds the generated CA: put it in a tls.Config to trust the server.
	RootCAs *x509.CertPool
	// CAFile is the CA certificate in PEM, for tools that take a file.
	CAFile string
	p      *proc
}

// URL is "rediss://" + Addr.
func (s *TLSServer) URL() string { return "rediss://" + s.Addr }

// ClientTLS returns a client configuration that trusts the server's CA.
func (s *TLSServer) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: s.RootCAs, MinVersion: tls.VersionTLS12}
}

// NewTLSServer starts a dedicated TLS-only redis-server, stopped when the test
// ends. It fails the test when this redis-server was built without TLS.
func NewTLSServer(t testing.TB) *TLSServer {
	t.Helper()
	dir := t.TempDir()
	pool, err := writeCerts(dir)
	if err != nil {
		t.Fatalf("redistest: generate TLS certificates: %v", err)
	}
	s := &TLSServer{RootCAs: pool, CAFile: filepath.Join(dir, "ca.pem")}
	s.Addr, s.p, err = launchOnFreePort(dir, func(port string) []string {
		return []string{
			"--port", "0", "--tls-port", port, "--bind", "127.0.0.1",
			"--tls-cert-file", filepath.Join(dir, "server.pem"),
			"--tls-key-file", filepath.Join(dir, "server.key"),
			"--tls-ca-cert-file", s.CAFile,
			"--tls-auth-clients", "no",
		}
	}, func(addr string) bool {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 200 * time.Millisecond}, "tcp", addr, s.ClientTLS())
		if err != nil {
			return false
		}
		defer c.Close()
		return ping(c)
	})
	if err != nil {
		t.Fatalf("redistest: TLS server: %v", err)
	}
	t.Cleanup(s.p.stop)
	return s
}

// Sentinel is a Redis Sentinel process monitoring one master.
type Sentinel struct {
	Addr      string
	MasterSet string
	p         *proc
}

// URL is the rueidis URL that reaches the master through this sentinel:
// "redis://<sentinel addr>?master_set=<name>".
func (s *Sentinel) URL() string {
	return "redis://" + s.Addr + "?master_set=" + url.QueryEscape(s.MasterSet)
}

// StartSentinel starts a sentinel (quorum 1) that monitors master under the
// name masterSet, and returns once the sentinel is connected to the master and
// reports it healthy. It is stopped when the test ends.
func StartSentinel(t testing.TB, masterSet string, master *Server) *Sentinel {
	t.Helper()
	mhost, mport, err := net.SplitHostPort(master.Addr)
	if err != nil {
		t.Fatalf("redistest: sentinel: master address %q: %v", master.Addr, err)
	}
	dir := t.TempDir()
	s := &Sentinel{MasterSet: masterSet}
	s.Addr, s.p, err = launchOnFreePort(dir, func(port string) []string {
		// Sentinel rewrites its configuration file, so each attempt gets a
		// fresh one in the test's directory.
		conf := filepath.Join(dir, "sentinel-"+port+".conf")
		body := fmt.Sprintf("port %s\nbind 127.0.0.1\ndir %s\n"+
			"sentinel monitor %s %s %s 1\n"+
			"sentinel down-after-milliseconds %s 5000\n",
			port, dir, masterSet, mhost, mport, masterSet)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return nil
		}
		return []string{conf, "--sentinel"}
	}, func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		return ping(c)
	})
	if err != nil {
		t.Fatalf("redistest: sentinel: %v", err)
	}
	t.Cleanup(s.p.stop)

	// The sentinel answers PING before it has connected to the master; a
	// client asking it then may be told of a master flagged "disconnected".
	// Wait until it has a live link and has read the master's INFO.
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{s.Addr}, ForceSingleClient: true, DisableCache: true})
	if err != nil {
		t.Fatalf("redistest: sentinel %s: connect: %v", s.Addr, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var last map[string]string
	for {
		m, err := c.Do(ctx, c.B().Arbitrary("SENTINEL", "MASTER", masterSet).Build()).AsStrMap()
		if err == nil && m["flags"] == "master" && m["role-reported"] == "master" && m["info-refresh"] != "0" {
			return s
		}
		last = m
		select {
		case <-ctx.Done():
			t.Fatalf("redistest: sentinel %s did not report master %s healthy within 10s (last: %v, err: %v); log: %s",
				s.Addr, masterSet, last, err, tail(filepath.Join(dir, "redis.log")))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ACLUser creates (or redefines) the ACL user name on the server at url with
// password and access to every key, channel and command, followed by the
// extra rules (for example "-client" to deny CLIENT).
func ACLUser(t testing.TB, url, name, password string, rules ...string) {
	t.Helper()
	c := Client(t, url)
	args := append([]string{"SETUSER", name, "reset", "on", ">" + password, "~*", "&*", "+@all"}, rules...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, c.B().Arbitrary("ACL").Args(args...).Build()).Error(); err != nil {
		t.Fatalf("redistest: ACL SETUSER %s: %v", name, err)
	}
}

// proc is a redis-server process started by launchOnFreePort.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// launchOnFreePort starts redis-server with args(port) on a free loopback
// port, logging to dir/redis.log, and waits up to 10s for ready(addr). A port
// taken between the check and the start is retried on another port.
func launchOnFreePort(dir string, args func(port string) []string, ready func(addr string) bool) (string, *proc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, errors.New(InstallHint)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort(false)
		if err != nil {
			return "", nil, err
		}
		ps := strconv.Itoa(port)
		a := args(ps)
		if a == nil {
			return "", nil, fmt.Errorf("cannot write configuration in %s", dir)
		}
		addr := net.JoinHostPort("127.0.0.1", ps)
		a = append(a, "--dir", dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
			"--logfile", filepath.Join(dir, "redis.log"))
		var p *proc
		if p, lastErr = launch(bin, a, addr, dir, ready); lastErr == nil {
			return addr, p, nil
		}
	}
	return "", nil, lastErr
}

func launch(bin string, args []string, addr, dir string, ready func(addr string) bool) (*proc, error) {
	cmd := exec.Command(bin, args...)
	// The server dies with the test binary even when no cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for !ready(addr) {
		select {
		case <-p.done:
			return nil, fmt.Errorf("redis-server on %s exited at start-up; log: %s", addr, tail(filepath.Join(dir, "redis.log")))
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("redis-server on %s did not answer within 10s; log: %s", addr, tail(filepath.Join(dir, "redis.log")))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p, nil
}

// writeCerts writes ca.pem, server.pem and server.key into dir and returns a
// pool holding the CA.
func writeCerts(dir string) (*x509.CertPool, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "eleva redistest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	files := []struct {
		name, typ string
		der       []byte
	}{
		{"ca.pem", "CERTIFICATE", caDER},
		{"server.pem", "CERTIFICATE", der},
		{"server.key", "PRIVATE KEY", keyDER},
	}
	for _, f := range files {
		b := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o600); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, nil
}
