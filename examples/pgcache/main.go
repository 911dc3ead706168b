// Command pgcache caches PostgreSQL queries with the cache package: a user,
// an expert's profile (with events and availability) and an expert's
// dashboard aggregate, behind a tiny HTTP API whose writes invalidate exactly
// what they change. Every GET answers with X-Cache: local|redis|loader, so
// you can watch the cache work.
//
//	go run ./examples/pgcache -dev               # a throwaway PostgreSQL, memory cache
//	DATABASE_URL=postgres://... go run ./examples/pgcache
//	REDIS_URL=redis://127.0.0.1:6379 go run ./examples/pgcache -dev
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/internal/pgtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "pgcache:", err)
		os.Exit(1)
	}
}

// run is the whole program; main only adds the process.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("pgcache", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("db", getenv("DATABASE_URL"), "PostgreSQL DSN (default $DATABASE_URL)")
	redisURL := fs.String("redis", getenv("REDIS_URL"), "Redis URL (default $REDIS_URL); empty: in-process memory cache")
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	dev := fs.Bool("dev", false, "start a throwaway PostgreSQL (Debian's postgresql package) for this run; its data goes when it stops")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil // -h: the usage is printed
	} else if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	switch {
	case *dev && *dsn != "":
		return errors.New("-dev starts its own database: unset DATABASE_URL (or -db) or drop -dev")
	case *dev:
		srv, err := pgtest.Start("")
		if err != nil {
			return err
		}
		defer srv.Stop()
		if err := srv.CreateDatabase(ctx, "pgcache"); err != nil {
			return err
		}
		*dsn = srv.URL("pgcache")
		log.Info("started a throwaway PostgreSQL", "dsn", *dsn, "dir", srv.Dir)
	case *dsn == "":
		// Starting a database behind the user's back would surprise them.
		return errors.New("no database: set DATABASE_URL (or -db) to a PostgreSQL DSN, " +
			"or pass -dev to start a throwaway PostgreSQL for this run")
	}

	db, err := pgxpool.New(ctx, *dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := setup(ctx, db); err != nil {
		return fmt.Errorf("schema: %w", err)
	}

	var store *cache.Store
	if *redisURL == "" {
		store = cache.NewMemoryStore(cache.StoreConfig{Logger: log})
	} else {
		opt, err := rueidis.ParseURL(*redisURL)
		if err != nil {
			return err
		}
		// The Tracker keeps every instance's local copies coherent by
		// Redis server-assisted client-side caching.
		tr := cache.NewTracker()
		opt.OnInvalidations = tr.OnInvalidations
		client, err := rueidis.NewClient(opt)
		if err != nil {
			return err
		}
		defer client.Close()
		store = cache.NewRedisStore(client, cache.StoreConfig{Tracker: tr, Logger: log})
	}
	defer store.Close()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: newApp(db, store, log).routes(), ReadHeaderTimeout: 5 * time.Second}
	log.Info("serving", "url", "http://"+ln.Addr().String(), "cache", store.Mode(),
		"try", "curl -i http://"+ln.Addr().String()+"/experts/1")
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	}
}

// schema.sql runs at every start (IF NOT EXISTS) and seed.sql when the users
// table is empty, under an advisory lock so that instances starting together
// do not race.
var (
	//go:embed schema.sql
	schema string
	//go:embed seed.sql
	seed string
)

func setup(ctx context.Context, db *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(7291)"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, schema); err != nil {
			return err
		}
		var seeded bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users)").Scan(&seeded); err != nil || seeded {
			return err
		}
		_, err := tx.Exec(ctx, seed)
		return err
	})
}

// User is one row of users.
type User struct {
	ID    int64  `json:"id" db:"id"`
	Name  string `json:"name" db:"name"`
	Email string `json:"email" db:"email"`
}

// Event is a kind of session an expert offers.
type Event struct {
	ID         int64  `json:"id" db:"id"`
	Title      string `json:"title" db:"title"`
	Minutes    int    `json:"minutes" db:"minutes"`
	PriceCents int    `json:"priceCents" db:"price_cents"`
}

// Slot is a weekly availability window.
type Slot struct {
	Weekday int    `json:"weekday" db:"weekday"`
	Starts  string `json:"starts" db:"starts"`
	Ends    string `json:"ends" db:"ends"`
}

// Profile is an expert's public page: three queries, cached as one value.
type Profile struct {
	ID           int64   `json:"id"`
	Name         string  `json:"name"`
	Headline     string  `json:"headline"`
	Events       []Event `json:"events"`
	Availability []Slot  `json:"availability"`
}

// Dashboard is the expensive aggregate of an expert's bookings.
type Dashboard struct {
	ExpertID     int64      `json:"expertId"`
	Bookings     int64      `json:"bookings"`
	RevenueCents int64      `json:"revenueCents"`
	NextAt       *time.Time `json:"nextAt"`
	NextTitle    *string    `json:"nextTitle"`
}

