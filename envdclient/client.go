// Package envdclient is the host side of envd: a Go client a host agent
// imports to drive the guest agent of a sandbox microVM.
//
// It keeps two HTTP clients, both HTTP/1.1 only (one dead HTTP/2
// connection would take every multiplexed stream with it, and a snapshot
// kills connections):
//
//   - a unary client with an overall timeout, for health, init, snapshot
//     prepare, metrics and every unary RPC;
//   - a streaming client without an overall timeout, for Start, Connect,
//     WatchDir, StreamInput and /files transfers. A stream is instead
//     guarded by an idle watchdog: if nothing arrives (not even one of
//     envd's keepalive pings) within a multiple of the requested ping
//     interval, the stream is cancelled and fails with ErrStreamIdle.
//
// RPCs use the generated Connect clients with the binary protobuf codec,
// as the real host agents do. Errors can be tested with errors.Is against
// the sentinels in errors.go.
package envdclient

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/envd-go/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-go/envd/gen/process/processconnect"
)

// DefaultAddr is envd's address when it runs on this machine.
const DefaultAddr = "http://127.0.0.1:49983"

// Header names envd reads.
const (
	headerToken     = "X-Access-Token"
	headerKeepalive = "Keepalive-Ping-Interval"
)

// Defaults, modelled on wrenn's host agent.
const (
	DefaultUnaryTimeout          = 2 * time.Minute
	DefaultDialTimeout           = 10 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultTCPKeepAlive          = 30 * time.Second
	DefaultKeepaliveInterval     = 15 * time.Second
	DefaultIdleMultiplier        = 3
	DefaultTransferIdleTimeout   = time.Minute
	// PrepareSnapshotTimeout bounds POST /snapshot/prepare.
	PrepareSnapshotTimeout = 3 * time.Second
	// ReadyPollInterval is the /health polling period of WaitUntilReady.
	ReadyPollInterval = 100 * time.Millisecond
)

type options struct {
	token             string
	user              string
	unaryTimeout      time.Duration
	dialTimeout       time.Duration
	headerTimeout     time.Duration
	tcpKeepAlive      time.Duration
	keepaliveInterval time.Duration
	idleMultiplier    int
	transferIdle      time.Duration
}

// Option configures a Client.
type Option func(*options)

// WithAccessToken sends token as X-Access-Token on every request.
func WithAccessToken(token string) Option { return func(o *options) { o.token = token } }

// WithUser makes RPCs act as user (Basic auth) and /files use it as the
// username query parameter. Empty means envd's default user.
func WithUser(user string) Option { return func(o *options) { o.user = user } }

// WithUnaryTimeout sets the overall timeout of the unary client.
func WithUnaryTimeout(d time.Duration) Option { return func(o *options) { o.unaryTimeout = d } }

// WithDialTimeout sets the TCP connect timeout of both clients.
func WithDialTimeout(d time.Duration) Option { return func(o *options) { o.dialTimeout = d } }

// WithResponseHeaderTimeout bounds the wait for response headers after the
// request was written, on both clients.
func WithResponseHeaderTimeout(d time.Duration) Option {
	return func(o *options) { o.headerTimeout = d }
}

// WithKeepaliveInterval is the ping interval requested from envd on
// streams (Keepalive-Ping-Interval, whole seconds, at least 1 s).
func WithKeepaliveInterval(d time.Duration) Option {
	return func(o *options) { o.keepaliveInterval = d }
}

// WithIdleMultiplier sets how many ping intervals a stream may stay silent
// before its watchdog cancels it.
func WithIdleMultiplier(n int) Option { return func(o *options) { o.idleMultiplier = n } }

// WithTransferIdleTimeout sets how long an upload or download may make no
// progress before it is cancelled.
func WithTransferIdleTimeout(d time.Duration) Option {
	return func(o *options) { o.transferIdle = d }
}

// Client talks to one envd. It is safe for concurrent use.
type Client struct {
	base   *url.URL
	opts   options
	unary  *http.Client
	stream *http.Client

	proc       processconnect.ProcessClient // unary RPCs
	procStream processconnect.ProcessClient // Start, Connect, StreamInput
	fs         filesystemconnect.FilesystemClient
	fsStream   filesystemconnect.FilesystemClient
}

