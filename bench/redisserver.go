package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// redisServer is a private, non-persistent redis-server on a free loopback
// port. internal/redistest cannot be imported from this module (it is
// internal to the root module), so this is a small copy of its starter.
type redisServer struct {
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

func (s *redisServer) url() string { return "redis://" + s.addr }

// startRedis starts redis-server with persistence off. The process gets
// SIGKILL if this process dies first (Pdeathsig), so an interrupted run
// leaves nothing behind.
func startRedis() (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("bench: redis-server not found in PATH: `sudo apt-get install -y redis-server`, or pass -redis-url / ELEVA_BENCH_REDIS_URL")
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		dir, err := os.MkdirTemp("", "eleva-bench-redis-")
		if err != nil {
			return nil, err
		}
		s := &redisServer{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir}
		cmd := exec.Command(bin,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--save", "", "--appendonly", "no", "--daemonize", "no",
			"--logfile", filepath.Join(dir, "redis.log"), "--maxclients", "10000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s.cmd = cmd
		s.done = make(chan struct{})
		go func() { _ = cmd.Wait(); close(s.done) }()
		if lastErr = s.waitReady(10 * time.Second); lastErr == nil {
			return s, nil
		}
		s.stop()
	}
	return nil, lastErr
}

func (s *redisServer) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if c, err := net.DialTimeout("tcp", s.addr, 200*time.Millisecond); err == nil {
			ok := ping(c)
			c.Close()
			if ok {
				return nil
			}
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("bench: redis-server on %s exited at start-up: %s", s.addr, b)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: redis-server on %s did not answer within %s", s.addr, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ping(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// stop kills the server, waits for it and removes its directory.
func (s *redisServer) stop() {
	if s == nil || s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
	os.RemoveAll(s.dir)
}
