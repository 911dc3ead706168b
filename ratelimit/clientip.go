package ratelimit

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ErrInvalidTrustedProxy reports an entry of a trusted-proxy list that is
// neither an IP address nor a CIDR prefix.
var ErrInvalidTrustedProxy = errors.New("ratelimit: invalid trusted proxy")

// ParseTrustedProxies parses a comma-separated list of CIDR prefixes and bare
// IP addresses, such as a configuration value
//
//	"10.0.0.0/8, 192.168.1.7, 2001:db8::/32"
//
// A bare address becomes a single-address prefix (/32 or /128). Prefixes are
// masked ("10.1.2.3/8" becomes 10.0.0.0/8), and IPv4-mapped IPv6 entries
// ("::ffff:10.0.0.0/104") become their IPv4 form, because ClientIP compares
// unmapped addresses. Blank entries are ignored, so "" yields no proxies and a
// trailing comma is harmless; anything else that does not parse is an error
// wrapping ErrInvalidTrustedProxy (zones such as "fe80::1%eth0" included: a
// trust decision must not depend on an interface name).
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for entry := range strings.SplitSeq(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		var p netip.Prefix
		if strings.Contains(entry, "/") {
			pp, err := netip.ParsePrefix(entry)
			if err != nil {
				return nil, fmt.Errorf("%w: %q: %w", ErrInvalidTrustedProxy, entry, err)
			}
			p = pp
		} else {
			a, err := netip.ParseAddr(entry)
			if err != nil {
				return nil, fmt.Errorf("%w: %q: %w", ErrInvalidTrustedProxy, entry, err)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("%w: %q: zones are not allowed", ErrInvalidTrustedProxy, entry)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, cipNormalizePrefix(p))
	}
	return out, nil
}

// cipNormalizePrefix masks p and turns an IPv4-mapped IPv6 prefix of at least 96
// bits into the equivalent IPv4 prefix.
func cipNormalizePrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// ClientIP returns the address of the client that sent r.
//
// With no trusted proxies (the default) it is the host of r.RemoteAddr, and
// X-Forwarded-For is ignored: any client can write that header, so honouring
// it from an untrusted peer would let a client pick its own rate-limit key.
//
// When the peer (r.RemoteAddr) is inside one of the trusted prefixes,
// X-Forwarded-For is walked from the right (the entry appended by the proxy
// nearest to us) towards the left, skipping addresses that are themselves
// trusted proxies; the first address that is not trusted is the client. Every
// X-Forwarded-For field line is taken into account, in order, as one list.
// Entries may be bare addresses or address:port ("[v6]:port" for IPv6).
//
// The walk stops at the first entry that does not parse (empty, "unknown", an
// obfuscated identifier, garbage) and the result is then the last trusted hop
// (the nearest address known to be a trusted proxy). That is the safe choice:
// the entries left of a broken one cannot be attributed to a trusted proxy,
// and a client that cannot be identified shares its proxy's counter rather
// than getting a fresh one per request. The same holds when every entry is
// trusted or the header is absent (requests made by a proxy itself).
//
// Addresses are normalised: IPv4-mapped IPv6 becomes IPv4 ("::ffff:192.0.2.1"
// is "192.0.2.1") and zones are dropped, so one client has one spelling.
//
// The result is always either a valid IP address in canonical form or, when
// r.RemoteAddr is not an IP address (a Unix socket, a test that set something
// else), the RemoteAddr's host part unchanged, which may be empty.
func ClientIP(r *http.Request, trusted []netip.Prefix) string {
	return clientIP(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), trusted)
}

// clientIP is ClientIP on the raw values; see there.
func clientIP(remoteAddr string, xff []string, trusted []netip.Prefix) string {
	host := cipRemoteHost(remoteAddr)
	peer, ok := cipParse(host)
	if !ok {
		return host
	}
	if !cipTrusted(peer, trusted) {
		return peer.String()
	}
	last := peer // the last trusted hop seen so far
	for i := len(xff) - 1; i >= 0; i-- {
		// Walk this field line's entries from the right without splitting the
		// whole line: linear in its length, no allocation per entry.
		line := xff[i]
		for {
			j := strings.LastIndexByte(line, ',')
			entry := line[j+1:]
			a, ok := cipParseForwarded(entry)
			if !ok {
				return last.String()
			}
			if !cipTrusted(a, trusted) {
				return a.String()
			}
			last = a
			if j < 0 {
				break
			}
			line = line[:j]
		}
	}
	return last.String()
}

// cipRemoteHost returns the host part of an http.Request.RemoteAddr
// ("ip:port", "[ipv6]:port"), or the whole value when it has no port.
func cipRemoteHost(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return remoteAddr
}

// cipParse parses a bare address and normalises it (see cipNormalize).
func cipParse(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return cipNormalize(a), true
}

// cipParseForwarded parses one X-Forwarded-For entry: a bare address or an
// address with a port ("192.0.2.1:4711", "[2001:db8::1]:4711"), with optional
// surrounding whitespace.
func cipParseForwarded(entry string) (netip.Addr, bool) {
	entry = strings.TrimSpace(entry)
	if a, ok := cipParse(entry); ok {
		return a, true
	}
	if ap, err := netip.ParseAddrPort(entry); err == nil {
		return cipNormalize(ap.Addr()), true
	}
	return netip.Addr{}, false
}

// cipNormalize gives every client one spelling: IPv4-mapped IPv6 becomes
// IPv4 and the zone is dropped.
func cipNormalize(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

func cipTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// cipSubject turns a client IP into the "ip" subject: IPv6 addresses are
// grouped by their first bits (a prefix such as "2001:db8:1:2::/64"), IPv4
// addresses and non-IP values are kept as they are. bits outside 1..128 mean
// DefaultIPv6PrefixLen.
func cipSubject(ip string, bits int) string {
	if bits <= 0 || bits > 128 {
		bits = DefaultIPv6PrefixLen
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is6() || bits == 128 {
		return ip
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return ip
	}
	return p.String()
}
