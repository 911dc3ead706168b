package notify

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/rueidis"
)

// maxAckBatch is the most users one ack.lua call carries, so that a call
// stays short (about 25µs of server time per user), like maxClaimBatch.
const maxAckBatch = 32

// ackReq is one Ack in the backend's ack combiner (combine.go): concurrent
// Acks share ack.lua calls, up to maxAckBatch users per call; ten users'
// acks in one call took about half the server time of ten calls
// (docs/notify.md).
type ackReq struct {
	u     userKeys
	token string
	ids   []string
	n     int   // its result: items acked, -1 lease lost
	err   error // or its call's failure
}

func (r *redisBackend) ack(ctx context.Context, b Batch, ids []string) (int, error) {
	req := &ackReq{u: r.user(b.UserID), token: b.Token, ids: ids}
	if err := r.acks.do(ctx, req, r.timeout, r.sendAcks); err != nil {
		return 0, r.combineFailed(ctx, "ack", err)
	}
	if req.err != nil {
		return 0, req.err
	}
	if req.n < 0 {
		return 0, leaseLost("ack")
	}
	return req.n, nil
}

// combineFailed is the error of a call a combiner did not complete.
func (r *redisBackend) combineFailed(ctx context.Context, op string, err error) error {
	switch {
	case errors.Is(err, errWaited):
		err = fmt.Errorf("%w: waited %s for a shared round", context.DeadlineExceeded, r.timeout)
	case errors.Is(err, errNoReply):
		err = fmt.Errorf("%w: no reply within %s", context.DeadlineExceeded, r.timeout)
	}
	return r.fail(ctx, op, err)
}

// sendAcks sends one round of Acks (calls as groupCalls allows, in one
// pipeline).
func (r *redisBackend) sendAcks(ctx context.Context, reqs []*ackReq) {
	groups := r.groupCalls(len(reqs), maxAckBatch, func(i int) string { return reqs[i].u.tag })
	calls := make([]call, len(groups))
	for j, g := range groups {
		ks := make([]string, 0, 7*len(g))
		args := []string{strconv.Itoa(r.deliveredCap)}
		for _, i := range g {
			q := reqs[i]
			u := q.u
			ks = append(ks, u.due, u.queue, u.inflight, u.lease, u.data, u.statsKey, u.done)
			args = append(args, u.uid, q.token, strconv.Itoa(len(q.ids)))
			args = append(args, q.ids...)
		}
		calls[j] = call{s: scriptAck, keys: ks, args: args}
	}
	// run's error is the first failed call's (logged once); every failed
	// call reports it.
	res, runErr := r.run(ctx, "ack", calls)
	for j, g := range groups {
		v, err := r.ackResult(ctx, res[j], runErr, len(g))
		for k, i := range g {
			if err != nil {
				reqs[i].err = err
			} else {
				reqs[i].n = int(v[k])
			}
		}
	}
}

// ackResult is one ack.lua call's per-user results; runErr is the
// pipeline's error, for a failed call.
func (r *redisBackend) ackResult(ctx context.Context, x rueidis.RedisResult, runErr error, users int) ([]int64, error) {
	if x.Error() != nil {
		return nil, runErr
	}
	v, err := x.AsIntSlice()
	if err == nil && len(v) != users {
		err = fmt.Errorf("%d results for %d users", len(v), users)
	}
	if err != nil {
		return nil, r.bad(ctx, "ack", err)
	}
	return v, nil
}
