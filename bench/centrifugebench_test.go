package main

// Real-time benchmarks (issue 7, acceptance 6): publish with history and
// history recovery, ours (realtime.NewRedis over rueidis) against
// github.com/centrifugal/centrifuge's RedisBroker, on the same private
// redis-server in the same run. Both sides keep 100 messages per channel for
// an hour, publish ~100-byte payloads over 1000 channels picked at random,
// and each publish is one Lua script that numbers the message, appends it
// to a Stream and PUBLISHes it. Recovery asks for the 10 messages after a
// position 10 behind the top of a pre-filled channel.
//
//	cd bench && go test -run '^$' -bench 'RealtimeVs' -benchtime 3s -count 3 .
//
// b.SetParallelism(64) gives 128 goroutines on the 2-CPU machine, the
// parallelism of centrifuge's own published figures.

import (
	"bytes"
	"context"
	"fmt"
	"github.com/elevacare/eleva-redis/bench/internal/redisserver"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/centrifugal/centrifuge"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/realtime"
)

const (
	rtcChannels = 1000
	rtcHistory  = 100
	rtcTTL      = time.Hour
	rtcRecover  = 10
)

var rtcPayload = bytes.Repeat([]byte("x"), 100)

// rtcSides is one redis-server with both brokers on it, shared by the
// benchmarks of one process.
type rtcSides struct {
	ours  realtime.Broker
	peer  *centrifuge.RedisBroker
	close func()
}

var (
	rtcOnce sync.Once
	rtcEnv  *rtcSides
	rtcErr  error
)

// TestMain stops the shared server and brokers after the tests and
// benchmarks of this package.
func TestMain(m *testing.M) {
	code := m.Run()
	if rtcEnv != nil {
		rtcEnv.close()
	}
	os.Exit(code)
}

func rtcSetup(tb testing.TB) *rtcSides {
	tb.Helper()
	rtcOnce.Do(func() { rtcEnv, rtcErr = newRTCSides() })
	if rtcErr != nil {
		tb.Fatal(rtcErr)
	}
	return rtcEnv
}

func newRTCSides() (*rtcSides, error) {
	srv, err := redisserver.Start()
	if err != nil {
		return nil, err
	}
	opt := rueidis.ClientOption{InitAddress: []string{srv.Addr}}
	if err := setOurOptions(&opt); err != nil {
		srv.Stop()
		return nil, err
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	ours, err := realtime.NewRedis(client, realtime.Config{Prefix: "bench:", HistorySize: rtcHistory, HistoryTTL: rtcTTL})
	if err != nil {
		client.Close()
		srv.Stop()
		return nil, err
	}
	fail := func(err error) (*rtcSides, error) {
		_ = ours.Close()
		client.Close()
		srv.Stop()
		return nil, err
	}
	node, err := centrifuge.New(centrifuge.Config{LogLevel: centrifuge.LogLevelNone})
	if err != nil {
		return fail(err)
	}
	shard, err := centrifuge.NewRedisShard(node, centrifuge.RedisShardConfig{Address: srv.Addr})
	if err != nil {
		return fail(err)
	}
	peer, err := centrifuge.NewRedisBroker(node, centrifuge.RedisBrokerConfig{Shards: []*centrifuge.RedisShard{shard}})
	if err != nil {
		return fail(err)
	}
	node.SetBroker(peer)
	if err := node.Run(); err != nil {
		return fail(err)
	}
	return &rtcSides{ours: ours, peer: peer, close: func() {
		_ = ours.Close()
		client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = node.Shutdown(ctx)
		srv.Stop()
	}}, nil
}

func (s *rtcSides) publishOurs(ch string) (uint64, string, error) {
	p, err := s.ours.Publish(context.Background(), ch, rtcPayload)
	return p.Offset, p.Epoch, err
}

func (s *rtcSides) publishPeer(ch string) (uint64, string, error) {
	r, err := s.peer.Publish(ch, rtcPayload, centrifuge.PublishOptions{HistorySize: rtcHistory, HistoryTTL: rtcTTL})
	return r.Offset, r.Epoch, err
}

// recoverOurs returns the offsets of the messages after since.
func (s *rtcSides) recoverOurs(ch string, since uint64, _ string) ([]uint64, error) {
	h, err := s.ours.History(context.Background(), ch, since, rtcRecover)
	out := make([]uint64, len(h.Messages))
	for i, m := range h.Messages {
		out[i] = m.Offset
	}
	return out, err
}

func (s *rtcSides) recoverPeer(ch string, since uint64, epoch string) ([]uint64, error) {
	pubs, _, err := s.peer.History(ch, centrifuge.HistoryOptions{Filter: centrifuge.HistoryFilter{
		Since: &centrifuge.StreamPosition{Offset: since, Epoch: epoch}, Limit: rtcRecover}})
	out := make([]uint64, len(pubs))
	for i, p := range pubs {
		out[i] = p.Offset
	}
	return out, err
}

type rtcSide struct {
	name     string
	publish  func(s *rtcSides, ch string) (uint64, string, error)
	recovery func(s *rtcSides, ch string, since uint64, epoch string) ([]uint64, error)
}

var rtcAll = []rtcSide{
	{"eleva", (*rtcSides).publishOurs, (*rtcSides).recoverOurs},
	{"centrifuge", (*rtcSides).publishPeer, (*rtcSides).recoverPeer},
}

func BenchmarkRealtimeVsCentrifugePublish(b *testing.B) {
	s := rtcSetup(b)
	for _, side := range rtcAll {
		b.Run(side.name, func(b *testing.B) {
			b.SetParallelism(64)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, _, err := side.publish(s, fmt.Sprintf("pub:%d", rand.IntN(rtcChannels))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkRealtimeVsCentrifugeRecover(b *testing.B) {
	s := rtcSetup(b)
	for _, side := range rtcAll {
		b.Run(side.name, func(b *testing.B) {
			epochs := make([]string, rtcChannels)
			for i := range rtcChannels {
				for range rtcHistory {
					_, e, err := side.publish(s, fmt.Sprintf("rec:%d", i))
					if err != nil {
						b.Fatal(err)
					}
					epochs[i] = e
				}
			}
			b.ResetTimer()
			b.SetParallelism(64)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := rand.IntN(rtcChannels)
					got, err := side.recovery(s, fmt.Sprintf("rec:%d", i), rtcHistory-rtcRecover, epochs[i])
					if err != nil || len(got) != rtcRecover {
						b.Errorf("%d messages, %v", len(got), err)
						return
					}
				}
			})
		})
	}
}

// TestRealtimeVsCentrifugeSidesAgree checks what the benchmarks measure,
// not their speed: on each side 20 publishes number 1..20, and recovering
// after 10 returns exactly offsets 11..20.
func TestRealtimeVsCentrifugeSidesAgree(t *testing.T) {
	s := rtcSetup(t)
	for _, side := range rtcAll {
		ch := "agree:" + side.name
		var epoch string
		for i := 1; i <= 20; i++ {
			off, e, err := side.publish(s, ch)
			if err != nil || off != uint64(i) {
				t.Fatalf("%s: publish %d gave offset %d, %v", side.name, i, off, err)
			}
			epoch = e
		}
		got, err := side.recovery(s, ch, 10, epoch)
		if err != nil || len(got) != rtcRecover || got[0] != 11 || got[len(got)-1] != 20 {
			t.Fatalf("%s: recovery after 10 gave %v, %v; want 11..20", side.name, got, err)
		}
	}
}
