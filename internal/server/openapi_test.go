package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// loadDoc decodes the embedded OpenAPI document (numbers as json.Number).
// Callers must not modify it.
func loadDoc(t testing.TB) map[string]any {
	t.Helper()
	doc, err := parsedDoc()
	if err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return doc
}

var parsedDoc = sync.OnceValues(func() (map[string]any, error) {
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(openapiJSON))
	dec.UseNumber()
	err := dec.Decode(&doc)
	return doc, err
})

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// TestOpenAPIMatchesRoutes: every route of the table (which is exactly what
// New registers) is in the document, and the document has no other
// operation.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadDoc(t)
	if doc["openapi"] != "3.1.0" {
		t.Fatalf("openapi = %v", doc["openapi"])
	}
	var documented []string
	for path, item := range doc["paths"].(map[string]any) {
		for m := range item.(map[string]any) {
			if slices.Contains(httpMethods, m) {
				documented = append(documented, strings.ToUpper(m)+" "+path)
			}
		}
	}
	var registered []string
	for _, rt := range routeTable() {
		registered = append(registered, rt.method+" "+rt.path)
	}
	slices.Sort(documented)
	slices.Sort(registered)
	if !slices.Equal(documented, registered) {
		t.Fatalf("OpenAPI operations and routes differ\ndocumented: %q\nregistered: %q", documented, registered)
	}

	// Security: /v1 routes use the global bearer requirement, the others
	// opt out with an empty list, exactly as the table's auth flag says.
	if fmt.Sprint(doc["security"]) != "[map[bearerAuth:[]]]" {
		t.Errorf("global security = %v", doc["security"])
	}
	for _, rt := range routeTable() {
		op := doc["paths"].(map[string]any)[rt.path].(map[string]any)[strings.ToLower(rt.method)].(map[string]any)
		sec, overrides := op["security"]
		if rt.auth == overrides {
			t.Errorf("%s %s: auth=%v but security override=%v", rt.method, rt.path, rt.auth, sec)
		}
		if overrides && len(sec.([]any)) != 0 {
			t.Errorf("%s %s: security override %v, want []", rt.method, rt.path, sec)
		}
		if rt.auth {
			if _, ok := op["responses"].(map[string]any)["401"]; !ok {
				t.Errorf("%s %s: needs auth but documents no 401", rt.method, rt.path)
			}
		}
	}
}

// TestOpenAPIRefsResolve: every $ref points at something.
func TestOpenAPIRefsResolve(t *testing.T) {
	doc := loadDoc(t)
	n := 0
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if k == "$ref" {
					n++
					if _, err := resolve(doc, c.(string)); err != nil {
						t.Errorf("%s: %v", at, err)
					}
					continue
				}
				walk(c, at+"/"+k)
			}
		case []any:
			for i, c := range v {
				walk(c, at+"/"+strconv.Itoa(i))
			}
		}
	}
	walk(doc, "#")
	if n == 0 {
		t.Fatal("no $ref found: the walk is broken")
	}
}

// TestServedDocumentIsTheEmbeddedOne: /openapi.json serves the file with only
// info.version replaced.
func TestServedDocumentIsTheEmbeddedOne(t *testing.T) {
	e := newEnv(t, Deps{Version: "v9.9.9"})
	res := e.do(http.MethodGet, "/openapi.json", "")
	var served, file map[string]any
	if err := json.Unmarshal(res.body, &served); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(openapiJSON, &file); err != nil {
		t.Fatal(err)
	}
	file["info"].(map[string]any)["version"] = "v9.9.9"
	a, _ := json.Marshal(served)
	b, _ := json.Marshal(file)
	if !bytes.Equal(a, b) {
		t.Fatal("served document differs from openapi.json beyond info.version")
	}
}

