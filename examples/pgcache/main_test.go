package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/internal/pgtest"
	"github.com/elevacare/eleva-redis/internal/redistest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunWith(m, redistest.Run)) }

// backends are the cache Stores every behaviour test runs on: the in-process
// default and Redis with client-side caching (a Tracker), as main wires them.
var backends = []struct {
	name  string
	store func(t *testing.T) *cache.Store
}{
	{"memory", func(t *testing.T) *cache.Store {
		s := cache.NewMemoryStore(cache.StoreConfig{})
		t.Cleanup(s.Close)
		return s
	}},
	{"redis", func(t *testing.T) *cache.Store {
		opt, err := rueidis.ParseURL(redistest.URL(t))
		if err != nil {
			t.Fatal(err)
		}
		tr := cache.NewTracker()
		opt.OnInvalidations = tr.OnInvalidations
		client, err := rueidis.NewClient(opt)
		if err != nil {
			t.Fatal(err)
		}
		s := cache.NewRedisStore(client, cache.StoreConfig{Prefix: redistest.Prefix(t), Tracker: tr})
		t.Cleanup(func() { s.Close(); client.Close() })
		return s
	}},
}

// env is one app on a fresh seeded database and a fresh Store.
type env struct {
	t   *testing.T
	db  *pgxpool.Pool
	srv *httptest.Server
}

func newEnv(t *testing.T, store *cache.Store) *env {
	t.Helper()
	ctx := context.Background()
	db, err := pgxpool.New(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := setup(ctx, db); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(newApp(db, store, slog.New(slog.DiscardHandler)).routes())
	t.Cleanup(srv.Close)
	return &env{t: t, db: db, srv: srv}
}

// do sends a request and returns the status, the X-Cache header and the body.
func (e *env) do(method, path, body string) (int, string, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("X-Cache"), b
}

func (e *env) get(path string) (string, []byte) {
	e.t.Helper()
	status, src, body := e.do("GET", path, "")
	if status != http.StatusOK {
		e.t.Fatalf("GET %s = %d %s", path, status, body)
	}
	return src, body
}

// warm loads path (the first GET must run the loader) and reads it until
// this instance serves it from its local level; no read after the first may
// reach the database.
func (e *env) warm(path string) []byte {
	e.t.Helper()
	src, first := e.get(path)
	if src != "loader" {
		e.t.Fatalf("first GET %s: X-Cache %q, want loader", path, src)
	}
	for i := 0; i < 3; i++ {
		src, body := e.get(path)
		if src == "loader" {
			e.t.Fatalf("GET %s #%d: X-Cache loader, want a cached copy", path, i+2)
		}
		if !bytes.Equal(body, first) {
			e.t.Fatalf("GET %s changed without a write: %s, then %s", path, first, body)
		}
		if src == "local" {
			return first
		}
	}
	e.t.Fatalf("GET %s never served from the local level", path)
	return nil
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func decodeAs[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

// The header is not a claim: a row changed behind the app's back (no
// invalidation) still reads as cached, so cached reads do not reach the
// database; the same change made through the API is seen at once.
func TestCachedReadsSkipTheDatabase(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			e := newEnv(t, b.store(t))
			e.warm("/users/1")
			e.exec("UPDATE users SET name = 'Changed Behind The Cache' WHERE id = 1")
			if src, body := e.get("/users/1"); src == "loader" || decodeAs[User](t, body).Name != "Dr. Ana Costa" {
				t.Fatalf("after a direct UPDATE: X-Cache %s, %s; want the cached row", src, body)
			}
			if status, _, body := e.do("PUT", "/users/1", `{"name":"Dr. Ana Silva","email":"ana@example.com"}`); status != http.StatusNoContent {
				t.Fatalf("PUT /users/1 = %d %s", status, body)
			}
			if src, body := e.get("/users/1"); src != "loader" || decodeAs[User](t, body).Name != "Dr. Ana Silva" {
				t.Fatalf("after PUT: X-Cache %s, %s; want the new row from the loader", src, body)
			}
		})
	}
}

