package tempdata

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/lograte"
	"github.com/elevacare/eleva-redis/internal/seal"
)

// This file is the part of the Store both backends share: argument checks,
// key derivation, sealing, deadlines, error wrapping, metrics and logs. A
// backend (memory.go, redis.go) implements only the storage primitives of
// the backend interface, on keys and values prepared here, so validation,
// encryption and errors are identical on both by construction; the
// conformance suite checks the storage semantics.

// Key capabilities (the segment after the prefix).
const (
	capTemp  = "tmp"
	capToken = "tok"
	capIdem  = "idem"
)

// ref is one logical entry: its backend key and the additional data its
// sealed value is bound to.
type ref struct {
	// key is the Redis key, "<prefix><cap>:{<tag>}"; the memory backend uses
	// it as its map key too.
	key string
	// ad is the logical identity (kind and names, independent of Prefix and
	// KeyHashSecret), the additional data of seal.
	ad []byte
}

// beginCode is the outcome of backend.begin.
type beginCode int

const (
	beginStarted    beginCode = iota + 1 // a new in-progress record was created
	beginInProgress                      // an in-progress record exists
	beginCompleted                       // a completed record exists
	beginMismatch                        // the record has another fingerprint
)

// idemOutcome is the outcome of backend.complete and backend.fail.
type idemOutcome int

const (
	idemDone      idemOutcome = iota + 1 // the in-progress record was completed / deleted
	idemMissing                          // no record
	idemCompleted                        // the record is already completed (left unchanged)
)

// backend is the storage a Store runs on. Values arrive sealed (or plain,
// without a keyring); expiry is the backend's own. Every method is one
// atomic step.
type backend interface {
	// put stores value under k for ttl; with nx only when k is absent
	// (stored reports which). expiresAt is the backend's clock plus ttl.
	put(ctx context.Context, k string, value []byte, ttl time.Duration, nx bool) (expiresAt time.Time, stored bool, err error)
	// get returns the live value of k and its expiry; found false if absent.
	get(ctx context.Context, k string) (value []byte, expiresAt time.Time, found bool, err error)
	// take returns the live value of k and deletes it.
	take(ctx context.Context, k string) (value []byte, found bool, err error)
	// del deletes k.
	del(ctx context.Context, k string) error
	// begin creates an in-progress record {fp} with ttl when k is absent;
	// otherwise reports its state (fingerprint mismatch first, when both
	// fp and the record's are non-empty) and, when completed, its response.
	begin(ctx context.Context, k, fp string, ttl time.Duration) (code beginCode, response []byte, expiresAt time.Time, err error)
	// complete stores response in the in-progress record k and marks it
	// completed; ttl > 0 resets its TTL, 0 keeps it.
	complete(ctx context.Context, k string, response []byte, ttl time.Duration) (idemOutcome, error)
	// fail deletes k when it is an in-progress record.
	fail(ctx context.Context, k string) (idemOutcome, error)
}

// store implements Store on a backend.
type store struct {
	b       backend
	keys    keys.Builder
	keyring *seal.Keyring
	timeout time.Duration
	metrics *metrics
	log     *failLog
	// cfgErr, when set, is returned by every call: the constructors have no
	// error result, and a bad configuration must neither panic nor silently
	// use another key space.
	cfgErr error
}

var _ Store = (*store)(nil)

func newStore(b backend, backendName string, cfg Config, extraErr error) *store {
	s := &store{
		b:       b,
		keyring: cfg.Keyring,
		timeout: cfg.timeout(),
		metrics: newMetrics(cfg.Registerer),
		log:     newFailLog(cfg.logger(), backendName),
	}
	kb, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	switch {
	case err != nil:
		s.cfgErr = fmt.Errorf("%w: %w", ErrBackend, err)
	case extraErr != nil:
		s.cfgErr = extraErr
	}
	if s.cfgErr != nil {
		cfg.logger().Error("tempdata: unusable store configuration; every call will fail", "backend", backendName, "err", s.cfgErr.Error())
	}
	s.keys = kb
	return s
}

