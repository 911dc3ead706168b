package session

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/lograte"
	"github.com/elevacare/eleva-redis/internal/seal"
)

// This file is the part of the Store both backends share: argument checks,
// key derivation, role encoding, sealing, deadlines, error wrapping, metrics
// and logs. A backend (memory.go, redis.go) implements only the storage
// operations of the backend interface on prepared records, so validation,
// encryption and errors are identical on both by construction; the
// conformance suite checks the storage semantics.

// Key capabilities (the segment after the prefix).
const (
	capSession = "sess"
	capUser    = "sess-user"
)

// names derives backend keys. The memory backend uses the same strings as
// its map keys, so both backends are keyed alike.
type names struct{ kb keys.Builder }

// member is the session's key-safe id: its entry in the user index and
// the hash tag of its key.
func (n names) member(id string) string { return n.kb.ID(id) }

// session is "<prefix>sess:{ID(id)}".
func (n names) session(id string) string { return n.sessionOf(n.member(id)) }

// sessionOf is the key of an index member.
func (n names) sessionOf(member string) string { return n.kb.RawKey(capSession, member) }

// user is "<prefix>sess-user:{ID(userID)}", the user's index.
func (n names) user(userID string) string { return n.kb.Key(capUser, userID) }

// record is a session as a backend stores it: roles as their JSON text,
// DeviceInfo and Preferences sealed (or plain without a keyring), times in
// Unix milliseconds of the backend's clock.
type record struct {
	id           string
	userID       string
	roles        string
	deviceInfo   []byte
	preferences  []byte
	createdAt    int64
	lastActivity int64
	idle         int64 // ms
	absExpiry    int64
}

// expiresAt is the end of the session without further activity.
func (r record) expiresAt() int64 { return min(r.lastActivity+r.idle, r.absExpiry) }

// patch is an Update as a backend applies it: nil fields are unchanged.
type patch struct {
	roles       *string
	deviceInfo  []byte
	preferences []byte
}

// cached is the part of a session HasRole and Touch read, possibly from a
// local cache.
type cached struct {
	roles        string
	lastActivity int64
	idle         int64
}

// backend is the storage a Store runs on. Keys come from names; values
// arrive sealed. Methods report a missing session with found == false, and
// Rotate's outcomes with the package's sentinels (ErrNotFound, ErrExists,
// ErrConflict, or whatever reseal returns); any other error is a backend
// failure.
type backend interface {
	// create stores r under id (replacing any session there) with
	// lifetime ttl and idle timeout r.idle, indexes it under r.userID,
	// and returns it with the backend's times filled in.
	create(ctx context.Context, r record, ttl time.Duration) (record, error)
	// get reads the live session id.
	get(ctx context.Context, id string) (rec record, found bool, err error)
	// peek reads the roles and activity of the live session id, from a
	// local cache where the backend has one.
	peek(ctx context.Context, id string) (c cached, found bool, err error)
	// update applies p and records activity now.
	update(ctx context.Context, id string, p patch) (rec record, found bool, err error)
	// touch records activity now unless the last activity is more recent
	// than every (the throttle, checked atomically with the write).
	touch(ctx context.Context, id string, every time.Duration) (found bool, err error)
	// del deletes the session id.
	del(ctx context.Context, id string) error
	// rotate moves oldID to newID, passing the copy through reseal (which
	// re-seals its values for newID) before it is stored.
	rotate(ctx context.Context, oldID, newID string, reseal func(*record) error) (record, error)
	// list returns the user's live sessions, in any order.
	list(ctx context.Context, userID string) ([]record, error)
	// revokeUser deletes the user's sessions and counts them.
	revokeUser(ctx context.Context, userID string) (int, error)
	// setUserRoles sets the roles of the user's live sessions and counts
	// them.
	setUserRoles(ctx context.Context, userID, roles string) (int, error)
}

// store implements Store on a backend.
type store struct {
	b       backend
	keyring *seal.Keyring
	ttl     time.Duration
	idle    time.Duration
	touchEv time.Duration
	timeout time.Duration
	metrics *metrics
	log     *failLog
	// cfgErr, when set, is returned by every call: the constructors have no
	// error result, and a bad configuration must neither panic nor silently
	// use another key space.
	cfgErr error
}

var _ Store = (*store)(nil)

