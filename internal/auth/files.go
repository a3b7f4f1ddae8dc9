package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
)

// File operations that signatures are bound to.
const (
	OpRead  = "read"
	OpWrite = "write"
)

// signatureCompare compares signatures; a package variable so tests can
// assert it is the constant-time one.
var signatureCompare = subtle.ConstantTimeCompare

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

// AccessError is a refused /files request: Status 401 with the JSON error
// body, or 400 with a plain-text body for a malformed query parameter (the
// shape e2b's generated parameter binder produces).
type AccessError struct {
	Status  int
	Message string
}

func (e *AccessError) Error() string { return e.Message }

// Write sends the error response.
func (e *AccessError) Write(w http.ResponseWriter) {
	if e.Status == http.StatusBadRequest {
		http.Error(w, e.Message, e.Status)
		return
	}
	apierror.Write(w, e.Status, e.Message)
}

// SignatureExpiration parses the signature_expiration query parameter. ok
// is false when it is absent; a malformed value yields a 400 AccessError.
// It is checked whether or not a token is set, as e2b binds query
// parameters before its handler runs.
func SignatureExpiration(r *http.Request) (exp int64, ok bool, aerr *AccessError) {
	q := r.URL.Query()
	if !q.Has("signature_expiration") {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(q.Get("signature_expiration"), 10, 64)
	if err != nil {
		return 0, false, &AccessError{http.StatusBadRequest,
			"Invalid format for parameter signature_expiration: error binding string parameter: " + err.Error()}
	}
	return n, true, nil
}

// AuthorizeFile applies the /files access rule (protocol.md §2.3) and
// returns nil when the request may proceed: open when no token is set; else
// a matching X-Access-Token header, or a valid signature over the raw path
// and username query values ("" when absent) that has not expired.
func AuthorizeFile(r *http.Request, st *state.State, operation string, now time.Time) *AccessError {
	exp, hasExp, aerr := SignatureExpiration(r)
	if aerr != nil {
		return aerr
	}
	if !st.HasToken() {
		return nil
	}
	deny := func(msg string) *AccessError { return &AccessError{http.StatusUnauthorized, msg} }
	if hdr := r.Header.Get(TokenHeader); hdr != "" {
		if st.TokenEquals([]byte(hdr)) {
			return nil
		}
		return deny("access token present in header but does not match")
	}
	q := r.URL.Query()
	if !q.Has("signature") {
		return deny("missing signature query parameter")
	}
	sig := q.Get("signature")
	expText := ""
	if hasExp {
		// e2b signs the parsed integer, so "+5" or "05" sign as "5".
		expText = strconv.FormatInt(exp, 10)
	}
	match := false
	st.WithToken(func(token []byte, ok bool) {
		if !ok {
			return
		}
		want := Sign(q.Get("path"), operation, q.Get("username"), token, expText)
		match = signatureCompare([]byte(want), []byte(sig)) == 1
	})
	if !match {
		return deny("invalid signature")
	}
	if hasExp && exp < now.Unix() {
		return deny("signature is already expired")
	}
	return nil
}

// CheckFileAccess is AuthorizeFile reduced to a 401 message; kept for
// callers that only write 401s. Prefer AuthorizeFile, which also reports
// the 400 for a malformed signature_expiration.
func CheckFileAccess(r *http.Request, st *state.State, operation string, now time.Time) (msg string, ok bool) {
	if e := AuthorizeFile(r, st, operation, now); e != nil {
		return e.Message, false
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
