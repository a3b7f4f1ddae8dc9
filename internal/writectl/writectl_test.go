package writectl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

// A client that sends a request and never reads: the handler's writes must
// fail at the deadline instead of blocking forever.
func TestWriteDeadlineDropsStalledClient(t *testing.T) {
	done := make(chan error, 1)
	srv := httptest.NewServer(Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 1<<20)
		for i := 0; i < 1000; i++ { // at most 1 GiB: far beyond socket buffers
			SetWriteDeadline(r.Context(), time.Now().Add(300*time.Millisecond))
			if _, err := w.Write(chunk); err != nil {
				done <- err
				return
			}
		}
		done <- errors.New("all writes succeeded")
	})))
	t.Cleanup(srv.Close)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write error %v, want deadline exceeded", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("handler still blocked")
	}
}

type countingWriter struct {
	http.ResponseWriter
	flushes int
}

func (c *countingWriter) Flush() { c.flushes++ }

func TestHoldBatchesFlushes(t *testing.T) {
	cw := &countingWriter{ResponseWriter: httptest.NewRecorder()}
	var inner http.ResponseWriter
	var ctx context.Context
	Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { inner, ctx = w, r.Context() })).
		ServeHTTP(cw, httptest.NewRequest("GET", "/", nil))
	f := inner.(http.Flusher)
	f.Flush()
	release := Hold(ctx)
	for range 10 {
		f.Flush()
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	f.Flush()
	if cw.flushes != 3 {
		t.Fatalf("%d flushes, want 3", cw.flushes)
	}
	if Hold(context.Background())() != nil || SetWriteDeadline(context.Background(), time.Now()) {
		t.Fatal("unwrapped context should be a no-op")
	}
}
