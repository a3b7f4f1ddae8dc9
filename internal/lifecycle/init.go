package lifecycle

import (
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envd-go/envd/internal/host"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/server"
	"github.com/envd-go/envd/internal/state"
)

// MetadataFetcher reads MMDS; *host.MMDS implements it.
type MetadataFetcher interface {
	Fetch(ctx context.Context) (host.Metadata, error)
}

// InitOptions configure the /init handler. Zero paths take the defaults.
type InitOptions struct {
	State   *state.State
	Version string
	Logger  *slog.Logger
	Reaper  *pid1.Reaper

	// MMDS is consulted for the access-token hash; nil when not running in
	// Firecracker (-isnotfc), which makes a set token the only authority.
	MMDS MetadataFetcher
	// Clock is stepped from the request timestamp; zero = the real clock.
	Clock host.Clock

	HostsFile    string   // /etc/hosts
	HostsAliases []string // names mapped to hyperloopIP: events.e2b.local, events.wrenn.local
	CABundle     string   // /etc/ssl/certs/ca-certificates.crt
	CACopy       string   // /usr/local/share/ca-certificates/e2b-ca.crt
	Commands     InitCommands

	// BeforeApply runs on every authorised /init (also stale ones), before
	// the data is applied: restore recovery after a snapshot.
	BeforeApply func(ctx context.Context)
	// Authorized runs right after authorisation and may add response
	// headers (freeze audit); the returned func, if any, runs when the
	// request ends, whatever the outcome (thaw).
	Authorized func(ctx context.Context, h http.Header) (done func())
	// AfterInit runs after every 204 (the bounded MMDS re-poll).
	AfterInit func()
}

// Init serves POST /init.
type Init struct {
	opts  InitOptions
	log   *slog.Logger
	lock  chan struct{} // one /init at a time; waiting honours the request context
	ca    *caInstaller
	nfs   *nfsMounter
	hosts hostsWriter

	lastTS      int64 // UnixNano of the newest applied timestamp; guarded by lock
	clockSynced bool  // a timestamp has been applied to the clock; guarded by lock
	initialized atomic.Bool
}

// NewInit returns the /init handler.
func NewInit(o InitOptions) *Init {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock.Now == nil || o.Clock.Set == nil {
		o.Clock = host.SystemClock
	}
	if o.HostsFile == "" {
		o.HostsFile = "/etc/hosts"
	}
	if len(o.HostsAliases) == 0 {
		o.HostsAliases = []string{"events.e2b.local", "events.wrenn.local"}
	}
	if o.CABundle == "" {
		o.CABundle = "/etc/ssl/certs/ca-certificates.crt"
	}
	if o.CACopy == "" {
		o.CACopy = "/usr/local/share/ca-certificates/e2b-ca.crt"
	}
	return &Init{
		opts:  o,
		log:   o.Logger,
		lock:  make(chan struct{}, 1),
		ca:    newCAInstaller(o.CABundle, o.CACopy, o.Logger),
		nfs:   newNFSMounter(o.Reaper, o.Commands),
		hosts: hostsWriter{path: o.HostsFile, names: o.HostsAliases, log: o.Logger},
	}
}

// Route is POST /init for server.Deps.Routes.
func (i *Init) Route() server.Route { return server.Route{Pattern: "POST /init", Handler: i} }

// Initialized reports whether an /init has been authorised and completed.
func (i *Init) Initialized() bool { return i.initialized.Load() }

// Wait blocks until background work started by /init calls (hosts file,
// CA clean-up) has finished.
func (i *Init) Wait() {
	i.ca.wait()
	i.hosts.wg.Wait()
}

// maxInitBody bounds the request; CA bundles are the only large field.
const maxInitBody = 16 << 20

// initRequest holds the /init fields. Pointers tell absent from empty.
// encoding/json matches keys case-insensitively and ignores unknown ones,
// like e2b's envd.
type initRequest struct {
	EnvVars        *map[string]string `json:"envVars"`
	AccessToken    json.RawMessage    `json:"accessToken"`
	DefaultUser    *string            `json:"defaultUser"`
	DefaultWorkdir *string            `json:"defaultWorkdir"`
	Timestamp      *time.Time         `json:"timestamp"`
	VolumeMounts   *[]VolumeMount     `json:"volumeMounts"`
	CABundle       *string            `json:"caBundle"`
	LifecycleID    *string            `json:"lifecycleID"`
	HyperloopIP    *string            `json:"hyperloopIP"`

	token    []byte // decoded accessToken, nil when absent/null
	hasToken bool
	arrived  time.Time // when the handler started (monotonic)
}