type app struct {
	db         *pgxpool.Pool
	store      *cache.Store
	users      *cache.Cache[User]
	profiles   *cache.Cache[Profile]
	dashboards *cache.Cache[Dashboard]
	log        *slog.Logger
}

func newApp(db *pgxpool.Pool, store *cache.Store, log *slog.Logger) *app {
	return &app{
		db:         db,
		store:      store,
		users:      cache.New(store, cache.Config[User]{Namespace: "user", TTL: time.Minute}),
		profiles:   cache.New(store, cache.Config[Profile]{Namespace: "profile", TTL: time.Minute}),
		dashboards: cache.New(store, cache.Config[Dashboard]{Namespace: "dashboard", TTL: 30 * time.Second}),
		log:        log,
	}
}

// A read must pass the same options as every other read of its key (tags are
// part of what makes a value valid), hence one function per kind of value.
// Profiles and dashboards carry the expert's tag, so one InvalidateTags
// reaches both; the dashboard is served stale for up to 5 minutes while one
// background refresh runs, and is refreshed early (XFetch) when it is slow.
func expertTag(id int64) string { return "expert:" + strconv.FormatInt(id, 10) }

func profileOpts(id int64) []cache.Option { return []cache.Option{cache.Tags(expertTag(id))} }

func dashboardOpts(id int64) []cache.Option {
	return []cache.Option{cache.Tags(expertTag(id)), cache.StaleFor(5 * time.Minute), cache.EarlyRefresh(1)}
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", a.getUser)
	mux.HandleFunc("GET /experts/{id}", a.getProfile)
	mux.HandleFunc("GET /dashboard/{id}", a.getDashboard)
	mux.HandleFunc("PUT /users/{id}", a.putUser)
	mux.HandleFunc("PUT /events/{id}", a.putEvent)
	mux.HandleFunc("POST /experts/{id}/availability", a.postSlot)
	mux.HandleFunc("POST /bookings", a.postBooking)
	return mux
}

// notFound makes pgx's "no rows" the cache's not-found, which is cached
// briefly so repeated requests for a missing row do not reach the database.
func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %w", cache.ErrNotFound, err)
	}
	return err
}

func (a *app) getUser(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	u, meta, err := a.users.GetOrLoad(r.Context(), strconv.FormatInt(id, 10), func(ctx context.Context) (User, error) {
		rows, _ := a.db.Query(ctx, "SELECT id, name, email FROM users WHERE id = $1", id)
		u, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[User])
		return u, notFound(err)
	})
	a.reply(w, meta, u, err)
}

func (a *app) getProfile(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	p, meta, err := a.profiles.GetOrLoad(r.Context(), strconv.FormatInt(id, 10), func(ctx context.Context) (Profile, error) {
		p := Profile{ID: id}
		err := a.db.QueryRow(ctx, `SELECT u.name, x.headline FROM experts x JOIN users u ON u.id = x.user_id
			WHERE x.id = $1`, id).Scan(&p.Name, &p.Headline)
		if err != nil {
			return p, notFound(err)
		}
		rows, _ := a.db.Query(ctx, "SELECT id, title, minutes, price_cents FROM events WHERE expert_id = $1 ORDER BY id", id)
		if p.Events, err = pgx.CollectRows(rows, pgx.RowToStructByName[Event]); err != nil {
			return p, err
		}
		rows, _ = a.db.Query(ctx, `SELECT weekday, to_char(starts, 'HH24:MI') AS starts, to_char(ends, 'HH24:MI') AS ends
			FROM availability WHERE expert_id = $1 ORDER BY weekday, starts`, id)
		p.Availability, err = pgx.CollectRows(rows, pgx.RowToStructByName[Slot])
		return p, err
	}, profileOpts(id)...)
	a.reply(w, meta, p, err)
}

func (a *app) getDashboard(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	d, meta, err := a.dashboards.GetOrLoad(r.Context(), strconv.FormatInt(id, 10), func(ctx context.Context) (Dashboard, error) {
		d := Dashboard{ExpertID: id}
		err := a.db.QueryRow(ctx, `
			SELECT s.n, s.revenue, nx.starts_at, nx.title FROM experts x
			CROSS JOIN LATERAL (SELECT count(*) AS n, coalesce(sum(b.amount_cents), 0) AS revenue
				FROM bookings b JOIN events e ON e.id = b.event_id WHERE e.expert_id = x.id) s
			LEFT JOIN LATERAL (SELECT b.starts_at, e.title FROM bookings b JOIN events e ON e.id = b.event_id
				WHERE e.expert_id = x.id AND b.starts_at > now() ORDER BY b.starts_at LIMIT 1) nx ON true
			WHERE x.id = $1`, id).Scan(&d.Bookings, &d.RevenueCents, &d.NextAt, &d.NextTitle)
		return d, notFound(err)
	}, dashboardOpts(id)...)
	a.reply(w, meta, d, err)
}

// Writes change the database first and invalidate afterwards: a load that
// read the old rows before the commit never writes its value back (the cache
// takes away its lease), so the next read sees the new rows.