// TestSchemaCheckerRejects makes sure checkDocumented can fail: answers that
// break the document are reported.
func TestSchemaCheckerRejects(t *testing.T) {
	doc := loadDoc(t)
	decision, _ := resolve(doc, "#/components/schemas/Decision")
	for _, body := range []string{
		`{"allowed":true,"limit":1,"remaining":0,"resetAt":1}`,                                  // missing retryAfterMs
		`{"allowed":"yes","limit":1,"remaining":0,"resetAt":1,"retryAfterMs":0}`,                // wrong type
		`{"allowed":true,"limit":1,"remaining":0,"resetAt":1,"retryAfterMs":0,"extra":1}`,       // undocumented field
		`{"allowed":true,"limit":1.5,"remaining":0,"resetAt":1,"retryAfterMs":0}`,               // not an integer
		`{"allowed":true,"limit":1,"remaining":-1,"resetAt":1,"retryAfterMs":0}`,                // below minimum
		`{"allowed":true,"limit":1,"remaining":0,"resetAt":1,"retryAfterMs":0,"degraded":null}`, // null
	} {
		if errs := validate(doc, decision, decodeNumbers(t, body), "$"); len(errs) == 0 {
			t.Errorf("accepted %s", body)
		}
	}
	if errs := validate(doc, decision, decodeNumbers(t, `{"allowed":true,"limit":1,"remaining":0,"resetAt":1,"retryAfterMs":0,"degraded":true}`), "$"); len(errs) != 0 {
		t.Errorf("rejected a valid decision: %v", errs)
	}
}

func decodeNumbers(t testing.TB, s string) any {
	t.Helper()
	var v any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return v
}

// checkDocumented fails the test when an answer is not described by the
// OpenAPI document: its status must be documented for the operation (for
// unmatched routes: 404 or 405 with the Error schema) and a JSON body must
// match the documented schema.
func checkDocumented(t testing.TB, method, target string, res response) {
	t.Helper()
	doc := loadDoc(t)
	path := target
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	// Match the path against the document's templates with a mux, as the
	// server does.
	mux := http.NewServeMux()
	for p, item := range doc["paths"].(map[string]any) {
		for m := range item.(map[string]any) {
			if slices.Contains(httpMethods, m) {
				mux.Handle(strings.ToUpper(m)+" "+p, http.NotFoundHandler())
			}
		}
	}
	_, pattern := mux.Handler(httptest.NewRequest(method, target, nil))
	if !cleanPath(path) {
		pattern = "" // the mux would redirect; the server answers 404
	}
	var schema any
	if pattern == "" {
		if res.status != http.StatusNotFound && res.status != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: unmatched route answered %d", method, target, res.status)
			return
		}
		schema = map[string]any{"$ref": "#/components/schemas/Error"}
	} else {
		m, p, _ := strings.Cut(pattern, " ")
		if method == http.MethodHead {
			m = http.MethodGet
		}
		op := doc["paths"].(map[string]any)[p].(map[string]any)[strings.ToLower(m)].(map[string]any)
		r, ok := op["responses"].(map[string]any)[strconv.Itoa(res.status)]
		if !ok {
			t.Errorf("%s %s: status %d is not documented (body %s)", method, target, res.status, res.body)
			return
		}
		r = deref(t, doc, r)
		content, _ := r.(map[string]any)["content"].(map[string]any)
		if content == nil {
			if len(res.body) != 0 {
				t.Errorf("%s %s: %d documents no body but got %q", method, target, res.status, res.body)
			}
			return
		}
		j, ok := content["application/json"].(map[string]any)
		if !ok {
			return // text/plain (metrics)
		}
		schema = j["schema"]
	}
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, target, ct)
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(res.body))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Errorf("%s %s: body is not JSON: %v", method, target, err)
		return
	}
	for _, e := range validate(doc, schema, v, "$") {
		t.Errorf("%s %s (%d): %s; body %s", method, target, res.status, e, res.body)
	}
}

func deref(t testing.TB, doc map[string]any, v any) any {
	t.Helper()
	for {
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return v
		}
		r, err := resolve(doc, ref)
		if err != nil {
			t.Fatal(err)
		}
		v = r
	}
}

