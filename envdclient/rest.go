package envdclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Health is what GET /health reports.
type Health struct {
	// Version is envd's version; empty when envd answers e2b's bare 204.
	Version string `json:"version"`
}

// Metrics is GET /metrics.
type Metrics struct {
	Timestamp   int64   `json:"ts"`
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotal    uint64  `json:"mem_total"`
	MemUsed     uint64  `json:"mem_used"`
	MemCache    uint64  `json:"mem_cache"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	DiskUsed    uint64  `json:"disk_used"`
	DiskTotal   uint64  `json:"disk_total"`
}

// VolumeMount is one NFS mount requested by /init.
type VolumeMount struct {
	NFSTarget string `json:"nfs_target"`
	Path      string `json:"path"`
}

// InitRequest is the body of POST /init. Zero fields are omitted.
type InitRequest struct {
	// AccessToken becomes envd's token. Empty omits the field, which
	// clears a token that is set (when envd allows it).
	AccessToken string
	// EnvVars replaces the default environment when non-nil (an empty,
	// non-nil map clears it).
	EnvVars        map[string]string
	DefaultUser    string
	DefaultWorkdir string
	// Timestamp orders /init calls and sets the guest clock. Zero means
	// "now, at the moment the request is sent".
	Timestamp time.Time
	// NoTimestamp omits the timestamp (what wrenn's host sends).
	NoTimestamp  bool
	HyperloopIP  string
	VolumeMounts []VolumeMount
	LifecycleID  string
	CABundle     string
}

func (r InitRequest) body(now time.Time) ([]byte, error) {
	m := map[string]any{}
	if r.AccessToken != "" {
		m["accessToken"] = r.AccessToken
	}
	if r.EnvVars != nil {
		m["envVars"] = r.EnvVars
	}
	if r.DefaultUser != "" {
		m["defaultUser"] = r.DefaultUser
	}
	if r.DefaultWorkdir != "" {
		m["defaultWorkdir"] = r.DefaultWorkdir
	}
	if !r.NoTimestamp {
		ts := r.Timestamp
		if ts.IsZero() {
			ts = now
		}
		m["timestamp"] = ts.UTC().Format(time.RFC3339Nano)
	}
	if r.HyperloopIP != "" {
		m["hyperloopIP"] = r.HyperloopIP
	}
	if r.VolumeMounts != nil {
		m["volumeMounts"] = r.VolumeMounts
	}
	if r.LifecycleID != "" {
		m["lifecycleID"] = r.LifecycleID
	}
	if r.CABundle != "" {
		m["caBundle"] = r.CABundle
	}
	return json.Marshal(m)
}

// InitResult is what /init reported.
type InitResult struct {
	// Version is the X-Envd-Version header, if envd sent one.
	Version string
}

func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.Path += path
	if q != nil {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// do sends a REST request with the token on hc and returns the response if
// its status is one of want; otherwise an *Error.
func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, body io.Reader, want ...int) (*http.Response, error) {
	op := method + " " + path
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, nil), body)
	if err != nil {
		return nil, &Error{Op: op, Message: err.Error(), Err: err, kind: ErrInvalidArgument}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.setAuth(req.Header)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, wrap(op, err)
	}
	for _, s := range want {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, statusError(op, resp)
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, c.unary, http.MethodGet, path, nil, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return wrap("GET "+path, fmt.Errorf("decode response: %w", err))
	}
	return nil
}

// Health calls GET /health. Both 200 {"version"} and e2b's bare 204 are
// healthy.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	resp, err := c.do(ctx, c.unary, http.MethodGet, "/health", nil, http.StatusOK, http.StatusNoContent)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			return h, wrap("GET /health", fmt.Errorf("decode response: %w", err))
		}
	}
	return h, nil
}

// Metrics calls GET /metrics.
func (c *Client) Metrics(ctx context.Context) (Metrics, error) {
	var m Metrics
	err := c.getJSON(ctx, "/metrics", &m)
	return m, err
}

// Envs calls GET /envs: the default environment of new processes.
func (c *Client) Envs(ctx context.Context) (map[string]string, error) {
	m := map[string]string{}
	err := c.getJSON(ctx, "/envs", &m)
	return m, err
}

// WaitUntilReady polls GET /health every 100 ms until it answers 200 (or
// 204), ctx ends, or envd answers something that retrying cannot fix.
// Give it its own context: sharing one budget with Init lets a slow boot
// starve Init.
func (c *Client) WaitUntilReady(ctx context.Context) (Health, error) {
	t := time.NewTicker(ReadyPollInterval)
	defer t.Stop()
	var last error
	for {
		h, err := c.Health(ctx)
		if err == nil {
			return h, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return h, &Error{Op: "WaitUntilReady", Message: fmt.Sprintf("envd not ready: %v", last), Err: ctx.Err(), kind: transportKind(ctx.Err())}
		case <-t.C:
		}
	}
}

// Init calls POST /init once and requires 204.
func (c *Client) Init(ctx context.Context, r InitRequest) (InitResult, error) {
	body, err := r.body(time.Now())
	if err != nil {
		return InitResult{}, wrap("POST /init", err)
	}
	resp, err := c.do(ctx, c.unary, http.MethodPost, "/init", bytes.NewReader(body), http.StatusNoContent)
	if err != nil {
		return InitResult{}, err
	}
	resp.Body.Close()
	return InitResult{Version: resp.Header.Get("X-Envd-Version")}, nil
}

// BootOptions are the steps of Boot.
type BootOptions struct {
	ReadyTimeout time.Duration // default 30 s
	InitTimeout  time.Duration // default 30 s
	Init         *InitRequest  // nil skips /init
}

// Boot runs WaitUntilReady and then Init, each with a fresh timeout derived
// from parent (the "separate contexts per step" rule of wrenn's host
// agent), and returns envd's version.
func (c *Client) Boot(parent context.Context, o BootOptions) (string, error) {
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 30 * time.Second
	}
	if o.InitTimeout <= 0 {
		o.InitTimeout = 30 * time.Second
	}
	rctx, cancel := context.WithTimeout(parent, o.ReadyTimeout)
	h, err := c.WaitUntilReady(rctx)
	cancel()
	if err != nil {
		return "", err
	}
	if o.Init == nil {
		return h.Version, nil
	}
	ictx, cancel := context.WithTimeout(parent, o.InitTimeout)
	defer cancel()
	res, err := c.Init(ictx, *o.Init)
	if err != nil {
		return h.Version, err
	}
	if h.Version == "" {
		h.Version = res.Version
	}
	return h.Version, nil
}

// PrepareSnapshot closes idle connections of both clients (so the guest
// sees their FINs before the freeze) and calls POST /snapshot/prepare with
// a 3 s timeout, requiring 204.
func (c *Client) PrepareSnapshot(ctx context.Context) error {
	c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, PrepareSnapshotTimeout)
	defer cancel()
	resp, err := c.do(ctx, c.unary, http.MethodPost, "/snapshot/prepare", nil, http.StatusNoContent)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