var (
	errTokenEscaped = errors.New("accessToken must be a plain JSON string without escapes")
	errTokenEmpty   = errors.New("accessToken must not be empty")
)

// parseInitRequest decodes an /init body. An empty body is valid and means
// every field is absent.
func parseInitRequest(body []byte) (*initRequest, error) {
	req := &initRequest{}
	if len(body) == 0 {
		return req, nil
	}
	if err := json.Unmarshal(body, req); err != nil {
		return nil, fmt.Errorf("decode /init body: %w", err)
	}
	raw := bytes.TrimSpace(req.AccessToken)
	req.AccessToken = nil
	if len(raw) == 0 || string(raw) == "null" {
		return req, nil
	}
	// Tokens are taken byte for byte, as e2b does: no escapes, so the
	// bytes compared are exactly the bytes the host hashed.
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, errors.New("accessToken must be a string")
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		return nil, errTokenEscaped
	}
	if len(inner) == 0 {
		return nil, errTokenEmpty
	}
	req.token, req.hasToken = bytes.Clone(inner), true
	clear(raw)
	return req, nil
}

// wipe zeroes the request's copy of the token.
func (r *initRequest) wipe() { clear(r.token) }

func (i *Init) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	w.Header().Set("X-Envd-Version", i.opts.Version)
	body, err := io.ReadAll(io.LimitReader(r.Body, maxInitBody+1))
	if err != nil || len(body) > maxInitBody {
		clear(body)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	req, err := parseInitRequest(body)
	clear(body) // the body may hold the token
	if err != nil {
		i.log.Debug("init: bad request body", "error", err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	defer req.wipe()
	req.arrived = arrived

	ctx := r.Context()
	select {
	case i.lock <- struct{}{}:
	case <-ctx.Done():
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	status, msg := i.handleLocked(ctx, w.Header(), req)
	<-i.lock

	if status != http.StatusNoContent {
		writePlain(w, status, msg)
		return
	}
	if i.opts.AfterInit != nil {
		i.opts.AfterInit()
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// handleLocked runs with the init lock held and returns the response.
func (i *Init) handleLocked(ctx context.Context, h http.Header, req *initRequest) (int, string) {
	if msg, ok := i.authorize(ctx, req); !ok {
		i.log.Warn("init: access token validation failed", "reason", msg)
		return http.StatusUnauthorized, msg
	}
	if i.opts.Authorized != nil {
		if done := i.opts.Authorized(ctx, h); done != nil {
			defer done()
		}
	}
	if i.opts.BeforeApply != nil {
		i.opts.BeforeApply(ctx)
	}
	if req.Timestamp != nil {
		ts := req.Timestamp.UnixNano()
		if ts < i.lastTS {
			i.log.Debug("init: stale timestamp, not applied", "timestamp", req.Timestamp)
			i.initialized.Store(true)
			return http.StatusNoContent, ""
		}
		i.lastTS = ts
	}
	if status, msg := i.apply(ctx, req); status != http.StatusNoContent {
		return status, msg
	}
	i.initialized.Store(true)
	return http.StatusNoContent, ""
}

// apply sets the /init data in e2b's order; the first error stops it and
// earlier effects stay.
func (i *Init) apply(ctx context.Context, req *initRequest) (int, string) {
	st := i.opts.State
	if req.Timestamp != nil {
		// The timestamp was the host's time when the request arrived; the
		// lock wait, the MMDS token check and restore recovery ran since.
		stepped, err := i.opts.Clock.SyncTo(req.Timestamp.Add(time.Since(req.arrived)), !i.clockSynced)
		if err != nil {
			i.log.Error("init: set clock", "error", err)
		} else {
			i.clockSynced = true
			if stepped {
				i.log.Info("init: clock stepped to host time")
			}
		}
	}
	if req.EnvVars != nil {
		st.ReplaceUserEnv(*req.EnvVars)
	}
	if req.hasToken {
		st.SetToken(req.token)
	} else {
		st.SetToken(nil)
	}
	if req.HyperloopIP != nil && *req.HyperloopIP != "" {
		i.setHyperloop(*req.HyperloopIP)
	}
	if req.DefaultUser != nil {
		st.SetDefaultUser(*req.DefaultUser)
	}
	if req.DefaultWorkdir != nil {
		st.SetDefaultWorkdir(*req.DefaultWorkdir)
	}
	if req.CABundle != nil && *req.CABundle != "" {
		if err := i.ca.install(ctx, *req.CABundle); err != nil {
			if errors.Is(err, errCABusy) {
				return http.StatusServiceUnavailable, err.Error()
			}
			return http.StatusBadRequest, err.Error()
		}
	}
	if req.VolumeMounts != nil {
		lid := ""
		if req.LifecycleID != nil {
			lid = *req.LifecycleID
		}
		if err := i.nfs.mountAll(*req.VolumeMounts, lid); err != nil {
			return http.StatusBadRequest, err.Error()
		}
	}
	return http.StatusNoContent, ""
}

// setHyperloop points the events host alias at ip (in the background; the
// hosts file is not on /init's critical path) and exports its URL.
func (i *Init) setHyperloop(ip string) {
	addr := net.ParseIP(ip)
	if addr == nil {
		i.log.Warn("init: hyperloopIP is not an IP address", "value", ip)
		return
	}
	url := "http://" + addr.String()
	if addr.To4() == nil {
		url = "http://[" + addr.String() + "]"
	}
	st := i.opts.State
	st.SetInternalEnv("E2B_EVENTS_ADDRESS", url)
	st.SetInternalEnv("WRENN_EVENTS_ADDRESS", url)
	i.hosts.set(addr.String())
}

// authorize applies the token matrix of lifecycle.md §3.4. The MMDS hash is
// fetched at most once and only when the fast path does not decide.
func (i *Init) authorize(ctx context.Context, req *initRequest) (string, bool) {
	st := i.opts.State
	if req.hasToken && st.TokenEquals(req.token) {
		return "", true
	}
	mmdsHash := ""
	if i.opts.MMDS != nil {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		md, err := i.opts.MMDS.Fetch(fctx)
		cancel()
		if err != nil {
			i.log.Debug("init: MMDS unavailable for token check", "error", err)
		} else {
			mmdsHash = md.AccessTokenHash
		}
	}
	if mmdsHash != "" {
		var candidate []byte
		if req.hasToken {
			candidate = req.token
		}
		if (req.hasToken || strings.EqualFold(mmdsHash, emptySHA512)) && hashMatches(candidate, mmdsHash) {
			return "", true
		}
	} else if !st.HasToken() {
		return "", true // first-time setup
	}
	if !req.hasToken {
		return "access token reset not authorized", false
	}
	return "access token validation failed", false
}

var emptySHA512 = func() string { s := sha512.Sum512(nil); return hex.EncodeToString(s[:]) }()

// hashCompare compares token hashes; a variable so tests can check it is
// the constant-time comparison.
var hashCompare = subtle.ConstantTimeCompare

func hashMatches(token []byte, wantHex string) bool {
	sum := sha512.Sum512(token)
	got := hex.EncodeToString(sum[:])
	return hashCompare([]byte(got), bytes.ToLower([]byte(wantHex))) == 1
}

func writePlain(w http.ResponseWriter, status int, msg string) {
	if msg != "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
	}
	w.WriteHeader(status)
	if msg != "" {
		io.WriteString(w, msg)
	}
}

// hostsWriter updates the hosts file in the background; the newest
// address wins and writes never overlap.
type hostsWriter struct {
	path  string
	names []string
	log   *slog.Logger

	mu      sync.Mutex
	pending string
	busy    bool
	wg      sync.WaitGroup
}

func (h *hostsWriter) set(ip string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending = ip
	if h.busy {
		return
	}
	h.busy = true
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			h.mu.Lock()
			ip := h.pending
			h.pending = ""
			if ip == "" {
				h.busy = false
				h.mu.Unlock()
				return
			}
			h.mu.Unlock()
			if err := setHostsAlias(h.path, ip, h.names); err != nil {
				h.log.Warn("init: update hosts file", "error", err)
			}
		}
	}()
}
