package ratelimit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Rule is one limit of a named Policy, applied to one subject of the request.
type Rule struct {
	// Name labels the rule ("user", "ip"); unique within its policy.
	Name string `json:"name"`
	// Subject names the request attribute the rule counts ("user", "ip", ...);
	// the caller supplies its value (see Policy.Checks).
	Subject   string    `json:"subject"`
	Limit     int       `json:"limit"`
	WindowMs  int64     `json:"windowMs"`
	Algorithm Algorithm `json:"algorithm,omitempty"`
	Burst     int       `json:"burst,omitempty"`
}

// Policy is a named set of rules decided all-or-nothing (see Limiter.AllowAll).
type Policy struct {
	Name  string `json:"name"`
	Rules []Rule `json:"rules"`
	// OnBackendError is this policy's failure policy; "" means the limiter's
	// default.
	OnBackendError FailurePolicy `json:"onBackendError,omitempty"`
}

// Policies maps policy names to policies.
type Policies map[string]Policy

// Errors of the policy layer.
var (
	// ErrInvalidPolicy reports a policies file or policy that cannot be used.
	ErrInvalidPolicy = errors.New("ratelimit: invalid policy")
	// ErrUnknownPolicy reports a policy name that is not configured.
	ErrUnknownPolicy = errors.New("ratelimit: unknown policy")
	// ErrMissingSubject reports a subject a rule needs but the request lacks.
	ErrMissingSubject = errors.New("ratelimit: missing subject")
)

// limit returns the rule as a Limit under the given failure policy.
func (r Rule) limit(onErr FailurePolicy) Limit {
	return Limit{Limit: r.Limit, Window: time.Duration(r.WindowMs) * time.Millisecond, Burst: r.Burst, Algorithm: r.Algorithm, OnBackendError: onErr}
}

// Checks builds the checks of one request. subjects maps a rule's Subject to
// its value for this request (the user id, the client IP). Each rule counts
// under the key "<policy>:<rule>" tagged with "<subject>:<value>", so all of a
// subject's rules share one Redis Cluster slot. cost 0 means 1.
func (p Policy) Checks(subjects map[string]string, cost int) ([]Check, error) {
	if cost == 0 {
		cost = 1
	}
	checks := make([]Check, 0, len(p.Rules))
	for _, r := range p.Rules {
		v, ok := subjects[r.Subject]
		if !ok || v == "" {
			return nil, fmt.Errorf("%w: policy %q rule %q needs subject %q", ErrMissingSubject, p.Name, r.Name, r.Subject)
		}
		checks = append(checks, Check{
			Name:  r.Name,
			Key:   p.Name + ":" + r.Name,
			Tag:   r.Subject + ":" + v,
			Limit: r.limit(p.OnBackendError),
			Cost:  cost,
		})
	}
	return checks, nil
}

// Validate checks the policy's rules.
func (p Policy) Validate() error {
	if p.Name == "" {
		return fmt.Errorf("%w: policy name must not be empty", ErrInvalidPolicy)
	}
	if len(p.Rules) == 0 {
		return fmt.Errorf("%w: policy %q has no rules", ErrInvalidPolicy, p.Name)
	}
	switch p.OnBackendError {
	case FailDefault, FailLocal, FailOpen, FailClosed:
	default:
		return fmt.Errorf("%w: policy %q: onBackendError %q: want closed, open or local", ErrInvalidPolicy, p.Name, p.OnBackendError)
	}
	seen := map[string]bool{}
	for i, r := range p.Rules {
		if r.Name == "" || r.Subject == "" {
			return fmt.Errorf("%w: policy %q rule %d: name and subject are required", ErrInvalidPolicy, p.Name, i)
		}
		if seen[r.Name] {
			return fmt.Errorf("%w: policy %q: duplicate rule %q", ErrInvalidPolicy, p.Name, r.Name)
		}
		seen[r.Name] = true
		if r.WindowMs > int64(MaxWindow/time.Millisecond) {
			return fmt.Errorf("%w: policy %q rule %q: windowMs too large", ErrInvalidPolicy, p.Name, r.Name)
		}
		if err := r.limit(p.OnBackendError).Validate(); err != nil {
			return fmt.Errorf("%w: policy %q rule %q: %w", ErrInvalidPolicy, p.Name, r.Name, err)
		}
	}
	return nil
}

// Names returns the policy names in sorted order.
func (ps Policies) Names() []string {
	names := make([]string, 0, len(ps))
	for n := range ps {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ParsePolicies parses a policies document, JSON or YAML:
//
//	{"identity-verification": {"rules": [
//	    {"name": "user", "subject": "user", "limit": 3, "windowMs": 3600000},
//	    {"name": "ip", "subject": "ip", "limit": 10, "windowMs": 3600000}],
//	  "onBackendError": "closed"}}
//
// Unknown fields are errors. YAML is converted to JSON first, so both formats
// are decoded and validated by one strict path.
func ParsePolicies(data []byte) (Policies, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] != '{' {
		var v any
		if err := yaml.Unmarshal(data, &v); err != nil {
			return nil, fmt.Errorf("%w: yaml: %w", ErrInvalidPolicy, err)
		}
		j, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("%w: yaml: %w", ErrInvalidPolicy, err)
		}
		trimmed = j
	}
	var raw map[string]Policy
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	ps := make(Policies, len(raw))
	for name, p := range raw {
		if strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("%w: empty policy name", ErrInvalidPolicy)
		}
		p.Name = name
		if err := p.Validate(); err != nil {
			return nil, err
		}
		ps[name] = p
	}
	return ps, nil
}

// LoadPolicies reads and parses a policies file (see ParsePolicies).
func LoadPolicies(path string) (Policies, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	ps, err := ParsePolicies(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ps, nil
}
