// Package pgtest starts throwaway PostgreSQL servers from the server
// binaries of Debian's postgresql package: for tests (URL gives each caller a
// fresh database on one shared server per test binary) and for examples that
// want a database without setup (Start).
//
// A server lives in a new temporary directory (data directory, unix socket,
// log), listens on a free loopback port, trusts every local connection and
// trades durability for start-up speed (no fsync). Stop removes everything;
// the kernel stops the server if the process that started it dies first.
//
// PostgreSQL refuses to run as root: when the caller is root the server runs
// as the "postgres" system user (created by the Debian package), and its
// directory is owned by that user. When the binaries are missing, Start and
// URL fail with an install hint; tests never skip.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// InstallHint ends the error when the PostgreSQL server binaries are missing.
const InstallHint = "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or PATH: " +
	"run `make test` (it installs postgresql with apt-get when run as root), or `sudo apt-get install -y postgresql`"

// ErrNotInstalled: the PostgreSQL server binaries were not found.
var ErrNotInstalled = errors.New("pgtest: " + InstallHint)

// binGlob is where Debian's postgresql-NN packages put the server binaries
// (they are not on PATH there).
const binGlob = "/usr/lib/postgresql/*/bin"

// Superuser is the role every DSN logs in as (created by initdb, trusted).
const Superuser = "postgres"

// startTimeout bounds initdb plus the wait for the first connection.
const startTimeout = 60 * time.Second

// Server is a PostgreSQL server process owned by this process.
type Server struct {
	// Dir holds the data directory, the unix socket and postgres.log; Stop
	// removes it.
	Dir string
	// Port is the loopback TCP port.
	Port int

	cred *syscall.Credential // nil: run as ourselves
	bin  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start creates a new cluster in a new directory under parent ("" means
// os.TempDir(); when running as root it must be traversable by the postgres
// user) and starts a server on a free loopback port. Call Stop when done.
func Start(parent string) (*Server, error) {
	bin, err := findBinDir(binGlob)
	if err != nil {
		return nil, err
	}
	if parent == "" {
		parent = os.TempDir()
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		if s.cred, err = postgresUser(); err != nil {
			return nil, err
		}
	}
	if s.Dir, err = os.MkdirTemp(parent, "eleva-pgtest-"); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if s.cred != nil {
		// MkdirTemp made it 0700 and ours: hand it to the server's user.
		if err := os.Chown(s.Dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			s.removeDir()
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	if err := s.initdb(); err != nil {
		s.removeDir()
		return nil, err
	}
	// Retry on another port when the free port we picked was taken before
	// the server bound it.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		if s.Port, err = freePort(); err != nil {
			s.removeDir()
			return nil, fmt.Errorf("pgtest: %w", err)
		}
		if lastErr = s.launch(); lastErr == nil {
			return s, nil
		}
	}
	s.removeDir()
	return nil, lastErr
}

// URL returns the DSN of database db on s.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, s.Port, db)
}

// CreateDatabase creates an empty database named name on s.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	return s.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// DropDatabase drops database name, closing any connections still open to it.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	return s.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

func (s *Server) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: %s: %w", sql, err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: sessions are ended, nothing is
// kept), waits for it and removes its directory. It is idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	s.removeDir()
}

func (s *Server) removeDir() {
	if s.Dir != "" {
		_ = os.RemoveAll(s.Dir)
	}
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.Dir
	// The C locale keeps a LANG naming an uninstalled locale from failing
	// initdb; the server's messages stay in English for the log.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	// Pdeathsig: the server goes when its starter dies, even without Stop.
	// SIGQUIT is PostgreSQL's immediate shutdown, which still releases its
	// shared memory (SIGKILL would leak it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGQUIT}
	return cmd
}

func (s *Server) initdb() error {
	cmd := s.command("initdb", "-D", filepath.Join(s.Dir, "data"), "-U", Superuser,
		"--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C", "--no-instructions")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: initdb: %w: %s", err, lastLines(string(out)))
	}
	return nil
}

func (s *Server) launch() error {
	logPath := filepath.Join(s.Dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := s.command("postgres",
		"-D", filepath.Join(s.Dir, "data"),
		"-p", strconv.Itoa(s.Port),
		"-h", "127.0.0.1",
		"-k", s.Dir, // the socket lives here, not in /var/run/postgresql
		// Throwaway data: skip every durability cost, keep memory small.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "shared_buffers=16MB", "-c", "max_connections=50",
		"-c", "wal_level=minimal", "-c", "max_wal_senders=0",
		"-c", "autovacuum=off", "-c", "jit=off",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgx.Connect(pctx, s.URL("postgres"))
		if err == nil {
			err = conn.Ping(pctx)
			conn.Close(pctx)
		}
		pcancel()
		if err == nil {
			break
		}
		select {
		case <-done:
			return fmt.Errorf("pgtest: postgres on port %d exited at start-up; log: %s", s.Port, lastLines(readFile(logPath)))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("pgtest: postgres on port %d did not accept connections within %s: %v", s.Port, startTimeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

// findBinDir returns the newest directory matching pattern that holds initdb
// and postgres, else the directory of initdb on PATH (other distributions).
func findBinDir(pattern string) (string, error) {
	dirs, _ := filepath.Glob(pattern)
	// Newest major version first: "9.6" < "15" needs a numeric compare.
	sort.Slice(dirs, func(i, j int) bool {
		return versionOf(dirs[i]) > versionOf(dirs[j])
	})
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(p)
		if isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

// versionOf turns ".../postgresql/15/bin" into 15 (and "9.6" into 9.6).
func versionOf(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func isExec(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to: need the postgres system user to run it as (%w); "+
			"`sudo apt-get install -y postgresql` creates it", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: postgres user: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func lastLines(s string) string {
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}

// The shared server of this test binary, started by the first URL call.
var (
	mu        sync.Mutex
	shared    *Server
	sharedErr error
	seq       atomic.Uint64
)

// Run runs the tests and then stops the shared server. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
func Run(m *testing.M) int { return RunWith(m, (*testing.M).Run) }

// RunWith is Run for packages that also need another helper's Run, e.g.
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.RunWith(m, redistest.Run)) }
func RunWith(m *testing.M, run func(*testing.M) int) int {
	code := run(m)
	mu.Lock()
	defer mu.Unlock()
	if shared != nil {
		shared.Stop()
		shared = nil
	}
	return code
}

// URL returns the DSN of a new, empty database on the shared server (started
// on first use), dropped when the test ends; tests never see each other's
// tables. It fails the test, with an install hint, when PostgreSQL is missing.
func URL(t testing.TB) string {
	t.Helper()
	mu.Lock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = Start("")
	}
	s, err := shared, sharedErr
	mu.Unlock()
	if err != nil {
		t.Fatalf("%v", err)
	}
	name := dbName(t.Name(), seq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		// Registered before the test's own cleanups, so it runs after them
		// (pools closed); FORCE covers the ones a test forgot.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			t.Logf("%v", err)
		}
	})
	return s.URL(name)
}

// dbName makes a database name from a test name: lower-case letters and
// digits, unique by n, within PostgreSQL's 63-byte identifier limit.
func dbName(testName string, n uint64) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else if r == '/' || r == '_' {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	return fmt.Sprintf("t%d_%s", n, b.String())
}