// Each write invalidates exactly what it changes: the affected values are
// loaded again and show the new data (never the old), the others stay cached.
func TestWritesInvalidateExactly(t *testing.T) {
	type check func(t *testing.T, body []byte)
	userName := func(name string) check {
		return func(t *testing.T, b []byte) {
			if got := decodeAs[User](t, b).Name; got != name {
				t.Errorf("user name %q, want %q", got, name)
			}
		}
	}
	profile := func(f func(Profile) bool, what string) check {
		return func(t *testing.T, b []byte) {
			if !f(decodeAs[Profile](t, b)) {
				t.Errorf("profile %s: want %s", b, what)
			}
		}
	}
	dashboard := func(f func(Dashboard) bool, what string) check {
		return func(t *testing.T, b []byte) {
			if !f(decodeAs[Dashboard](t, b)) {
				t.Errorf("dashboard %s: want %s", b, what)
			}
		}
	}
	paths := []string{"/users/1", "/users/2", "/experts/1", "/dashboard/1"}
	soon := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name, method, path, body string
		reload                   map[string]check // paths loaded again, with the new data
	}{
		{"rename an expert's user", "PUT", "/users/1", `{"name":"Dr. Ana Silva","email":"ana@example.com"}`, map[string]check{
			"/users/1":   userName("Dr. Ana Silva"),
			"/experts/1": profile(func(p Profile) bool { return p.Name == "Dr. Ana Silva" }, "the new name"),
		}},
		{"rename a patient", "PUT", "/users/2", `{"name":"Ben Renamed","email":"ben@example.com"}`, map[string]check{
			"/users/2": userName("Ben Renamed"),
		}},
		{"change an event (tag expert:1)", "PUT", "/events/2", `{"title":"Follow-up, 45 min","minutes":45,"priceCents":6000}`, map[string]check{
			"/experts/1": profile(func(p Profile) bool {
				return len(p.Events) == 2 && p.Events[1].Title == "Follow-up, 45 min" && p.Events[1].PriceCents == 6000
			}, "event 2 changed"),
			"/dashboard/1": dashboard(func(d Dashboard) bool {
				return d.NextTitle != nil && *d.NextTitle == "Follow-up, 45 min"
			}, "the next session's new title"),
		}},
		{"add availability", "POST", "/experts/1/availability", `{"weekday":5,"starts":"08:00","ends":"12:00"}`, map[string]check{
			"/experts/1": profile(func(p Profile) bool {
				return len(p.Availability) == 3 && p.Availability[2] == Slot{Weekday: 5, Starts: "08:00", Ends: "12:00"}
			}, "the new slot"),
		}},
		{"book a session", "POST", "/bookings", `{"eventId":1,"userId":3,"startsAt":"` + soon + `"}`, map[string]check{
			"/dashboard/1": dashboard(func(d Dashboard) bool {
				return d.Bookings == 4 && d.RevenueCents == 32000 && d.NextTitle != nil && *d.NextTitle == "First consultation"
			}, "4 bookings, 320.00 and the new booking next"),
		}},
	}
	for _, b := range backends {
		for _, tt := range tests {
			t.Run(b.name+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t, b.store(t))
				before := map[string][]byte{}
				for _, p := range paths {
					before[p] = e.warm(p)
				}
				if status, _, body := e.do(tt.method, tt.path, tt.body); status != http.StatusNoContent {
					t.Fatalf("%s %s = %d %s", tt.method, tt.path, status, body)
				}
				for _, p := range paths {
					src, body := e.get(p)
					if check, ok := tt.reload[p]; ok {
						if src != "loader" {
							t.Errorf("GET %s after the write: X-Cache %s, want loader", p, src)
						}
						check(t, body)
					} else if src == "loader" || !bytes.Equal(body, before[p]) {
						t.Errorf("GET %s, not affected by the write: X-Cache %s, %s; want the cached %s", p, src, body, before[p])
					}
				}
			})
		}
	}
}

// Readers racing with writes: once a PUT has answered, every GET sees its
// value or a later one, never an older one (a load that read the old row
// before the UPDATE must not be written back after the invalidation).
func TestNoOldValueAfterWrite(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			e := newEnv(t, b.store(t))
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for r := 0; r < 4; r++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						resp, err := e.srv.Client().Get(e.srv.URL + "/users/1")
						if err == nil {
							_, _ = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
					}
				}()
			}
			for i := 1; i <= 20; i++ {
				name := fmt.Sprintf("Name %02d", i)
				if status, _, body := e.do("PUT", "/users/1", `{"name":"`+name+`","email":"ana@example.com"}`); status != http.StatusNoContent {
					t.Fatalf("PUT = %d %s", status, body)
				}
				if _, body := e.get("/users/1"); decodeAs[User](t, body).Name != name {
					t.Fatalf("after PUT %q: GET gave %s", name, body)
				}
			}
			close(stop)
			wg.Wait()
		})
	}
}

// A missing row is 404, and the not-found is cached: a row inserted behind
// the app's back stays unseen until the negative TTL ends.
func TestMissingIsCachedNotFound(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			e := newEnv(t, b.store(t))
			for _, p := range []string{"/users/99", "/experts/99", "/dashboard/99"} {
				if status, src, body := e.do("GET", p, ""); status != http.StatusNotFound || src != "loader" {
					t.Fatalf("first GET %s = %d, X-Cache %s, %s; want 404 from the loader", p, status, src, body)
				}
			}
			e.exec("INSERT INTO users (id, name, email) VALUES (99, 'Late', 'late@example.com')")
			if status, src, body := e.do("GET", "/users/99", ""); status != http.StatusNotFound || src == "loader" {
				t.Fatalf("second GET /users/99 = %d, X-Cache %s, %s; want the cached 404", status, src, body)
			}
		})
	}
}

