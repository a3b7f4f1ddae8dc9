// Package server builds envd's single HTTP handler and listener: REST
// routes, both Connect services, CORS, the token check and connection
// tracking, on one port speaking HTTP/1.1 and cleartext HTTP/2.
package server

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/envd-go/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/host"
	"github.com/envd-go/envd/internal/process"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/writectl"
)

// IdleTimeout exceeds the upstream proxy's idle timeout, as in e2b.
const IdleTimeout = 640 * time.Second

// Deps are the services the server routes to. Nil members are not routed.
type Deps struct {
	Version string
	// HealthNoContent makes /health answer e2b's bare 204 instead of
	// 200 {"version": ...}.
	HealthNoContent bool
	State           *state.State
	Sampler         *host.CPUSampler
	Logger          *slog.Logger

	Process    processconnect.ProcessHandler
	Filesystem filesystemconnect.FilesystemHandler
	// Routes adds REST routes owned by other packages (files, lifecycle).
	Routes []Route
	// OnHealth runs before /health answers (restore detection).
	OnHealth func(r *http.Request)
	// WriteStall bounds one blocked write to a client (DefaultWriteStall if 0).
	WriteStall time.Duration
	// PortStats, if set, adds the port forwarder's counters to /metrics.
	PortStats func() host.PortStats
}

// Route is one REST pattern in net/http ServeMux syntax ("POST /init").
type Route struct {
	Pattern string
	Handler http.Handler
}

// Handler returns the full handler: write deadlines → CORS → token check →
// router.
func Handler(d Deps) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		if d.OnHealth != nil {
			d.OnHealth(r)
		}
		w.Header().Set("Cache-Control", "no-store")
		if d.HealthNoContent {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, map[string]string{"version": d.Version})
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		m, err := host.ReadMetrics(d.Sampler)
		if err != nil {
			d.Logger.Error("read metrics", "error", err)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		if d.PortStats != nil {
			ps := d.PortStats()
			m.PortStats = &ps
		}
		writeJSON(w, m)
	})
	mux.HandleFunc("GET /envs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, d.State.Env())
	})

	opts := []connect.HandlerOption{
		connect.WithInterceptors(auth.UserInterceptor(d.State)),
		// Host agents (connect-go) advertise gzip on every call. Default-level
		// gzip of bulk process output costs far more CPU than it saves on a
		// VM-local link, so compress at BestSpeed and skip tiny messages.
		connect.WithCompression("gzip",
			func() connect.Decompressor { return &gzip.Reader{} },
			func() connect.Compressor { w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed); return w }),
		connect.WithCompressMinBytes(1024),
	}
	if d.Process != nil {
		// process.HandlerOptions: the fast JSON codec for output chunks;
		// writectl: per-send write deadlines and batched flushes.
		path, h := processconnect.NewProcessHandler(d.Process, append(opts, process.HandlerOptions()...)...)
		mux.Handle(path, writectl.Wrap(h))
	}
	if d.Filesystem != nil {
		// writectl: WatchDir bounds each stream send with a write deadline.
		path, h := filesystemconnect.NewFilesystemHandler(d.Filesystem, opts...)
		mux.Handle(path, writectl.Wrap(h))
	}
	for _, rt := range d.Routes {
		mux.Handle(rt.Pattern, rt.Handler)
	}
	stall := d.WriteStall
	if stall <= 0 {
		stall = DefaultWriteStall
	}
	return withWriteDeadline(withCORS(auth.RequireToken(d.State, mux)), stall)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		apierror.Write(w, http.StatusInternalServerError, err.Error())
	}
}

// New returns an http.Server for h: HTTP/1.1 and h2c with prior knowledge,
// the 640 s idle timeout and no read or write timeouts (streams live for
// hours). connState, if set, sees every connection state change.
func New(h http.Handler, connState func(net.Conn, http.ConnState)) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:     h,
		IdleTimeout: IdleTimeout,
		Protocols:   &p,
		ConnState:   connState,
	}
}

// Serve listens on addr and serves until ctx ends, then shuts down within
// grace (open streams are cut after that).
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("server stopped: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	srv.Close()
	<-errc
	return nil
}