// Operation names: the op label of the metrics and the context of errors.
const (
	opPut         = "put"
	opPutIfAbsent = "put_if_absent"
	opGet         = "get"
	opTake        = "take"
	opDelete      = "delete"
	opIssue       = "issue"
	opConsume     = "consume"
	opBegin       = "begin"
	opComplete    = "complete"
	opFail        = "fail"
)

// --- temporary values ---

func (s *store) Put(ctx context.Context, namespace, key string, value []byte, ttl time.Duration) (time.Time, error) {
	return s.put(ctx, opPut, namespace, key, value, ttl, false)
}

func (s *store) PutIfAbsent(ctx context.Context, namespace, key string, value []byte, ttl time.Duration) (time.Time, error) {
	return s.put(ctx, opPutIfAbsent, namespace, key, value, ttl, true)
}

func (s *store) put(ctx context.Context, op, namespace, key string, value []byte, ttl time.Duration, nx bool) (exp time.Time, err error) {
	defer s.count(op, &err)
	if err = s.checkTemp(op, namespace, key); err != nil {
		return time.Time{}, err
	}
	if err = checkTTL(op, ttl); err != nil {
		return time.Time{}, err
	}
	if err = checkValue(op, "value", value); err != nil {
		return time.Time{}, err
	}
	r := s.tempRef(namespace, key)
	sealed := s.keyring.Seal(value, r.ad)
	var stored bool
	err = s.call(ctx, op, false, func(ctx context.Context) error {
		var err error
		exp, stored, err = s.b.put(ctx, r.key, sealed, ttl, nx)
		return err
	})
	if err != nil {
		return time.Time{}, err
	}
	if !stored {
		return time.Time{}, fmt.Errorf("%w: %s: a live value is already stored", ErrExists, op)
	}
	return exp, nil
}

func (s *store) Get(ctx context.Context, namespace, key string) (item Item, err error) {
	defer s.count(opGet, &err)
	if err = s.checkTemp(opGet, namespace, key); err != nil {
		return Item{}, err
	}
	r := s.tempRef(namespace, key)
	var found bool
	err = s.call(ctx, opGet, false, func(ctx context.Context) error {
		var err error
		item.Value, item.ExpiresAt, found, err = s.b.get(ctx, r.key)
		return err
	})
	if err != nil {
		return Item{}, err
	}
	if !found {
		return Item{}, fmt.Errorf("%w: %s", ErrNotFound, opGet)
	}
	if item.Value, err = s.open(opGet, item.Value, r); err != nil {
		return Item{}, err
	}
	return item, nil
}

func (s *store) Take(ctx context.Context, namespace, key string) (v []byte, err error) {
	defer s.count(opTake, &err)
	if err = s.checkTemp(opTake, namespace, key); err != nil {
		return nil, err
	}
	return s.take(ctx, opTake, s.tempRef(namespace, key))
}

// take is the atomic get-and-delete of Take and Consume.
func (s *store) take(ctx context.Context, op string, r ref) ([]byte, error) {
	var v []byte
	var found bool
	err := s.call(ctx, op, false, func(ctx context.Context) error {
		var err error
		v, found, err = s.b.take(ctx, r.key)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, op)
	}
	return s.open(op, v, r)
}

func (s *store) Delete(ctx context.Context, namespace, key string) (err error) {
	defer s.count(opDelete, &err)
	if err = s.checkTemp(opDelete, namespace, key); err != nil {
		return err
	}
	r := s.tempRef(namespace, key)
	return s.call(ctx, opDelete, false, func(ctx context.Context) error { return s.b.del(ctx, r.key) })
}

// --- one-time tokens ---

// tokenBytes is the size of a token's random part: 256 bits.
const tokenBytes = 32

// TokenLen is the length of a token string: 32 bytes in unpadded base64url.
const TokenLen = 43