// newStore validates cfg and builds the store; mk builds the backend on the
// store's key names. extraErr is a backend's own configuration problem.
func newStore(cfg Config, backendName string, m *metrics, mk func(names) backend, extraErr error) *store {
	s := &store{
		keyring: cfg.Keyring,
		ttl:     cfg.ttl(),
		idle:    cfg.idleTimeout(),
		touchEv: cfg.touchInterval(),
		timeout: cfg.timeout(),
		metrics: m,
		log:     newFailLog(cfg.logger(), backendName),
	}
	kb, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	switch {
	case err != nil:
		s.cfgErr = fmt.Errorf("%w: %w", ErrBackend, err)
	case extraErr != nil:
		s.cfgErr = extraErr
	case cfg.TTL < 0 || cfg.TTL > MaxTTL || cfg.IdleTimeout < 0 || cfg.IdleTimeout > MaxTTL:
		s.cfgErr = fmt.Errorf("%w: Config.TTL and Config.IdleTimeout must be between 0 (the default) and %s", ErrBackend, MaxTTL)
	case cfg.TouchInterval < 0 || cfg.CacheTTL < 0 || cfg.Timeout < 0:
		s.cfgErr = fmt.Errorf("%w: Config.TouchInterval, CacheTTL and Timeout must not be negative", ErrBackend)
	}
	if s.cfgErr != nil {
		cfg.logger().Error("session: unusable store configuration; every call will fail", "backend", backendName, "err", s.cfgErr.Error())
		kb = keys.MustNew("", nil) // never used: every call fails first
	}
	s.b = mk(names{kb: kb})
	return s
}

// Operation names: the op label of the metrics and the context of errors.
const (
	opCreate       = "create"
	opGet          = "get"
	opUpdate       = "update"
	opTouch        = "touch"
	opHasRole      = "has_role"
	opDelete       = "delete"
	opRotate       = "rotate"
	opList         = "list"
	opRevokeUser   = "revoke_user"
	opSetUserRoles = "set_user_roles"
)

func (s *store) Create(ctx context.Context, id string, ns NewSession) (sess Session, err error) {
	defer s.count(opCreate, &err)
	if err = s.check(opCreate, "id", id, MaxIDLen); err != nil {
		return Session{}, err
	}
	if err = checkString(opCreate, "userId", ns.UserID, MaxUserIDLen); err != nil {
		return Session{}, err
	}
	roles, err := encodeRoles(opCreate, ns.Roles)
	if err != nil {
		return Session{}, err
	}
	if err = checkField(opCreate, "deviceInfo", ns.DeviceInfo); err != nil {
		return Session{}, err
	}
	if err = checkField(opCreate, "preferences", ns.Preferences); err != nil {
		return Session{}, err
	}
	ttl, err := durationOr(opCreate, "ttl", ns.TTL, s.ttl)
	if err != nil {
		return Session{}, err
	}
	idle, err := durationOr(opCreate, "idleTimeout", ns.IdleTimeout, s.idle)
	if err != nil {
		return Session{}, err
	}
	r := record{
		id:          id,
		userID:      ns.UserID,
		roles:       roles,
		deviceInfo:  s.keyring.Seal(ns.DeviceInfo, adFor(id, fieldDeviceInfo)),
		preferences: s.keyring.Seal(ns.Preferences, adFor(id, fieldPreferences)),
		idle:        idle.Milliseconds(),
	}
	err = s.call(ctx, opCreate, false, func(ctx context.Context) error {
		var err error
		r, err = s.b.create(ctx, r, ttl)
		return err
	})
	if err != nil {
		return Session{}, err
	}
	return s.session(opCreate, r)
}

func (s *store) Get(ctx context.Context, id string) (sess Session, err error) {
	defer s.count(opGet, &err)
	if err = s.check(opGet, "id", id, MaxIDLen); err != nil {
		return Session{}, err
	}
	return s.get(ctx, opGet, id)
}

func (s *store) get(ctx context.Context, op, id string) (Session, error) {
	var r record
	var found bool
	err := s.call(ctx, op, false, func(ctx context.Context) error {
		var err error
		r, found, err = s.b.get(ctx, id)
		return err
	})
	if err != nil {
		return Session{}, err
	}
	if !found {
		return Session{}, fmt.Errorf("%w: %s", ErrNotFound, op)
	}
	return s.session(op, r)
}

