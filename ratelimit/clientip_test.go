package ratelimit

import (
	"errors"
	"net"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func mustProxies(t testing.TB, s string) []netip.Prefix {
	t.Helper()
	ps, err := ParseTrustedProxies(s)
	if err != nil {
		t.Fatalf("ParseTrustedProxies(%q): %v", s, err)
	}
	return ps
}

func TestClientIP(t *testing.T) {
	const proxies = "10.0.0.0/8, 2001:db8:ffff::/48"
	tests := []struct {
		name    string
		remote  string
		xff     []string // one element per X-Forwarded-For field line
		trusted string
		want    string
	}{
		// No trusted proxies (the default): the peer, whatever the headers say.
		{"peer only", "203.0.113.9:1234", nil, "", "203.0.113.9"},
		{"spoofed xff without trusted proxies", "203.0.113.9:1234", []string{"1.2.3.4"}, "", "203.0.113.9"},
		{"spoofed xff from untrusted peer", "198.51.100.7:1234", []string{"1.2.3.4, 10.0.0.2"}, proxies, "198.51.100.7"},
		{"peer that is a proxy but not configured", "10.0.0.1:1234", []string{"1.2.3.4"}, "", "10.0.0.1"},

		// Trusted peer: walk X-Forwarded-For from the right.
		{"one hop", "10.0.0.1:1234", []string{"203.0.113.9"}, proxies, "203.0.113.9"},
		{"several trusted hops", "10.0.0.1:1234", []string{"203.0.113.9, 10.0.0.2, 10.0.0.3"}, proxies, "203.0.113.9"},
		{"client-written entries left of the client are ignored", "10.0.0.1:1234", []string{"6.6.6.6, 1.1.1.1, 203.0.113.9, 10.0.0.2"}, proxies, "203.0.113.9"},
		{"several field lines form one list", "10.0.0.1:1234", []string{"6.6.6.6, 203.0.113.9", "10.0.0.2"}, proxies, "203.0.113.9"},
		{"the last field line is the nearest", "10.0.0.1:1234", []string{"203.0.113.9", "198.51.100.1"}, proxies, "198.51.100.1"},
		{"whitespace around entries", "10.0.0.1:1234", []string{"  203.0.113.9 ,\t10.0.0.2  "}, proxies, "203.0.113.9"},
		{"entry with port", "10.0.0.1:1234", []string{"203.0.113.9:4711"}, proxies, "203.0.113.9"},
		{"ipv6 entry with port", "10.0.0.1:1234", []string{"[2001:db8::1]:4711"}, proxies, "2001:db8::1"},
		{"no header from a trusted peer", "10.0.0.1:1234", nil, proxies, "10.0.0.1"},
		{"every entry trusted: the last trusted hop", "10.0.0.1:1234", []string{"10.0.0.5, 10.0.0.2"}, proxies, "10.0.0.5"},

		// Malformed entries stop the walk at the last trusted hop.
		{"malformed nearest entry", "10.0.0.1:1234", []string{"203.0.113.9, garbage"}, proxies, "10.0.0.1"},
		{"malformed entry after a trusted hop", "10.0.0.1:1234", []string{"203.0.113.9, bogus, 10.0.0.2"}, proxies, "10.0.0.2"},
		{"empty entry", "10.0.0.1:1234", []string{"203.0.113.9,,10.0.0.2"}, proxies, "10.0.0.2"},
		{"empty header value", "10.0.0.1:1234", []string{""}, proxies, "10.0.0.1"},
		{"unknown", "10.0.0.1:1234", []string{"unknown"}, proxies, "10.0.0.1"},
		{"obfuscated identifier", "10.0.0.1:1234", []string{"_hidden, 10.0.0.2"}, proxies, "10.0.0.2"},
		{"prefix is not an address", "10.0.0.1:1234", []string{"203.0.113.0/24"}, proxies, "10.0.0.1"},
		{"bracketed ipv6 without port", "10.0.0.1:1234", []string{"[2001:db8::1]"}, proxies, "10.0.0.1"},
		{"malformed line before a good later line", "10.0.0.1:1234", []string{"bad", "203.0.113.9"}, proxies, "203.0.113.9"},

		// IPv6 and normalisation.
		{"ipv6 peer", "[2001:db8::5]:443", nil, "", "2001:db8::5"},
		{"ipv6 peer is canonicalised", "[2001:0DB8:0000::0005]:443", nil, "", "2001:db8::5"},
		{"ipv6 trusted proxy", "[2001:db8:ffff::1]:443", []string{"2001:db8:1::7, 2001:db8:ffff::2"}, proxies, "2001:db8:1::7"},
		{"ipv4-mapped peer", "[::ffff:203.0.113.9]:1", nil, "", "203.0.113.9"},
		{"ipv4-mapped trusted peer", "[::ffff:10.0.0.1]:1", []string{"203.0.113.9"}, proxies, "203.0.113.9"},
		{"ipv4-mapped entry", "10.0.0.1:1234", []string{"::ffff:203.0.113.9"}, proxies, "203.0.113.9"},
		{"ipv4-mapped trusted entry is skipped", "10.0.0.1:1234", []string{"203.0.113.9, ::ffff:10.0.0.2"}, proxies, "203.0.113.9"},
		{"zone dropped", "[fe80::1%eth0]:80", nil, "", "fe80::1"},

		// RemoteAddr that is not ip:port.
		{"remote without port", "203.0.113.9", nil, "", "203.0.113.9"},
		{"unix socket", "@", []string{"203.0.113.9"}, "0.0.0.0/0", "@"},
		{"empty remote", "", []string{"203.0.113.9"}, "0.0.0.0/0", ""},
		{"non-ip host", "localhost:80", []string{"203.0.113.9"}, "0.0.0.0/0", "localhost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := ClientIP(r, mustProxies(t, tt.trusted)); got != tt.want {
				t.Errorf("ClientIP(remote %q, xff %q, trusted %q) = %q, want %q", tt.remote, tt.xff, tt.trusted, got, tt.want)
			}
		})
	}
}