func (s *store) Issue(ctx context.Context, purpose string, data []byte, ttl time.Duration) (token string, exp time.Time, err error) {
	defer s.count(opIssue, &err)
	if err = s.checkName(opIssue, "purpose", purpose); err != nil {
		return "", time.Time{}, err
	}
	if err = checkTTL(opIssue, ttl); err != nil {
		return "", time.Time{}, err
	}
	if err = checkValue(opIssue, "data", data); err != nil {
		return "", time.Time{}, err
	}
	var raw [tokenBytes]byte
	// crypto/rand.Read never fails: it crashes the program rather than
	// return predictable bytes.
	_, _ = rand.Read(raw[:])
	token = base64.RawURLEncoding.EncodeToString(raw[:])
	r := s.tokenRef(purpose, sha256.Sum256(raw[:]))
	sealed := s.keyring.Seal(data, r.ad)
	var stored bool
	err = s.call(ctx, opIssue, false, func(ctx context.Context) error {
		var err error
		exp, stored, err = s.b.put(ctx, r.key, sealed, ttl, true)
		return err
	})
	if err != nil {
		return "", time.Time{}, err
	}
	if !stored {
		// Two equal 256-bit random tokens: not going to happen, but NX
		// makes sure an existing token is never overwritten if it does.
		return "", time.Time{}, fmt.Errorf("%w: %s: token collision", ErrBackend, opIssue)
	}
	return token, exp, nil
}

func (s *store) Consume(ctx context.Context, purpose, token string) (data []byte, err error) {
	defer s.count(opConsume, &err)
	if err = s.checkName(opConsume, "purpose", purpose); err != nil {
		return nil, err
	}
	digest, ok := parseToken(token)
	if !ok {
		// A malformed token is indistinguishable from a used one.
		return nil, fmt.Errorf("%w: %s", ErrNotFound, opConsume)
	}
	return s.take(ctx, opConsume, s.tokenRef(purpose, digest))
}

// parseToken returns the SHA-256 of a well-formed token's random bytes. Only
// the canonical encoding is accepted (strict base64url, no padding, exactly
// TokenLen characters), so one token has exactly one spelling.
func parseToken(token string) ([sha256.Size]byte, bool) {
	if len(token) != TokenLen {
		return [sha256.Size]byte{}, false
	}
	var raw [tokenBytes + 3]byte // DecodedLen slack
	n, err := base64.RawURLEncoding.Strict().Decode(raw[:], []byte(token))
	if err != nil || n != tokenBytes {
		return [sha256.Size]byte{}, false
	}
	return sha256.Sum256(raw[:tokenBytes]), true
}

// --- idempotency records ---

func (s *store) Begin(ctx context.Context, key, fingerprint string, ttl time.Duration) (rec Record, err error) {
	defer s.count(opBegin, &err)
	if err = s.checkName(opBegin, "key", key); err != nil {
		return Record{}, err
	}
	if len(fingerprint) > MaxNameLen {
		return Record{}, fmt.Errorf("%w: %s: fingerprint longer than %d bytes", ErrInvalidArgument, opBegin, MaxNameLen)
	}
	if err = checkTTL(opBegin, ttl); err != nil {
		return Record{}, err
	}
	r := s.idemRef(key)
	fp := s.fingerprintHash(fingerprint)
	var code beginCode
	var resp []byte
	err = s.call(ctx, opBegin, false, func(ctx context.Context) error {
		var err error
		code, resp, rec.ExpiresAt, err = s.b.begin(ctx, r.key, fp, ttl)
		return err
	})
	if err != nil {
		return Record{}, err
	}
	switch code {
	case beginStarted:
		rec.State = Started
		return rec, nil
	case beginCompleted:
		rec.State = Completed
		if rec.Response, err = s.open(opBegin, resp, r); err != nil {
			return Record{}, err
		}
		return rec, nil
	case beginInProgress:
		return Record{}, fmt.Errorf("%w: %s: another request with this key is running", ErrInProgress, opBegin)
	case beginMismatch:
		return Record{}, fmt.Errorf("%w: %s", ErrFingerprintMismatch, opBegin)
	}
	return Record{}, fmt.Errorf("%w: %s: backend returned unknown state %d", ErrBackend, opBegin, code)
}