func (s *store) Update(ctx context.Context, id string, u Update) (sess Session, err error) {
	defer s.count(opUpdate, &err)
	if err = s.check(opUpdate, "id", id, MaxIDLen); err != nil {
		return Session{}, err
	}
	var p patch
	if u.Roles != nil {
		roles, err := encodeRoles(opUpdate, u.Roles)
		if err != nil {
			return Session{}, err
		}
		p.roles = &roles
	}
	if u.DeviceInfo != nil {
		if err = checkField(opUpdate, "deviceInfo", u.DeviceInfo); err != nil {
			return Session{}, err
		}
		p.deviceInfo = s.keyring.Seal(u.DeviceInfo, adFor(id, fieldDeviceInfo))
		if p.deviceInfo == nil {
			p.deviceInfo = []byte{} // a non-nil empty value clears the field
		}
	}
	if u.Preferences != nil {
		if err = checkField(opUpdate, "preferences", u.Preferences); err != nil {
			return Session{}, err
		}
		p.preferences = s.keyring.Seal(u.Preferences, adFor(id, fieldPreferences))
		if p.preferences == nil {
			p.preferences = []byte{}
		}
	}
	if p.roles == nil && p.deviceInfo == nil && p.preferences == nil {
		return s.get(ctx, opUpdate, id)
	}
	var r record
	var found bool
	err = s.call(ctx, opUpdate, false, func(ctx context.Context) error {
		var err error
		r, found, err = s.b.update(ctx, id, p)
		return err
	})
	if err != nil {
		return Session{}, err
	}
	if !found {
		return Session{}, fmt.Errorf("%w: %s", ErrNotFound, opUpdate)
	}
	return s.session(opUpdate, r)
}

func (s *store) Touch(ctx context.Context, id string) (err error) {
	defer s.count(opTouch, &err)
	if err = s.check(opTouch, "id", id, MaxIDLen); err != nil {
		return err
	}
	var found bool
	err = s.call(ctx, opTouch, false, func(ctx context.Context) error {
		var err error
		found, err = s.b.touch(ctx, id, s.touchEv)
		return err
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrNotFound, opTouch)
	}
	return nil
}

// touchEvery is the throttle interval of a session with idle timeout idle
// (ms): at most every, and at most half the idle timeout, so an active
// session never expires because its touches were skipped.
func touchEvery(every time.Duration, idle int64) int64 {
	return min(every.Milliseconds(), idle/2)
}

func (s *store) HasRole(ctx context.Context, id, role string) (has bool, err error) {
	defer s.count(opHasRole, &err)
	if err = s.check(opHasRole, "id", id, MaxIDLen); err != nil {
		return false, err
	}
	if err = checkString(opHasRole, "role", role, MaxRoleLen); err != nil {
		return false, err
	}
	var c cached
	var found bool
	err = s.call(ctx, opHasRole, false, func(ctx context.Context) error {
		var err error
		c, found, err = s.b.peek(ctx, id)
		return err
	})
	if err != nil {
		return false, err
	}
	if !found {
		return false, fmt.Errorf("%w: %s", ErrNotFound, opHasRole)
	}
	roles, err := s.decodeRoles(opHasRole, c.roles)
	if err != nil {
		return false, err
	}
	return slices.Contains(roles, role), nil
}

func (s *store) Delete(ctx context.Context, id string) (err error) {
	defer s.count(opDelete, &err)
	if err = s.check(opDelete, "id", id, MaxIDLen); err != nil {
		return err
	}
	return s.call(ctx, opDelete, true, func(ctx context.Context) error { return s.b.del(ctx, id) })
}

func (s *store) Rotate(ctx context.Context, oldID, newID string) (sess Session, err error) {
	defer s.count(opRotate, &err)
	if err = s.check(opRotate, "oldId", oldID, MaxIDLen); err != nil {
		return Session{}, err
	}
	if err = checkString(opRotate, "newId", newID, MaxIDLen); err != nil {
		return Session{}, err
	}
	if oldID == newID {
		return Session{}, fmt.Errorf("%w: %s: the new id must differ from the old one", ErrInvalidArgument, opRotate)
	}
	// The sealed values are bound to the session id, so the copy is
	// re-sealed for newID (under the current key: rotation also moves
	// values off retired keys). The plaintext exists only in this call.
	reseal := func(r *record) error {
		for _, f := range []struct {
			name string
			v    *[]byte
		}{{fieldDeviceInfo, &r.deviceInfo}, {fieldPreferences, &r.preferences}} {
			pt, err := s.keyring.Open(*f.v, adFor(oldID, f.name))
			if err != nil {
				return fmt.Errorf("%w: %s: %w", ErrUnreadable, opRotate, err)
			}
			*f.v = s.keyring.Seal(pt, adFor(newID, f.name))
		}
		r.id = newID
		return nil
	}
	var r record
	err = s.call(ctx, opRotate, true, func(ctx context.Context) error {
		var err error
		r, err = s.b.rotate(ctx, oldID, newID, reseal)
		return err
	})
	if err != nil {
		return Session{}, err
	}
	return s.session(opRotate, r)
}

