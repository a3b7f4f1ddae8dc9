// Package mmdstest is a stand-in for Firecracker's MMDS (V2 sessions) for
// tests: PUT /latest/api/token with X-metadata-token-ttl-seconds issues a
// session token; GET / with a valid X-metadata-token returns the metadata,
// as JSON when Accept asks for application/json.
package mmdstest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Server is a running stand-in. Its zero metadata is an empty object.
type Server struct {
	*httptest.Server

	mu     sync.Mutex
	data   map[string]any
	tokens map[string]bool
	fail   bool

	// Counts of requests received (PUT, everything else), for assertions.
	TokenRequests atomic.Int64
	DataRequests  atomic.Int64
}

// New starts a stand-in on a loopback port; it is closed by Close (use
// t.Cleanup(s.Close)).
func New() *Server {
	s := &Server{data: map[string]any{}, tokens: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// NewOnListener serves the stand-in on ln (e.g. an address a VM guest can
// reach); URL reflects ln's address.
func NewOnListener(ln net.Listener) *Server {
	s := &Server{data: map[string]any{}, tokens: map[string]bool{}}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.Server.Listener.Close()
	s.Server.Listener = ln
	s.Server.Start()
	return s
}

// Set replaces the metadata object (values are usually strings; any JSON
// value may be used to test parsers).
func (s *Server) Set(data map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data = data
}

// SetFields is Set with string values; empty values are omitted, as e2b's
// orchestrator does.
func (s *Server) SetFields(instanceID, envID, address, accessTokenHash string) {
	m := map[string]any{}
	for k, v := range map[string]string{"instanceID": instanceID, "envID": envID, "address": address, "accessTokenHash": accessTokenHash} {
		if v != "" {
			m[k] = v
		}
	}
	s.Set(m)
}

// SetFailing makes every request answer 500 (an unreachable MMDS), or
// restores normal service.
func (s *Server) SetFailing(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
}

// InvalidateTokens forgets all issued session tokens (as after a restore).
func (s *Server) InvalidateTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut {
		s.TokenRequests.Add(1)
	} else {
		s.DataRequests.Add(1)
	}
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	if fail {
		http.Error(w, "unavailable", http.StatusInternalServerError)
		return
	}
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		ttl, err := strconv.Atoi(r.Header.Get("X-metadata-token-ttl-seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "Token time to live value not found or invalid", http.StatusBadRequest)
			return
		}
		b := make([]byte, 16)
		rand.Read(b)
		tok := hex.EncodeToString(b)
		s.mu.Lock()
		s.tokens[tok] = true
		s.mu.Unlock()
		w.Write([]byte(tok))
	case r.Method == http.MethodGet:
		s.mu.Lock()
		ok := s.tokens[r.Header.Get("X-metadata-token")]
		data := s.data
		s.mu.Unlock()
		if !ok {
			http.Error(w, "Access denied: missing or invalid MMDS session token", http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		if !strings.Contains(r.Header.Get("Accept"), "application/json") {
			// Firecracker's IMDS text format: one key per line.
			w.Header().Set("Content-Type", "text/plain")
			for k := range data {
				w.Write([]byte(k + "\n"))
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(data)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}