func TestParseTrustedProxies(t *testing.T) {
	tests := []struct {
		in   string
		want []string // Prefix.String of each result
	}{
		{"", nil},
		{" , ,", nil},
		{"10.0.0.0/8", []string{"10.0.0.0/8"}},
		{"10.1.2.3/8", []string{"10.0.0.0/8"}},
		{"192.168.1.7", []string{"192.168.1.7/32"}},
		{"2001:db8::1", []string{"2001:db8::1/128"}},
		{" 10.0.0.0/8 ,192.168.1.7, 2001:db8::/32,", []string{"10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"}},
		{"::ffff:10.0.0.0/104", []string{"10.0.0.0/8"}},
		{"::ffff:10.0.0.7", []string{"10.0.0.7/32"}},
		{"::/0", []string{"::/0"}},
	}
	for _, tt := range tests {
		got, err := ParseTrustedProxies(tt.in)
		if err != nil {
			t.Errorf("ParseTrustedProxies(%q): %v", tt.in, err)
			continue
		}
		var gs []string
		for _, p := range got {
			gs = append(gs, p.String())
		}
		if !slices.Equal(gs, tt.want) {
			t.Errorf("ParseTrustedProxies(%q) = %q, want %q", tt.in, gs, tt.want)
		}
	}

	for _, bad := range []string{"nonsense", "10.0.0.0/33", "10.0.0.256", "10.0.0.0/8/8", "fe80::1%eth0", "10.0.0.0/8, example.com", "[::1]", "10.0.0.1:80"} {
		got, err := ParseTrustedProxies(bad)
		if !errors.Is(err, ErrInvalidTrustedProxy) || got != nil {
			t.Errorf("ParseTrustedProxies(%q) = %v, %v; want nil, ErrInvalidTrustedProxy", bad, got, err)
		}
	}
}

// A mapped prefix given in configuration must still match the unmapped peer.
func TestClientIPMappedTrustedPrefix(t *testing.T) {
	got := clientIP("10.1.2.3:80", []string{"203.0.113.9"}, mustProxies(t, "::ffff:10.0.0.0/104"))
	if got != "203.0.113.9" {
		t.Fatalf("got %q, want 203.0.113.9", got)
	}
}

