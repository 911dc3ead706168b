package notify

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestLuaKeysFromKEYS is the lint of the design: in every script, the key
// argument of every redis.call is KEYS[n] or a parameter of a common.lua
// helper (which its callers pass KEYS[n]); no key name is built inside a
// script, so Cluster routing and the one-slot rule hold (the queued-item
// sets are chosen between two KEYS by attempts). TIME takes no key.
func TestLuaKeysFromKEYS(t *testing.T) {
	files, err := filepath.Glob("*.lua")
	if err != nil || len(files) < 10 {
		t.Fatalf("Lua files: %v, %v", files, err)
	}
	call := regexp.MustCompile(`redis\.call\('([A-Z]+)'(?:,\s*([^,)]+))?`)
	keyArg := regexp.MustCompile(`^(KEYS\[(?:\d+|i)\]|r\.att > 0 and KEYS\[\d+\] or KEYS\[\d+\]|r\.att > 0 and kr or kw|k(due|user|data|dead|stats|done|inflight|lease|w|r))$`)
	// A script's own k-variables (enqueue.lua's per-item keys) are taken
	// from KEYS, at a computed index at most; a script's own per-user
	// function (claim.lua's claim) is checked like a helper: it is passed
	// KEYS.
	localKeys := regexp.MustCompile(`local (k(?:due|user|data|dead|stats|done|inflight|lease|w|r)\b(?:,\s*k\w+)*)\s*=\s*([^\n]+)`)
	fromKEYS := regexp.MustCompile(`^KEYS\[[\w\s+*]+\]$`)
	helperCall := regexp.MustCompile(`\b(reindex|to_dead|cap_done|release_if_done|earliest|claim)\(([^)]*)\)`)
	n := 0
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(src), -1) {
			n++
			if m[1] == "TIME" {
				continue
			}
			if arg := strings.TrimSpace(m[2]); !keyArg.MatchString(arg) {
				t.Errorf("%s: redis.call('%s', %s): the key is not KEYS[n] or a helper's key parameter", f, m[1], arg)
			}
		}
		for _, m := range localKeys.FindAllStringSubmatch(string(src), -1) {
			for _, rhs := range strings.Split(m[2], ",") {
				if rhs = strings.TrimSpace(rhs); !fromKEYS.MatchString(rhs) {
					t.Errorf("%s: local %s = %s: a key variable not taken from KEYS", f, m[1], m[2])
				}
			}
		}
		if f == "common.lua" {
			continue
		}
		// Helpers get their keys from KEYS, never from a built string.
		for _, m := range helperCall.FindAllStringSubmatch(string(src), -1) {
			for _, a := range strings.Split(m[2], ",") {
				if a = strings.TrimSpace(a); strings.HasPrefix(a, "k") && !keyArg.MatchString(a) {
					t.Errorf("%s: %s passes %q as a key", f, m[1], a)
				}
			}
		}
	}
	if n < 50 {
		t.Fatalf("only %d redis.call sites found: the lint is not reading the scripts", n)
	}
}