// resolve follows a local JSON pointer ("#/components/schemas/X").
func resolve(doc map[string]any, ref string) (any, error) {
	if ref == "" {
		return doc, nil
	}
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("non-local $ref %q", ref)
	}
	var cur any = doc
	for _, part := range strings.Split(p, "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("$ref %q: %q is not inside an object", ref, part)
		}
		if cur, ok = m[part]; !ok {
			return nil, fmt.Errorf("$ref %q: no %q", ref, part)
		}
	}
	return cur, nil
}

// validate checks v against the subset of JSON Schema the document uses:
// $ref, type, const, enum, properties, required, additionalProperties,
// items, minimum, maximum, minLength.
func validate(doc map[string]any, schema, v any, at string) []string {
	s, ok := schema.(map[string]any)
	if !ok {
		return []string{at + ": schema is not an object"}
	}
	if ref, ok := s["$ref"].(string); ok {
		r, err := resolve(doc, ref)
		if err != nil {
			return []string{at + ": " + err.Error()}
		}
		return validate(doc, r, v, at)
	}
	var errs []string
	if c, ok := s["const"]; ok && fmt.Sprint(c) != fmt.Sprint(v) {
		errs = append(errs, fmt.Sprintf("%s: %v, want const %v", at, v, c))
	}
	if e, ok := s["enum"].([]any); ok && !slices.ContainsFunc(e, func(x any) bool { return fmt.Sprint(x) == fmt.Sprint(v) }) {
		errs = append(errs, fmt.Sprintf("%s: %v not in %v", at, v, e))
	}
	typ, _ := s["type"].(string)
	switch typ {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return append(errs, fmt.Sprintf("%s: %T, want object", at, v))
		}
		props, _ := s["properties"].(map[string]any)
		for _, r := range asSlice(s["required"]) {
			if _, ok := m[r.(string)]; !ok {
				errs = append(errs, fmt.Sprintf("%s: missing required %q", at, r))
			}
		}
		for k, val := range m {
			if ps, ok := props[k]; ok {
				errs = append(errs, validate(doc, ps, val, at+"."+k)...)
				continue
			}
			switch ap := s["additionalProperties"].(type) {
			case bool:
				if !ap {
					errs = append(errs, fmt.Sprintf("%s: undocumented property %q", at, k))
				}
			case map[string]any:
				errs = append(errs, validate(doc, ap, val, at+"."+k)...)
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return append(errs, fmt.Sprintf("%s: %T, want array", at, v))
		}
		if items, ok := s["items"]; ok {
			for i, x := range a {
				errs = append(errs, validate(doc, items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return append(errs, fmt.Sprintf("%s: %T, want string", at, v))
		}
		if ml, ok := s["minLength"].(json.Number); ok {
			if n, _ := ml.Int64(); int64(len(str)) < n {
				errs = append(errs, fmt.Sprintf("%s: shorter than %d", at, n))
			}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			errs = append(errs, fmt.Sprintf("%s: %T, want boolean", at, v))
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return append(errs, fmt.Sprintf("%s: %T, want %s", at, v, typ))
		}
		f, _ := n.Float64()
		if _, err := n.Int64(); typ == "integer" && err != nil {
			errs = append(errs, fmt.Sprintf("%s: %s is not an integer", at, n))
		}
		if mn, ok := s["minimum"].(json.Number); ok {
			if m, _ := mn.Float64(); f < m {
				errs = append(errs, fmt.Sprintf("%s: %s below minimum %s", at, n, mn))
			}
		}
		if mx, ok := s["maximum"].(json.Number); ok {
			if m, _ := mx.Float64(); f > m {
				errs = append(errs, fmt.Sprintf("%s: %s above maximum %s", at, n, mx))
			}
		}
	case "":
	default:
		errs = append(errs, fmt.Sprintf("%s: schema type %q not supported by the test", at, typ))
	}
	return errs
}

func asSlice(v any) []any {
	a, _ := v.([]any)
	return a
}