func TestClientIPSubject(t *testing.T) {
	tests := []struct {
		ip   string
		bits int
		want string
	}{
		{"2001:db8:1:2:3:4:5:6", 0, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"},
		{"2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"},
		{"2001:db8:1:2:3:4:5:6", -1, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 129, "2001:db8:1:2::/64"},
		{"203.0.113.9", 0, "203.0.113.9"},
		{"203.0.113.9", 8, "203.0.113.9"},
		{"@", 0, "@"},
	}
	for _, tt := range tests {
		if got := cipSubject(tt.ip, tt.bits); got != tt.want {
			t.Errorf("cipSubject(%q, %d) = %q, want %q", tt.ip, tt.bits, got, tt.want)
		}
	}
}

// FuzzClientIP feeds random RemoteAddr and X-Forwarded-For values. Whatever
// they are, ClientIP must not panic and must return either a canonical IP
// address or the RemoteAddr's host; an untrusted peer is never overridden by
// the header; and an address other than the peer's must come from the header.
func FuzzClientIP(f *testing.F) {
	for _, s := range [][3]string{
		{"10.0.0.1:1234", "203.0.113.9, 10.0.0.2", ""},
		{"203.0.113.9:1", "1.2.3.4", "5.6.7.8"},
		{"[2001:db8:ffff::1]:443", "2001:db8:1::7, 2001:db8:ffff::2", ""},
		{"[::ffff:10.0.0.1]:1", "::ffff:203.0.113.9", "garbage"},
		{"10.0.0.1:1", "203.0.113.9:4711,,10.0.0.2", "[2001:db8::1]:80"},
		{"@", "203.0.113.9", ""},
		{"[fe80::1%eth0]:80", "fe80::2%lo", ""},
		{"192.0.2.1", "unknown", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	trusted := mustProxies(f, "10.0.0.0/8, 192.0.2.1, 2001:db8:ffff::/48, fe80::/10")
	f.Fuzz(func(t *testing.T, remote, xff1, xff2 string) {
		xff := []string{xff1, xff2}
		got := clientIP(remote, xff, trusted)

		host := remote
		if h, _, err := net.SplitHostPort(remote); err == nil {
			host = h
		}
		peer, peerErr := netip.ParseAddr(host)
		if peerErr != nil {
			if got != host {
				t.Fatalf("remote %q is not an IP: got %q, want its host %q", remote, got, host)
			}
			return
		}
		a, err := netip.ParseAddr(got)
		if err != nil {
			t.Fatalf("remote %q xff %q: got %q, not an address", remote, xff, got)
		}
		if a.String() != got || a.Is4In6() || a.Zone() != "" {
			t.Fatalf("remote %q xff %q: got %q, not canonical", remote, xff, got)
		}
		peer = peer.Unmap().WithZone("")
		if !isTrustedRef(peer, trusted) && a != peer {
			t.Fatalf("untrusted peer %q was overridden by xff %q: got %q", remote, xff, got)
		}
		if a != peer && !inForwarded(a, xff) {
			t.Fatalf("remote %q xff %q: got %q, neither the peer nor a header entry", remote, xff, got)
		}
		// With no trusted proxies the header never matters.
		if n, w := clientIP(remote, xff, nil), clientIP(remote, nil, nil); n != w || n != peer.String() {
			t.Fatalf("remote %q xff %q without trusted proxies: got %q, want %q", remote, xff, n, peer)
		}
	})
}

// isTrustedRef is an independent reference for the trust check.
func isTrustedRef(a netip.Addr, trusted []netip.Prefix) bool {
	return slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(a) })
}

// inForwarded reports whether a is, after normalisation, one of the entries
// of the X-Forwarded-For lines.
func inForwarded(a netip.Addr, xff []string) bool {
	for _, line := range xff {
		for e := range strings.SplitSeq(line, ",") {
			e = strings.TrimSpace(e)
			if b, err := netip.ParseAddr(e); err == nil && b.Unmap().WithZone("") == a {
				return true
			}
			if ap, err := netip.ParseAddrPort(e); err == nil && ap.Addr().Unmap().WithZone("") == a {
				return true
			}
		}
	}
	return false
}