func (s *store) List(ctx context.Context, userID string) (out []Session, err error) {
	defer s.count(opList, &err)
	if err = s.check(opList, "userId", userID, MaxUserIDLen); err != nil {
		return nil, err
	}
	var recs []record
	err = s.call(ctx, opList, false, func(ctx context.Context) error {
		var err error
		recs, err = s.b.list(ctx, userID)
		return err
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(recs, func(a, b record) int {
		return cmp.Or(cmp.Compare(a.createdAt, b.createdAt), cmp.Compare(a.id, b.id))
	})
	out = make([]Session, 0, len(recs))
	for _, r := range recs {
		sess, err := s.session(opList, r)
		if err != nil {
			return nil, err
		}
		out = append(out, sess)
	}
	return out, nil
}

func (s *store) RevokeUser(ctx context.Context, userID string) (n int, err error) {
	defer s.count(opRevokeUser, &err)
	if err = s.check(opRevokeUser, "userId", userID, MaxUserIDLen); err != nil {
		return 0, err
	}
	err = s.call(ctx, opRevokeUser, true, func(ctx context.Context) error {
		var err error
		n, err = s.b.revokeUser(ctx, userID)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

func (s *store) SetUserRoles(ctx context.Context, userID string, roles []string) (n int, err error) {
	defer s.count(opSetUserRoles, &err)
	if err = s.check(opSetUserRoles, "userId", userID, MaxUserIDLen); err != nil {
		return 0, err
	}
	enc, err := encodeRoles(opSetUserRoles, roles)
	if err != nil {
		return 0, err
	}
	err = s.call(ctx, opSetUserRoles, true, func(ctx context.Context) error {
		var err error
		n, err = s.b.setUserRoles(ctx, userID, enc)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// session turns a record into a Session, opening its sealed values.
func (s *store) session(op string, r record) (Session, error) {
	roles, err := s.decodeRoles(op, r.roles)
	if err != nil {
		return Session{}, err
	}
	sess := Session{
		ID:                r.id,
		UserID:            r.userID,
		Roles:             roles,
		CreatedAt:         time.UnixMilli(r.createdAt),
		LastActivityAt:    time.UnixMilli(r.lastActivity),
		ExpiresAt:         time.UnixMilli(r.expiresAt()),
		IdleTimeout:       time.Duration(r.idle) * time.Millisecond,
		AbsoluteExpiresAt: time.UnixMilli(r.absExpiry),
	}
	if sess.DeviceInfo, err = s.open(op, r.deviceInfo, r.id, fieldDeviceInfo); err != nil {
		return Session{}, err
	}
	if sess.Preferences, err = s.open(op, r.preferences, r.id, fieldPreferences); err != nil {
		return Session{}, err
	}
	return sess, nil
}

// Sealed fields, part of the additional data their values are bound to.
const (
	fieldDeviceInfo  = "deviceInfo"
	fieldPreferences = "preferences"
)

// adFor is the additional data of a sealed field: the session id and the
// field, encoded injectively (each part preceded by its length), so a value
// copied to another session or another field does not open.
func adFor(id, field string) []byte {
	const tag = "eleva-session\x00"
	b := make([]byte, 0, len(tag)+2*binary.MaxVarintLen64+len(id)+len(field))
	b = append(b, tag...)
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	b = binary.AppendUvarint(b, uint64(len(field)))
	return append(b, field...)
}

// open unseals a stored value; empty comes back nil.
func (s *store) open(op string, v []byte, id, field string) ([]byte, error) {
	pt, err := s.keyring.Open(v, adFor(id, field))
	if err != nil {
		s.log.failure(op, err)
		return nil, fmt.Errorf("%w: %s: %s: %w", ErrUnreadable, op, field, err)
	}
	if len(pt) == 0 {
		return nil, nil
	}
	return pt, nil
}

// encodeRoles checks roles, drops duplicates (keeping the first) and
// returns the JSON array the backends store.
func encodeRoles(op string, roles []string) (string, error) {
	out := make([]string, 0, len(roles))
	for _, r := range roles {
		if err := checkString(op, "roles", r, MaxRoleLen); err != nil {
			return "", err
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
		if len(out) > MaxRoles {
			return "", fmt.Errorf("%w: %s: more than %d roles", ErrInvalidArgument, op, MaxRoles)
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		// Valid UTF-8 strings always marshal.
		return "", fmt.Errorf("%w: %s: roles: %w", ErrInvalidArgument, op, err)
	}
	return string(b), nil
}

// decodeRoles parses stored roles. Only this package writes them, so a
// failure means someone else wrote the key: a backend problem, never a
// guess at the roles.
func (s *store) decodeRoles(op, enc string) ([]string, error) {
	var roles []string
	if err := json.Unmarshal([]byte(enc), &roles); err != nil {
		s.log.failure(op, err)
		return nil, fmt.Errorf("%w: %s: stored roles are malformed", ErrBackend, op)
	}
	if roles == nil {
		roles = []string{}
	}
	return roles, nil
}

// --- checks ---

// check checks the first argument of every method, then the configuration.
func (s *store) check(op, field, v string, maxLen int) error {
	if err := checkString(op, field, v, maxLen); err != nil {
		return err
	}
	return s.cfgErr
}

func checkString(op, field, v string, maxLen int) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: %s: %s must not be empty", ErrInvalidArgument, op, field)
	case len(v) > maxLen:
		return fmt.Errorf("%w: %s: %s longer than %d bytes", ErrInvalidArgument, op, field, maxLen)
	case !utf8.ValidString(v):
		return fmt.Errorf("%w: %s: %s is not valid UTF-8", ErrInvalidArgument, op, field)
	}
	return nil
}

func checkField(op, field string, v []byte) error {
	if len(v) > MaxFieldSize {
		return fmt.Errorf("%w: %s: %s is %d bytes, more than %d", ErrInvalidArgument, op, field, len(v), MaxFieldSize)
	}
	return nil
}

// durationOr returns d, or def when d is 0, checking the range.
func durationOr(op, field string, d, def time.Duration) (time.Duration, error) {
	if d == 0 {
		return def, nil
	}
	if d < MinTTL || d > MaxTTL {
		return 0, fmt.Errorf("%w: %s: %s must be between %s and %s, got %s", ErrInvalidArgument, op, field, MinTTL, MaxTTL, d)
	}
	return d, nil
}

// --- backend calls ---

// call runs fn with a deadline of Config.Timeout. With detach the call runs
// even when ctx is already cancelled (Delete, Rotate, RevokeUser,
// SetUserRoles: a logout or a privilege change must not be lost to a client
// that went away, and a multi-step change should not stop half-way).
//
// The package's own sentinels pass through; any other failure is
// ErrBackend, except that a call abandoned because the caller's own ctx
// ended returns that ctx's error (wrapped): it says nothing about the
// backend. Either way the caller gets an error, never a guess.
func (s *store) call(ctx context.Context, op string, detach bool, fn func(context.Context) error) error {
	parent := ctx
	if detach {
		parent = context.WithoutCancel(ctx)
	} else if err := ctx.Err(); err != nil {
		return fmt.Errorf("session: %s: %w", op, err)
	}
	cctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	err := fn(cctx)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrExists), errors.Is(err, ErrConflict), errors.Is(err, ErrUnreadable):
		if errors.Is(err, ErrUnreadable) {
			s.log.failure(op, err)
		}
		return err
	case !detach && ctx.Err() != nil:
		return fmt.Errorf("session: %s: %w", op, ctx.Err())
	}
	s.log.failure(op, err)
	return fmt.Errorf("%w: %s: %w", ErrBackend, op, err)
}

// count records the outcome of op in the metrics.
func (s *store) count(op string, errp *error) {
	s.metrics.countOp(op, outcomeOf(*errp))
}

// failLog logs backend failures at most once per lograte.DefaultEvery, with the number
// of failures in between: an outage at thousands of requests per second must
// not flood the log. Ids, user ids, roles and values are never logged (they
// are health data): only the operation and the error, which this package
// builds without them.
type failLog struct {
	lim     *lograte.Limiter
	backend string
}

func newFailLog(log *slog.Logger, backend string) *failLog {
	return &failLog{lim: lograte.New(log, 0), backend: backend}
}

func (l *failLog) failure(op string, err error) {
	level := slog.LevelWarn
	if errors.Is(err, seal.ErrCorrupt) || errors.Is(err, seal.ErrUnknownKey) || errors.Is(err, ErrUnreadable) {
		level = slog.LevelError
	}
	l.lim.Log(level, "session: call failed; the caller gets an error (fail closed)",
		"backend", l.backend, "op", op, "err", err.Error())
}