// Bad input is a 400 (or 404 for a missing row), never a 500, and changes
// nothing: no row written, no cached value dropped.
func TestBadInput(t *testing.T) {
	e := newEnv(t, backends[0].store(t))
	before := e.warm("/experts/1")
	tests := []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/users/abc", "", 400},
		{"GET", "/users/0", "", 400},
		{"GET", "/dashboard/-1", "", 400},
		{"PUT", "/users/1", `not json`, 400},
		{"PUT", "/users/1", `{"name":""}`, 400},
		{"PUT", "/users/1", `{"name":"X","email":"x@example.com","admin":true}`, 400},
		{"PUT", "/users/1", `{"name":"X","email":"x@example.com"} trailing`, 400},
		{"PUT", "/users/99", `{"name":"X","email":"x@example.com"}`, 404},
		{"PUT", "/events/99", `{"title":"X","minutes":30,"priceCents":1}`, 404},
		{"PUT", "/events/1", `{"title":"X","minutes":0,"priceCents":1}`, 400},
		{"POST", "/experts/1/availability", `{"weekday":9,"starts":"08:00","ends":"09:00"}`, 400},
		{"POST", "/experts/1/availability", `{"weekday":1,"starts":"25:00","ends":"26:00"}`, 400},
		{"POST", "/experts/99/availability", `{"weekday":1,"starts":"08:00","ends":"09:00"}`, 404},
		{"POST", "/bookings", `{"eventId":1,"userId":99,"startsAt":"2030-01-01T10:00:00Z"}`, 400},
		{"POST", "/bookings", `{"eventId":99,"userId":2,"startsAt":"2030-01-01T10:00:00Z"}`, 404},
		{"POST", "/bookings", `{"eventId":1,"userId":2,"startsAt":"tomorrow"}`, 400},
		{"POST", "/bookings", strings.Repeat(" ", 70<<10) + `{}`, 400},
	}
	for _, tt := range tests {
		status, _, body := e.do(tt.method, tt.path, tt.body)
		if status != tt.want {
			t.Errorf("%s %s %.40q = %d %s, want %d", tt.method, tt.path, tt.body, status, body, tt.want)
		}
	}
	var users, events, slots, bookings int
	err := e.db.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM users WHERE name = 'X'),
		(SELECT count(*) FROM events WHERE title = 'X'), (SELECT count(*) FROM availability),
		(SELECT count(*) FROM bookings)`).Scan(&users, &events, &slots, &bookings)
	if err != nil {
		t.Fatal(err)
	}
	if users != 0 || events != 0 || slots != 2 || bookings != 3 {
		t.Errorf("bad input wrote rows: %d users, %d events renamed, %d slots (want 2), %d bookings (want 3)", users, events, slots, bookings)
	}
	if src, body := e.get("/experts/1"); src != "local" || !bytes.Equal(body, before) {
		t.Errorf("bad input dropped the cached profile: X-Cache %s", src)
	}
}

// Without a database the program starts nothing and says what to do.
func TestRunNeedsADatabase(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "set DATABASE_URL"},
		{[]string{"-dev"}, map[string]string{"DATABASE_URL": "postgres://x"}, "-dev starts its own database"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		err := run(context.Background(), tt.args, func(k string) string { return tt.env[k] }, &stderr)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want an error saying %q", tt.args, err, tt.want)
		}
	}
}

// The README's one command: -dev starts a throwaway PostgreSQL, seeds it and
// serves; cancelling stops the server and removes the database's directory.
func TestRunDev(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-dev", "-addr", "127.0.0.1:0"}, func(string) string { return "" }, logs)
	}()

	serving := regexp.MustCompile(`url=(http://127\.0\.0\.1:\d+)`)
	deadline := time.Now().Add(60 * time.Second)
	var base string
	for base == "" {
		select {
		case err := <-errc:
			t.Fatalf("run returned %v before serving; log:\n%s", err, logs)
		case <-time.After(20 * time.Millisecond):
		}
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			base = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("not serving after 60s; log:\n%s", logs)
		}
	}
	resp, err := http.Get(base + "/experts/1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cache") != "loader" || decodeAs[Profile](t, body).Name != "Dr. Ana Costa" {
		t.Fatalf("GET /experts/1 = %d, X-Cache %q, %s", resp.StatusCode, resp.Header.Get("X-Cache"), body)
	}
	started := regexp.MustCompile(`dsn=\S+127\.0\.0\.1:(\d+)/pgcache\S* dir=(\S+)`).FindStringSubmatch(logs.String())
	if started == nil {
		t.Fatalf("no DSN and directory in the log:\n%s", logs)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of cancel")
	}
	if _, err := os.Stat(started[2]); !os.IsNotExist(err) {
		t.Errorf("the throwaway PostgreSQL's directory %s is left after run returned: %v", started[2], err)
	}
	if conn, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:"+started[1]+"/pgcache?sslmode=disable&connect_timeout=2"); err == nil {
		err = conn.Ping(context.Background())
		conn.Close()
		if err == nil {
			t.Fatal("the throwaway PostgreSQL still answers after run returned")
		}
	}
}

// syncBuffer is a bytes.Buffer that run's logger and the test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
