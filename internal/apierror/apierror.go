// Package apierror writes the JSON error body every REST endpoint uses:
// {"code":<status>,"message":"..."} plus a newline.
package apierror

import (
	"encoding/json"
	"net/http"
)

// Write sends status with the common JSON error shape.
func Write(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	w.WriteHeader(status)
	b, _ := json.Marshal(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, msg})
	w.Write(append(b, '\n'))
}