func (a *app) putUser(w http.ResponseWriter, r *http.Request) {
	var in struct{ Name, Email string }
	id, ok := pathID(w, r)
	if !ok || !decode(w, r, &in) {
		return
	}
	if in.Name == "" || in.Email == "" {
		writeError(w, http.StatusBadRequest, "name and email are required")
		return
	}
	// The expert whose profile shows this user's name, if any.
	var expertID *int64
	err := a.db.QueryRow(r.Context(), `UPDATE users SET name = $2, email = $3 WHERE id = $1
		RETURNING (SELECT x.id FROM experts x WHERE x.user_id = users.id)`, id, in.Name, in.Email).Scan(&expertID)
	if a.failed(w, err) {
		return
	}
	err = a.users.Invalidate(r.Context(), strconv.FormatInt(id, 10))
	if err == nil && expertID != nil {
		err = a.profiles.Invalidate(r.Context(), strconv.FormatInt(*expertID, 10))
	}
	a.written(w, err)
}

func (a *app) putEvent(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Title      string
		Minutes    int
		PriceCents int
	}
	id, ok := pathID(w, r)
	if !ok || !decode(w, r, &in) {
		return
	}
	if in.Title == "" || in.Minutes <= 0 || in.PriceCents < 0 {
		writeError(w, http.StatusBadRequest, "title, minutes > 0 and priceCents >= 0 are required")
		return
	}
	var expertID int64
	err := a.db.QueryRow(r.Context(), `UPDATE events SET title = $2, minutes = $3, price_cents = $4 WHERE id = $1
		RETURNING expert_id`, id, in.Title, in.Minutes, in.PriceCents).Scan(&expertID)
	if a.failed(w, err) {
		return
	}
	// Both the profile (events) and the dashboard (next session's title).
	a.written(w, a.store.InvalidateTags(r.Context(), expertTag(expertID)))
}

func (a *app) postSlot(w http.ResponseWriter, r *http.Request) {
	var in Slot
	id, ok := pathID(w, r)
	if !ok || !decode(w, r, &in) {
		return
	}
	// No expert, no row inserted: pgx.ErrNoRows, a 404.
	err := a.db.QueryRow(r.Context(), `INSERT INTO availability (expert_id, weekday, starts, ends)
		SELECT id, $2, $3::time, $4::time FROM experts WHERE id = $1 RETURNING expert_id`,
		id, in.Weekday, in.Starts, in.Ends).Scan(&id)
	if a.failed(w, err) {
		return
	}
	// Only the profile shows availability: the dashboard stays cached.
	a.written(w, a.profiles.Invalidate(r.Context(), strconv.FormatInt(id, 10)))
}

func (a *app) postBooking(w http.ResponseWriter, r *http.Request) {
	var in struct {
		EventID, UserID int64
		StartsAt        time.Time
	}
	if !decode(w, r, &in) {
		return
	}
	var expertID int64
	err := a.db.QueryRow(r.Context(), `INSERT INTO bookings (event_id, user_id, starts_at, amount_cents)
		SELECT id, $2, $3, price_cents FROM events WHERE id = $1
		RETURNING (SELECT expert_id FROM events WHERE id = $1)`, in.EventID, in.UserID, in.StartsAt).Scan(&expertID)
	if a.failed(w, err) {
		return
	}
	// Only the dashboard counts bookings: the profile stays cached.
	a.written(w, a.dashboards.Invalidate(r.Context(), strconv.FormatInt(expertID, 10)))
}

// reply writes a GET's answer, with where the cache found it.
func (a *app) reply(w http.ResponseWriter, meta cache.Meta, v any, err error) {
	if meta.Source != "" {
		w.Header().Set("X-Cache", string(meta.Source))
	}
	if meta.Stale {
		w.Header().Set("X-Cache-Stale", "true")
	}
	if errors.Is(err, cache.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not found")
		return
	}
	if err != nil {
		a.log.Error("load failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// failed answers a failed write; the row was not changed, so the cache needs
// nothing.
func (a *app) failed(w http.ResponseWriter, err error) bool {
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return false
	case errors.Is(err, pgx.ErrNoRows):
		writeError(w, http.StatusNotFound, "not found")
	case errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "23"): // integrity: e.g. no such user
		writeError(w, http.StatusBadRequest, "violates a constraint: "+pgErr.ConstraintName)
	case errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22"): // data exception: e.g. a bad time
		writeError(w, http.StatusBadRequest, "invalid value: "+pgErr.Message)
	default:
		a.log.Error("write failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
	return true
}

// written answers a committed write. When invalidation failed the cache may
// serve the old value until its TTL ends: say so rather than claim success.
func (a *app) written(w http.ResponseWriter, err error) {
	if err != nil {
		a.log.Error("invalidation failed", "err", err)
		writeError(w, http.StatusServiceUnavailable, "saved, but the cache may serve the old value until it expires")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "id must be a positive integer")
		return 0, false
	}
	return id, true
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.Decode(new(json.RawMessage)) != io.EOF {
		err = errors.New("more than one JSON value")
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