// New returns a client for the envd at addr ("http://host:port"; a bare
// "host:port" gets http://).
func New(addr string, opts ...Option) (*Client, error) {
	o := options{
		unaryTimeout:      DefaultUnaryTimeout,
		dialTimeout:       DefaultDialTimeout,
		headerTimeout:     DefaultResponseHeaderTimeout,
		tcpKeepAlive:      DefaultTCPKeepAlive,
		keepaliveInterval: DefaultKeepaliveInterval,
		idleMultiplier:    DefaultIdleMultiplier,
		transferIdle:      DefaultTransferIdleTimeout,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.keepaliveInterval < time.Second {
		o.keepaliveInterval = time.Second
	}
	if o.idleMultiplier < 1 {
		o.idleMultiplier = 1
	}
	if addr == "" {
		addr = DefaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("envdclient: parse address %q: %w", addr, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("envdclient: address %q: want http://host:port", addr)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &Client{
		base:   u,
		opts:   o,
		unary:  &http.Client{Transport: newTransport(o), Timeout: o.unaryTimeout},
		stream: &http.Client{Transport: newTransport(o)},
	}
	unaryOpts := []connect.ClientOption{connect.WithInterceptors(headerInterceptor{c: c})}
	streamOpts := []connect.ClientOption{connect.WithInterceptors(headerInterceptor{c: c, stream: true})}
	base := u.String()
	c.proc = processconnect.NewProcessClient(c.unary, base, unaryOpts...)
	c.procStream = processconnect.NewProcessClient(c.stream, base, streamOpts...)
	c.fs = filesystemconnect.NewFilesystemClient(c.unary, base, unaryOpts...)
	c.fsStream = filesystemconnect.NewFilesystemClient(c.stream, base, streamOpts...)
	return c, nil
}

// newTransport returns an HTTP/1.1-only transport: no HTTP/2 attempt, no
// proxy (the guest is reached directly), and no transparent gzip so
// downloads report their real Content-Length.
func newTransport(o options) *http.Transport {
	d := &net.Dialer{Timeout: o.dialTimeout, KeepAlive: o.tcpKeepAlive}
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Transport{
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     false,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		Protocols:             &p,
		MaxIdleConnsPerHost:   10,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: o.headerTimeout,
		DisableCompression:    true,
	}
}

// Addr returns the base URL of envd.
func (c *Client) Addr() string { return c.base.String() }

// CloseIdleConnections closes idle keep-alive connections of both clients,
// so the guest sees the FINs before a snapshot freezes it.
func (c *Client) CloseIdleConnections() {
	c.unary.CloseIdleConnections()
	c.stream.CloseIdleConnections()
}

// streamIdle is how long a stream may stay silent.
func (c *Client) streamIdle() time.Duration {
	return c.opts.keepaliveInterval * time.Duration(c.opts.idleMultiplier)
}

func (c *Client) setAuth(h http.Header) {
	if c.opts.token != "" {
		h.Set(headerToken, c.opts.token)
	}
}

// headerInterceptor adds the token, the Basic-auth user and, on streams,
// the keepalive interval to every RPC.
type headerInterceptor struct {
	c      *Client
	stream bool
}

func (i headerInterceptor) set(h http.Header) {
	i.c.setAuth(h)
	if i.c.opts.user != "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(i.c.opts.user+":")))
	}
	if i.stream {
		h.Set(headerKeepalive, strconv.Itoa(int(i.c.opts.keepaliveInterval/time.Second)))
	}
}

func (i headerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		i.set(req.Header())
		return next(ctx, req)
	}
}

func (i headerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		i.set(conn.RequestHeader())
		return conn
	}
}

func (i headerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// watchdog cancels a stream that stays silent for d while its reader waits.
// It is armed only around reads, so a slow consumer never trips it.
type watchdog struct {
	d     time.Duration
	timer *time.Timer
	once  sync.Once
	fired chan struct{}
}

func newWatchdog(d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d, fired: make(chan struct{})}
	w.timer = time.AfterFunc(d, func() {
		w.once.Do(func() { close(w.fired) })
		cancel()
	})
	w.timer.Stop()
	return w
}

func (w *watchdog) arm()    { w.timer.Reset(w.d) }
func (w *watchdog) disarm() { w.timer.Stop() }

// check turns err into ErrStreamIdle when the watchdog caused it.
func (w *watchdog) check(op string, err error) error {
	if err == nil {
		return nil
	}
	select {
	case <-w.fired:
		return &Error{Op: op, Message: fmt.Sprintf("nothing received for %s", w.d), kind: ErrStreamIdle, Err: err}
	default:
		return wrap(op, err)
	}
}

// errAs is errors.As for one target type, used by the error mapping.
func errAs[T error](err error) (T, bool) {
	var t T
	ok := errors.As(err, &t)
	return t, ok
}
