package server

import (
	_ "embed"
	"encoding/json"
	"net/http"
)

// openapiJSON is the OpenAPI 3.1 document of the API. It is maintained by
// hand next to the routes; TestOpenAPIMatchesRoutes fails when a route is
// missing from it or it describes a route that does not exist.
//
//go:embed openapi.json
var openapiJSON []byte

// openapiDocument returns the document with info.version set to version.
func openapiDocument(version string) []byte {
	var doc map[string]any
	if err := json.Unmarshal(openapiJSON, &doc); err != nil {
		panic("server: embedded openapi.json is invalid: " + err.Error()) // caught by the tests
	}
	if info, ok := doc["info"].(map[string]any); ok {
		info["version"] = version
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		panic("server: openapi.json: " + err.Error())
	}
	return append(b, '\n')
}

// handleOpenAPI serves GET /openapi.json.
func (s *server) handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-cache")
	s.openapiOnce.Do(func() { s.openapi = openapiDocument(s.version) })
	_, _ = w.Write(s.openapi)
}
