package realtime

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// sseStream is one SSE connection taken over from net/http (hijacked) once
// its response header is written. An idle stream costs no writer goroutine
// and none of net/http's per-connection buffers, which is what lets one
// process hold tens of thousands of browsers:
//
//   - the Subscription's notify hook (and the ping timer) start a
//     short-lived writer goroutine when there is something to send; at most
//     one runs at a time, and it drains everything ready into one write;
//   - one small reader goroutine blocks in Read to notice at once that the
//     client went away (a browser sends nothing after its request);
//   - every end (client gone, overflow, write error, token expiry, broker
//     closed) records its reason and closes the connection; the reader then
//     tears the stream down, exactly once.
//
// The body is delimited by the connection's close (the header says
// Connection: close), which is what the SSE specification recommends and
// what every EventSource and proxy reads.
type sseStream struct {
	h    *sseHandler
	conn net.Conn
	sub  *Subscription
	pos  []Position // the id of the last event written; writer only
	ping time.Duration
	wt   time.Duration

	lastWrite atomic.Int64 // unix nanoseconds of the last successful write

	mu      sync.Mutex
	started bool   // the connection is hijacked and the first bytes written
	running bool   // a writer goroutine runs
	again   bool   // something arrived while it ran: drain once more
	pingDue bool   // the ping timer fired: write a ping if there is nothing else
	reason  string // why the stream ends; the first one set wins
	pingT   *time.Timer
	expT    *time.Timer
}

// wake is the Subscription's notify hook. It runs on the backend's delivery
// path: it never blocks and never calls back into the Subscription.
func (c *sseStream) wake() {
	c.mu.Lock()
	over := c.sub != nil && c.sub.overflowed.Load()
	c.mu.Unlock()
	if over {
		c.stop("overflow") // closing the connection also ends a writer stuck on this client
		return
	}
	c.schedule()
}

// schedule starts the writer, or tells the running one to drain again.
func (c *sseStream) schedule() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started || c.reason != "" {
		return // before start, start's first run drains what is queued
	}
	if c.running {
		c.again = true
		return
	}
	c.running = true
	go c.run()
}

// stop ends the stream for reason by closing the connection; the reader
// goroutine then tears the stream down. The first reason wins and is
// counted before the client can see the end.
func (c *sseStream) stop(reason string) {
	c.mu.Lock()
	first := c.reason == ""
	if first {
		c.reason = reason
	}
	conn := c.conn
	c.mu.Unlock()
	if first {
		c.h.m.sseOpen(-1)
		c.h.m.sseClosed(reason)
	}
	if conn != nil {
		_ = conn.Close()
	}
}

// start takes over the hijacked conn: it writes first (retry: and the
// start position), then waits for events, pings and the token's expiry.
func (c *sseStream) start(conn net.Conn, first []byte, exp time.Time) {
	c.mu.Lock()
	c.conn = conn
	reason := c.reason // an overflow before the hijack
	c.mu.Unlock()
	if reason == "" && !c.write(first) {
		c.stop("write_error")
	}
	c.mu.Lock()
	c.pingT = time.AfterFunc(c.ping, c.pingTick)
	if !exp.IsZero() {
		c.expT = time.AfterFunc(time.Until(exp), func() { c.stop("token_expired") })
	}
	c.started = true
	c.mu.Unlock()
	if reason != "" {
		_ = conn.Close()
	}
	go c.read()
	c.schedule()
}

// read blocks until the client closes the connection or stop closed it,
// then tears the stream down. Bytes the client sends are ignored.
func (c *sseStream) read() {
	b := make([]byte, 16)
	for {
		if _, err := c.conn.Read(b); err != nil {
			break
		}
	}
	c.stop("client")
	c.mu.Lock()
	c.pingT.Stop()
	if c.expT != nil {
		c.expT.Stop()
	}
	c.mu.Unlock()
	_ = c.sub.Close()
}

func (c *sseStream) pingTick() {
	c.mu.Lock()
	if c.reason != "" {
		c.mu.Unlock()
		return
	}
	idle := time.Duration(time.Now().UnixNano() - c.lastWrite.Load())
	if idle < c.ping {
		c.pingT.Reset(c.ping - idle)
		c.mu.Unlock()
		return
	}
	c.pingT.Reset(c.ping)
	c.pingDue = true
	c.mu.Unlock()
	c.schedule()
}

// run is the writer goroutine: it drains until nothing is left.
func (c *sseStream) run() {
	for {
		if reason := c.drain(); reason != "" {
			c.stop(reason)
			return
		}
		c.mu.Lock()
		if c.again && c.reason == "" {
			c.again = false
			c.mu.Unlock()
			continue
		}
		c.running = false
		c.mu.Unlock()
		return
	}
}

var sseBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// drain writes every ready event (and a due ping) and returns why the
// stream must end, or "".
func (c *sseStream) drain() string {
	c.mu.Lock()
	ping := c.pingDue
	c.pingDue = false
	c.mu.Unlock()
	bp := sseBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) <= 64<<10 {
			*bp = buf[:0]
			sseBufs.Put(bp)
		}
	}()
	for {
		ev, ok, err := c.sub.TryNext(context.Background())
		if err != nil {
			reason := c.h.endReason(err)
			if reason == "backend_error" && len(buf) > 0 {
				c.write(buf) // what was ready, before ending
			}
			return reason
		}
		if !ok {
			break
		}
		c.pos[c.index(ev.Channel)] = ev.Position
		buf = appendEvent(buf, ev, c.pos)
		if len(buf) >= 32<<10 {
			if !c.write(buf) {
				return "write_error"
			}
			buf = buf[:0]
		}
	}
	if len(buf) == 0 && ping {
		buf = append(buf, ": ping\n\n"...)
	}
	if len(buf) > 0 && !c.write(buf) {
		return "write_error"
	}
	return ""
}

func (c *sseStream) index(channel string) int {
	for i, ch := range c.sub.channels {
		if ch == channel {
			return i
		}
	}
	return 0 // unreachable: a Subscription returns only its channels
}

func (c *sseStream) write(b []byte) bool {
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.wt))
	if _, err := c.conn.Write(b); err != nil {
		return false
	}
	c.lastWrite.Store(time.Now().UnixNano())
	return true
}

// endReason is the disconnect reason for an error of Subscription.Next.
func (h *sseHandler) endReason(err error) string {
	switch {
	case errors.Is(err, ErrOverflow):
		return "overflow"
	case errors.Is(err, ErrClosed):
		return "shutdown"
	}
	h.log.Warn("realtime: SSE stream ended by a backend error; the client resumes with Last-Event-ID", "err", err.Error())
	return "backend_error"
}