func (s *store) Complete(ctx context.Context, key string, response []byte, ttl time.Duration) (err error) {
	defer s.count(opComplete, &err)
	if err = s.checkName(opComplete, "key", key); err != nil {
		return err
	}
	if ttl != 0 {
		if err = checkTTL(opComplete, ttl); err != nil {
			return err
		}
	}
	if err = checkValue(opComplete, "response", response); err != nil {
		return err
	}
	r := s.idemRef(key)
	sealed := s.keyring.Seal(response, r.ad)
	var out idemOutcome
	err = s.call(ctx, opComplete, true, func(ctx context.Context) error {
		var err error
		out, err = s.b.complete(ctx, r.key, sealed, ttl)
		return err
	})
	if err != nil {
		return err
	}
	switch out {
	case idemDone:
		return nil
	case idemMissing:
		return fmt.Errorf("%w: %s: no in-progress record (it expired or failed)", ErrNotFound, opComplete)
	default:
		return fmt.Errorf("%w: %s: the record is already completed", ErrExists, opComplete)
	}
}

func (s *store) Fail(ctx context.Context, key string) (err error) {
	defer s.count(opFail, &err)
	if err = s.checkName(opFail, "key", key); err != nil {
		return err
	}
	r := s.idemRef(key)
	var out idemOutcome
	err = s.call(ctx, opFail, true, func(ctx context.Context) error {
		var err error
		out, err = s.b.fail(ctx, r.key)
		return err
	})
	if err != nil {
		return err
	}
	if out == idemCompleted {
		return fmt.Errorf("%w: %s: the record is already completed and is kept", ErrExists, opFail)
	}
	return nil
}

