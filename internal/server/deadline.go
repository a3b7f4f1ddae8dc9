package server

import (
	"io"
	"net/http"
	"time"
)

// DefaultWriteStall bounds how long one write to a client may block. A peer
// lost in a snapshot or a stalled reader then fails the write instead of
// holding a handler (and what it owns) forever; an active stream renews the
// deadline on every write, so long-lived streams are unaffected.
const DefaultWriteStall = 30 * time.Second

// withWriteDeadline renews the connection's write deadline before every
// header, body write and flush, and once more after the handler returns so
// the server's final flush has time too.
func withWriteDeadline(next http.Handler, stall time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dw := &deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), stall: stall}
		dw.renew()
		next.ServeHTTP(dw, r)
		dw.renew()
	})
}

type deadlineWriter struct {
	http.ResponseWriter
	rc    *http.ResponseController
	stall time.Duration
}

func (d *deadlineWriter) renew() { _ = d.rc.SetWriteDeadline(time.Now().Add(d.stall)) }

func (d *deadlineWriter) WriteHeader(code int) {
	d.renew()
	d.ResponseWriter.WriteHeader(code)
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.renew()
	return d.ResponseWriter.Write(p)
}

func (d *deadlineWriter) Flush() {
	d.renew()
	if f, ok := d.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer (full duplex,
// read deadlines).
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// readFromChunk is how much one ReadFrom step may send under one deadline.
const readFromChunk = 4 << 20

// ReadFrom keeps the underlying writer's sendfile path for downloads while
// renewing the deadline every chunk.
func (d *deadlineWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := d.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{d}, src)
	}
	var total int64
	for {
		d.renew()
		n, err := rf.ReadFrom(io.LimitReader(src, readFromChunk))
		total += n
		if err != nil || n < readFromChunk {
			return total, err
		}
	}
}
