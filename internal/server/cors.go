package server

import (
	"net/http"
	"strings"
)

// exposedHeaders is the union of both originals' lists, e2b's order first.
var exposedHeaders = strings.Join([]string{
	"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin",
	"Location", "Cache-Control", "X-Content-Type-Options",
	"Connect-Content-Encoding", "Connect-Protocol-Version", "Grpc-Encoding",
}, ", ")

const allowedMethods = "HEAD, GET, POST, PUT, PATCH, DELETE"

// withCORS allows every origin without credentials, answers preflights with
// 204 before any auth check, and exposes the gRPC/Connect headers.
func withCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		origin := r.Header.Get("Origin")
		if r.Method == http.MethodOptions && origin != "" && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Add("Vary", "Origin")
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			h.Set("Access-Control-Allow-Origin", "*")
			h.Set("Access-Control-Allow-Methods", allowedMethods)
			if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
				h.Set("Access-Control-Allow-Headers", req)
			}
			h.Set("Access-Control-Max-Age", "7200")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Add("Vary", "Origin")
		if origin != "" {
			h.Set("Access-Control-Allow-Origin", "*")
			h.Set("Access-Control-Expose-Headers", exposedHeaders)
		}
		next.ServeHTTP(w, r)
	})
}