// fingerprintHash is what is stored of a fingerprint: its HMAC under
// KeyHashSecret, or its SHA-256 without one, so that a fingerprint derived
// from a low-entropy request body cannot be read back from the store; "" for
// no fingerprint.
func (s *store) fingerprintHash(fp string) string {
	if fp == "" {
		return ""
	}
	if s.keys.Hashed() {
		// ID is the HMAC-SHA256 when a secret is configured.
		return s.keys.ID("fp\x00" + fp)
	}
	sum := sha256.Sum256([]byte(fp))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// --- keys and additional data ---

// tempRef is "<prefix>tmp:{ID(namespace)/ID(key)}". The whole identity is
// the hash tag, so the values of one namespace spread over the Cluster
// instead of piling into one slot; ID never produces '/', so the tag is
// unambiguous.
func (s *store) tempRef(namespace, key string) ref {
	return ref{
		key: s.keys.RawKey(capTemp, s.keys.ID(namespace)+"/"+s.keys.ID(key)),
		ad:  logicalID(capTemp, []byte(namespace), []byte(key)),
	}
}

// tokenRef is "<prefix>tok:{ID(purpose)/base64url(SHA-256(token))}".
func (s *store) tokenRef(purpose string, digest [sha256.Size]byte) ref {
	return ref{
		key: s.keys.RawKey(capToken, s.keys.ID(purpose)+"/"+base64.RawURLEncoding.EncodeToString(digest[:])),
		ad:  logicalID(capToken, []byte(purpose), digest[:]),
	}
}

// idemRef is "<prefix>idem:{ID(key)}".
func (s *store) idemRef(key string) ref {
	return ref{
		key: s.keys.RawKey(capIdem, s.keys.ID(key)),
		ad:  logicalID(capIdem, []byte(key)),
	}
}

// logicalID encodes (kind, parts...) injectively: every part is preceded by
// its length, so no two inputs share an encoding.
func logicalID(kind string, parts ...[]byte) []byte {
	n := len("eleva-tempdata\x00") + len(kind)
	for _, p := range parts {
		n += binary.MaxVarintLen64 + len(p)
	}
	b := make([]byte, 0, n)
	b = append(b, "eleva-tempdata\x00"...)
	b = append(b, kind...)
	for _, p := range parts {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	return b
}

// open unseals a stored value.
func (s *store) open(op string, v []byte, r ref) ([]byte, error) {
	pt, err := s.keyring.Open(v, r.ad)
	if err != nil {
		s.log.failure(op, err)
		return nil, fmt.Errorf("%w: %s: %w", ErrUnreadable, op, err)
	}
	return pt, nil
}

// --- checks ---

func (s *store) checkTemp(op, namespace, key string) error {
	if err := s.checkName(op, "namespace", namespace); err != nil {
		return err
	}
	return s.checkName(op, "key", key)
}

// checkName checks a name and the configuration (every method checks a name
// first).
func (s *store) checkName(op, field, v string) error {
	if v == "" {
		return fmt.Errorf("%w: %s: %s must not be empty", ErrInvalidArgument, op, field)
	}
	if len(v) > MaxNameLen {
		return fmt.Errorf("%w: %s: %s longer than %d bytes", ErrInvalidArgument, op, field, MaxNameLen)
	}
	return s.cfgErr
}

func checkTTL(op string, ttl time.Duration) error {
	if ttl < MinTTL || ttl > MaxTTL {
		return fmt.Errorf("%w: %s: ttl must be between %s and %s, got %s", ErrInvalidArgument, op, MinTTL, MaxTTL, ttl)
	}
	return nil
}

func checkValue(op, field string, v []byte) error {
	if len(v) > MaxValueSize {
		return fmt.Errorf("%w: %s: %s is %d bytes, more than %d", ErrInvalidArgument, op, field, len(v), MaxValueSize)
	}
	return nil
}

// --- backend calls ---

// call runs fn with a deadline of Config.Timeout. With detach the call runs
// even when ctx is already cancelled (Complete and Fail: the outcome of a
// finished operation must be recorded whatever the caller does next).
//
// A failure is ErrBackend, except that a call abandoned because the caller's
// own ctx ended returns that ctx's error (wrapped): it says nothing about the
// backend. Either way the caller gets an error, never a guess.
func (s *store) call(ctx context.Context, op string, detach bool, fn func(context.Context) error) error {
	parent := ctx
	if detach {
		parent = context.WithoutCancel(ctx)
	} else if err := ctx.Err(); err != nil {
		return fmt.Errorf("tempdata: %s: %w", op, err)
	}
	cctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	err := fn(cctx)
	if err == nil {
		return nil
	}
	if !detach && ctx.Err() != nil {
		return fmt.Errorf("tempdata: %s: %w", op, ctx.Err())
	}
	s.log.failure(op, err)
	return fmt.Errorf("%w: %s: %w", ErrBackend, op, err)
}

// count records the outcome of op in the metrics.
func (s *store) count(op string, errp *error) {
	s.metrics.count(op, outcomeOf(*errp))
}

// failLog logs backend failures at most once per lograte.DefaultEvery, with the number
// of failures in between: an outage at thousands of requests per second must
// not flood the log. Names and values are never logged (they may hold PHI).
type failLog struct {
	lim     *lograte.Limiter
	backend string
}

func newFailLog(log *slog.Logger, backend string) *failLog {
	return &failLog{lim: lograte.New(log, 0), backend: backend}
}

func (l *failLog) failure(op string, err error) {
	level := slog.LevelWarn
	if errors.Is(err, seal.ErrCorrupt) || errors.Is(err, seal.ErrUnknownKey) {
		level = slog.LevelError
	}
	l.lim.Log(level, "tempdata: call failed; the caller gets an error (fail closed)",
		"backend", l.backend, "op", op, "err", err.Error())
}
