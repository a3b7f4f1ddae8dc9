package host

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/envd-go/envd/internal/state"
)

// DefaultMMDSAddress is Firecracker's metadata service.
const DefaultMMDSAddress = "http://169.254.169.254"

// Metadata is what the host publishes in MMDS. Every key is optional.
type Metadata struct {
	InstanceID      string `json:"instanceID"`
	EnvID           string `json:"envID"`
	Address         string `json:"address"`
	AccessTokenHash string `json:"accessTokenHash"`
}

// ParseMetadata decodes the MMDS JSON object leniently: missing keys are
// empty and unknown keys are ignored (e2b's orchestrator and wrenn's host
// agent write different key sets). Keys match case-insensitively, as with
// e2b's encoding/json decoding.
func ParseMetadata(b []byte) (Metadata, error) {
	var m Metadata
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return m, errors.New("mmds: response is not a JSON object")
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return Metadata{}, fmt.Errorf("mmds: decode metadata: %w", err)
	}
	return m, nil
}

// MMDS is a client for Firecracker's metadata service (V2 session tokens).
type MMDS struct {
	addr   string
	client *http.Client
}

// NewMMDS returns a client for the service at addr (scheme://host[:port]).
// Keep-alives are off: a pooled connection would not survive a snapshot
// restore, and a half-dead one must never stall the poll.
func NewMMDS(addr string) *MMDS {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	tr.Proxy = nil
	return &MMDS{
		addr:   strings.TrimRight(addr, "/"),
		client: &http.Client{Timeout: 10 * time.Second, Transport: tr},
	}
}

// CloseIdleConnections drops pooled connections (called before a snapshot;
// with keep-alives off there should be none).
func (m *MMDS) CloseIdleConnections() { m.client.CloseIdleConnections() }

// maxMetadata bounds what we read from the service.
const maxMetadata = 1 << 20

// Fetch gets a session token and then the metadata object.
func (m *MMDS) Fetch(ctx context.Context) (Metadata, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, m.addr+"/latest/api/token", nil)
	if err != nil {
		return Metadata{}, fmt.Errorf("mmds: token request: %w", err)
	}
	req.Header.Set("X-metadata-token-ttl-seconds", "60")
	tok, err := m.do(req)
	if err != nil {
		return Metadata{}, fmt.Errorf("mmds: get token: %w", err)
	}
	if len(bytes.TrimSpace(tok)) == 0 {
		return Metadata{}, errors.New("mmds: empty session token")
	}
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, m.addr+"/", nil)
	if err != nil {
		return Metadata{}, fmt.Errorf("mmds: metadata request: %w", err)
	}
	req.Header.Set("X-metadata-token", string(bytes.TrimSpace(tok)))
	req.Header.Set("Accept", "application/json")
	body, err := m.do(req)
	if err != nil {
		return Metadata{}, fmt.Errorf("mmds: get metadata: %w", err)
	}
	return ParseMetadata(body)
}

func (m *MMDS) do(req *http.Request) ([]byte, error) {
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadata))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return b, nil
}

// RunDirs are where the sandbox marker files live; either may be "" to
// skip that family.
type RunDirs struct {
	E2B   string // /run/e2b
	Wrenn string // /run/wrenn
}

// DefaultRunDirs are the paths both originals use.
var DefaultRunDirs = RunDirs{E2B: "/run/e2b", Wrenn: "/run/wrenn"}

type runFamily struct{ dir, prefix string }

func (d RunDirs) families() []runFamily {
	var f []runFamily
	if d.E2B != "" {
		f = append(f, runFamily{d.E2B, "E2B"})
	}
	if d.Wrenn != "" {
		f = append(f, runFamily{d.Wrenn, "WRENN"})
	}
	return f
}

// WriteSandboxFlag records at start-up whether envd runs in a sandbox:
// internal env E2B_SANDBOX/WRENN_SANDBOX and the files .E2B_SANDBOX /
// .WRENN_SANDBOX (mode 0444, no newline). File errors are returned but the
// env is always set.
func WriteSandboxFlag(st *state.State, dirs RunDirs, inSandbox bool) error {
	v := "false"
	if inSandbox {
		v = "true"
	}
	var errs []error
	for _, f := range dirs.families() {
		st.SetInternalEnv(f.prefix+"_SANDBOX", v)
		errs = append(errs, writeRunFile(f.dir, "."+f.prefix+"_SANDBOX", v, 0o444))
	}
	return errors.Join(errs...)
}

// ApplyMetadata exports the sandbox and template ids as internal env vars
// and writes the id files (mode 0666, raw value, no newline).
func ApplyMetadata(st *state.State, dirs RunDirs, md Metadata) error {
	var errs []error
	for _, f := range dirs.families() {
		st.SetInternalEnv(f.prefix+"_SANDBOX_ID", md.InstanceID)
		st.SetInternalEnv(f.prefix+"_TEMPLATE_ID", md.EnvID)
		errs = append(errs,
			writeRunFile(f.dir, "."+f.prefix+"_SANDBOX_ID", md.InstanceID, 0o666),
			writeRunFile(f.dir, "."+f.prefix+"_TEMPLATE_ID", md.EnvID, 0o666))
	}
	return errors.Join(errs...)
}

// writeRunFile replaces dir/name atomically so readers never see a torn id,
// with exactly mode (not filtered by the umask).
func writeRunFile(dir, name, content string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(content)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}

// Poller fetches MMDS every interval until the first success, then applies
// the metadata and stops. At most one poll loop runs; asking for another
// while one runs only extends its deadline.
type Poller struct {
	mmds     *MMDS
	interval time.Duration
	apply    func(Metadata)
	log      *slog.Logger

	mu       sync.Mutex
	running  bool
	gen      uint64    // bumped by every Poll, so a fetch that began before a request does not satisfy it
	deadline time.Time // zero: poll until success
	closed   bool
	stop     chan struct{}
	wg       sync.WaitGroup
}

// NewPoller returns a poller calling apply with each successful fetch.
func NewPoller(m *MMDS, interval time.Duration, apply func(Metadata), log *slog.Logger) *Poller {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Poller{mmds: m, interval: interval, apply: apply, log: log, stop: make(chan struct{})}
}

// Poll starts polling in the background unless a poll is already running.
// limit > 0 bounds the poll to that long from now; 0 means until success.
// A running poll keeps the later of the two deadlines.
func (p *Poller) Poll(limit time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	var dl time.Time
	if limit > 0 {
		dl = time.Now().Add(limit)
	}
	p.gen++
	if p.running {
		if p.deadline.IsZero() || dl.IsZero() {
			p.deadline = time.Time{}
		} else if dl.After(p.deadline) {
			p.deadline = dl
		}
		return
	}
	p.running, p.deadline = true, dl
	p.wg.Add(1)
	go p.loop()
}

// Running reports whether a poll loop is active.
func (p *Poller) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

// Close stops any poll and waits for it.
func (p *Poller) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.stop)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Poller) loop() {
	defer p.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		p.mu.Lock()
		gen := p.gen
		p.mu.Unlock()
		md, err := p.mmds.Fetch(ctx)
		if err == nil {
			p.apply(md)
			p.mu.Lock()
			again := p.gen != gen
			p.running = again
			p.mu.Unlock()
			if !again {
				return
			}
			continue
		}
		p.mu.Lock()
		expired := !p.deadline.IsZero() && time.Now().After(p.deadline)
		if expired {
			p.running = false
		}
		p.mu.Unlock()
		if expired {
			p.log.Debug("mmds poll gave up", "error", err)
			return
		}
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.running = false
			p.mu.Unlock()
			return
		case <-t.C:
		}
	}
}
