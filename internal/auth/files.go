package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
)

// File operations that signatures are bound to.
const (
	OpRead  = "read"
	OpWrite = "write"
)

// Sign returns the v1 signature of a /files URL: base64(SHA-256 of
// path:operation:username:token[:expiration]) without padding. expiration
// is the decimal string as it appears in the URL, or "" for none.
func Sign(path, operation, username string, token []byte, expiration string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s:%s:%s:", path, operation, username)
	h.Write(token)
	if expiration != "" {
		h.Write([]byte(":" + expiration))
	}
	return "v1_" + base64.RawStdEncoding.EncodeToString(h.Sum(nil))
}

// CheckFileAccess applies the /files access rule (protocol.md §2.3): open
// when no token is set; else a matching X-Access-Token header or a valid,
// unexpired signature. On failure it returns the 401 message.
func CheckFileAccess(r *http.Request, st *state.State, operation string, now time.Time) (msg string, ok bool) {
	if !st.HasToken() {
		return "", true
	}
	if hdr := r.Header.Get(TokenHeader); hdr != "" {
		if st.TokenEquals([]byte(hdr)) {
			return "", true
		}
		return "access token present in header but does not match", false
	}
	q := r.URL.Query()
	sig := q.Get("signature")
	if !q.Has("signature") {
		return "missing signature query parameter", false
	}
	exp := q.Get("signature_expiration")
	var match bool
	st.WithToken(func(token []byte, _ bool) {
		want := Sign(q.Get("path"), operation, q.Get("username"), token, exp)
		match = subtle.ConstantTimeCompare([]byte(want), []byte(sig)) == 1
	})
	if !match {
		return "invalid signature", false
	}
	if exp != "" {
		n, err := strconv.ParseInt(exp, 10, 64)
		if err != nil || n < now.Unix() {
			return "signature is already expired", false
		}
	}
	return "", true
}

// FileUser resolves the user of a /files request: the username query
// parameter when present, else the default user. The error text is the
// 401 message.
func FileUser(r *http.Request, st *state.State) (*users.User, error) {
	name := st.DefaultUser()
	if q := r.URL.Query(); q.Has("username") {
		name = q.Get("username")
	}
	u, err := users.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("error looking up user '%s': %w", name, err)
	}
	return u, nil
}
