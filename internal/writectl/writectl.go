// Package writectl gives Connect streaming handlers control over the
// response writes Connect hides: a write deadline per send, so a client
// that stops reading fails the send instead of blocking it forever, and
// batching, so a burst of messages leaves in one write instead of one
// flush per message.
package writectl

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"
)

type key struct{}

// writer passes writes through; Flush is skipped while a batch is held.
type writer struct {
	http.ResponseWriter
	rc   *http.ResponseController // of the wrapped writer
	hold atomic.Bool
}

func (w *writer) Flush() {
	if !w.hold.Load() {
		w.rc.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Wrap makes SetWriteDeadline and Hold work for requests served by h.
func Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w := &writer{ResponseWriter: rw, rc: http.NewResponseController(rw)}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), key{}, w)))
	})
}

// SetWriteDeadline sets the response write deadline of the request behind
// ctx. It reports false when the handler was not wrapped or the transport
// does not support deadlines. net/http clears the deadline after the
// request, so a kept-alive connection is not affected.
func SetWriteDeadline(ctx context.Context, t time.Time) bool {
	w, _ := ctx.Value(key{}).(*writer)
	return w != nil && w.rc.SetWriteDeadline(t) == nil
}

// Hold suppresses the flushes a streaming handler's sends make until the
// returned release is called, which flushes once. Only for the handler's
// own goroutine; without Wrap it is a no-op.
func Hold(ctx context.Context) (release func() error) {
	w, _ := ctx.Value(key{}).(*writer)
	if w == nil {
		return func() error { return nil }
	}
	w.hold.Store(true)
	return func() error {
		w.hold.Store(false)
		return w.rc.Flush()
	}
}
