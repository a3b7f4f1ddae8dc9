package auth

import (
	"net/http"

	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/state"
)

// TokenHeader carries the access token on every non-exempt request.
const TokenHeader = "X-Access-Token"

// exempt routes do their own checks (/files signatures, /init body token)
// or must answer before /init ran (health, snapshot prepare).
var exempt = map[string]bool{
	"GET/health":            true,
	"GET/files":             true,
	"POST/files":            true,
	"POST/init":             true,
	"POST/snapshot/prepare": true,
}

// IsExempt reports whether METHOD+path skips the token check.
func IsExempt(method, path string) bool { return exempt[method+path] }

const unauthorizedMsg = "unauthorized access, please provide a valid access token or method signing if supported"

// RequireToken rejects requests without the right X-Access-Token once a
// token is set, except on the exempt routes.
func RequireToken(st *state.State, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !st.HasToken() || IsExempt(r.Method, r.URL.Path) || st.TokenEquals([]byte(r.Header.Get(TokenHeader))) {
			next.ServeHTTP(w, r)
			return
		}
		apierror.Write(w, http.StatusUnauthorized, unauthorizedMsg)
	})
}
