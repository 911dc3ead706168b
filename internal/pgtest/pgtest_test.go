package pgtest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Each URL is its own database: a table made in one is absent from the
// other, and the database is gone once its test has ended.
func TestURLIsolatedAndDropped(t *testing.T) {
	ctx := context.Background()
	var first string
	t.Run("a", func(t *testing.T) {
		first = URL(t)
		second := URL(t)
		if first == second {
			t.Fatalf("two URL calls gave the same database %s", first)
		}
		a, b := connect(t, first), connect(t, second)
		if _, err := a.Exec(ctx, "CREATE TABLE only_in_a (id int)"); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := b.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("table of one database visible in the other")
		}
		// The server must not run as root (PostgreSQL refuses to).
		var role string
		if err := a.QueryRow(ctx, "SELECT current_user").Scan(&role); err != nil || role != Superuser {
			t.Fatalf("current_user = %q, %v; want %q", role, err, Superuser)
		}
	})
	name := first[strings.LastIndex(first, "/")+1 : strings.Index(first, "?")]
	mu.Lock()
	s := shared
	mu.Unlock()
	conn := connect(t, s.URL("postgres"))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatalf("database %s still exists after its test ended", name)
	}
}

// Start gives a working server; Stop ends it and removes its directory.
func TestStartStop(t *testing.T) {
	s, err := Start("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	ctx := context.Background()
	if err := s.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, s.URL("app"))
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	if fi, err := os.Stat(filepath.Join(s.Dir, ".s.PGSQL."+strconv.Itoa(s.Port))); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("unix socket not in the server's directory: %v", err)
	}
	conn.Close(ctx)

	s.Stop()
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory %s left after Stop: %v", s.Dir, err)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.Port), time.Second); err == nil {
		c.Close()
		t.Fatalf("port %d still accepts connections after Stop", s.Port)
	}
	s.Stop() // idempotent
}

func TestFindBinDir(t *testing.T) {
	mk := func(t *testing.T, root string, files ...string) {
		for _, f := range files {
			p := filepath.Join(root, f)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name    string
		files   []string
		want    string // relative to the fake root
		onPath  bool   // put the fake root's "path" dir on PATH
		wantErr bool   // ErrNotInstalled with the install hint
	}{
		{name: "none", wantErr: true},
		{name: "newest complete version wins", files: []string{
			"lib/9.6/bin/initdb", "lib/9.6/bin/postgres",
			"lib/15/bin/initdb", "lib/15/bin/postgres",
			"lib/16/bin/initdb", // incomplete: no server binary
		}, want: "lib/15/bin"},
		{name: "initdb without postgres", files: []string{"lib/15/bin/initdb"}, wantErr: true},
		{name: "PATH fallback", files: []string{"path/initdb", "path/postgres"}, onPath: true, want: "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			mk(t, root, tt.files...)
			path := filepath.Join(root, "empty")
			if tt.onPath {
				path = filepath.Join(root, "path")
			}
			t.Setenv("PATH", path)
			got, err := findBinDir(filepath.Join(root, "lib", "*", "bin"))
			if tt.wantErr {
				if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install -y postgresql") {
					t.Fatalf("findBinDir = %q, %v; want ErrNotInstalled with the install hint", got, err)
				}
				return
			}
			if err != nil || got != filepath.Join(root, tt.want) {
				t.Fatalf("findBinDir = %q, %v; want %q", got, err, filepath.Join(root, tt.want))
			}
		})
	}
}

func TestDBName(t *testing.T) {
	tests := []struct {
		test string
		n    uint64
		want string
	}{
		{"TestX", 1, "t1_testx"},
		{"TestX/sub case-2", 7, "t7_testx_subcase2"},
		{strings.Repeat("A", 100), 3, "t3_" + strings.Repeat("a", 40)},
	}
	for _, tt := range tests {
		if got := dbName(tt.test, tt.n); got != tt.want {
			t.Errorf("dbName(%q, %d) = %q, want %q", tt.test, tt.n, got, tt.want)
		}
		if len(dbName(tt.test, tt.n)) > 63 {
			t.Errorf("dbName(%q) longer than 63 bytes", tt.test)
		}
	}
}
