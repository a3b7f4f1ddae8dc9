// Package writectl lets a Connect streaming handler bound each send with a
// write deadline: Connect hides the http.ResponseWriter, so Wrap puts its
// ResponseController into the request context. A client that stops
// reading then fails the send instead of blocking it forever.
package writectl

import (
	"context"
	"net/http"
	"time"
)

type key struct{}

// Wrap makes SetWriteDeadline work for requests served by h.
func Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), key{}, http.NewResponseController(w))
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// SetWriteDeadline sets the response write deadline of the request behind
// ctx. It reports false when the handler was not wrapped or the transport
// does not support deadlines. net/http clears the deadline after the
// request, so a kept-alive connection is not affected.
func SetWriteDeadline(ctx context.Context, t time.Time) bool {
	rc, _ := ctx.Value(key{}).(*http.ResponseController)
	return rc != nil && rc.SetWriteDeadline(t) == nil
}
