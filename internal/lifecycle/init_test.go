package lifecycle

import (
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envd-go/envd/internal/host"
	"github.com/envd-go/envd/internal/host/mmdstest"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/state"
)

type initEnv struct {
	t      testing.TB
	st     *state.State
	init   *Init
	srv    *httptest.Server
	mmds   *mmdstest.Server
	dir    string
	clock  *fakeClock
	hooks  hookCounts
	reaper *pid1.Reaper
}

type hookCounts struct{ before, authorized, done, after atomic.Int32 }

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
	set []time.Time
}

func (c *fakeClock) clock() host.Clock {
	return host.Clock{
		Now: func() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now },
		Set: func(t time.Time) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.set = append(c.set, t)
			c.now = t
			return nil
		},
	}
}

func (c *fakeClock) sets() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.set...)
}

type envOpt func(*InitOptions, *initEnv)

// notFC removes MMDS from the options (-isnotfc).
func notFC(o *InitOptions, _ *initEnv) { o.MMDS = nil }

func newInitEnv(t testing.TB, opts ...envOpt) *initEnv {
	t.Helper()
	e := &initEnv{t: t, st: state.New(), dir: t.TempDir(), mmds: mmdstest.New()}
	t.Cleanup(e.mmds.Close)
	e.clock = &fakeClock{now: time.Now()}
	e.reaper = pid1.NewReaper(false)
	t.Cleanup(e.reaper.Close)
	bundle := filepath.Join(e.dir, "ca-certificates.crt")
	if err := os.WriteFile(bundle, []byte("SYSTEM CA\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "hosts"), []byte("127.0.0.1\tlocalhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := host.NewMMDS(e.mmds.URL)
	o := InitOptions{
		State:     e.st,
		Version:   "0.6.11",
		Reaper:    e.reaper,
		MMDS:      m,
		Clock:     e.clock.clock(),
		HostsFile: filepath.Join(e.dir, "hosts"),
		CABundle:  bundle,
		CACopy:    filepath.Join(e.dir, "e2b-ca.crt"),
		BeforeApply: func(context.Context) {
			e.hooks.before.Add(1)
		},
		Authorized: func(_ context.Context, h http.Header) func() {
			e.hooks.authorized.Add(1)
			h.Set("X-Envd-Freeze-Audit", `{"visited":0}`)
			return func() { e.hooks.done.Add(1) }
		},
		AfterInit: func() { e.hooks.after.Add(1) },
	}
	for _, f := range opts {
		f(&o, e)
	}
	e.init = NewInit(o)
	t.Cleanup(e.init.Wait)
	e.srv = httptest.NewServer(e.init)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *initEnv) post(body string) (int, http.Header, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/init", strings.NewReader(body))
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("POST /init: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func sha512hex(s string) string {
	sum := sha512.Sum512([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestInitResponses(t *testing.T) {
	cases := []struct {
		name, body string
		status     int
	}{
		{"empty body", "", 204},
		{"empty object", "{}", 204},
		{"unknown keys ignored", `{"foo":1,"ENVVARS":{"A":"b"}}`, 204},
		{"invalid json", "{", 400},
		{"whitespace only", " ", 400},
		{"trailing garbage", "{} x", 400},
		{"escaped token", `{"accessToken":"a\\u0062c"}`, 400},
		{"empty token", `{"accessToken":""}`, 400},
		{"numeric token", `{"accessToken":5}`, 400},
		{"null token", `{"accessToken":null}`, 204},
		{"bad timestamp", `{"timestamp":"yesterday"}`, 400},
		{"bad envVars type", `{"envVars":["A"]}`, 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newInitEnv(t, notFC)
			status, h, body := e.post(c.body)
			if status != c.status || body != "" {
				t.Fatalf("status %d body %q, want %d and no body", status, body, c.status)
			}
			if h.Get("X-Envd-Version") != "0.6.11" {
				t.Fatal("X-Envd-Version missing")
			}
			if c.status == 204 && h.Get("Cache-Control") != "no-store" {
				t.Fatal("Cache-Control missing")
			}
		})
	}
}

func TestInitTokenMatrix(t *testing.T) {
	const tok = "0123abcd"
	cases := []struct {
		name      string
		fc        bool
		current   string // "" = no token set
		hash      string // MMDS accessTokenHash
		mmdsDown  bool
		body      string
		status    int
		msg       string
		wantToken string // "" = none afterwards
	}{
		{name: "first setup, not FC", body: `{"accessToken":"` + tok + `"}`, status: 204, wantToken: tok},
		{name: "first setup, FC, no hash", fc: true, body: `{"accessToken":"` + tok + `"}`, status: 204, wantToken: tok},
		{name: "first setup, FC, MMDS down", fc: true, mmdsDown: true, body: `{"accessToken":"` + tok + `"}`, status: 204, wantToken: tok},
		{name: "first setup, FC, hash matches", fc: true, hash: sha512hex(tok), body: `{"accessToken":"` + tok + `"}`, status: 204, wantToken: tok},
		{name: "first setup, FC, hash mismatch", fc: true, hash: sha512hex("other"), body: `{"accessToken":"` + tok + `"}`, status: 401, msg: "access token validation failed"},
		{name: "same token again, not FC", current: tok, body: `{"accessToken":"` + tok + `"}`, status: 204, wantToken: tok},
		{name: "wrong token, not FC", current: tok, body: `{"accessToken":"nope"}`, status: 401, msg: "access token validation failed", wantToken: tok},
		{name: "reset without token, not FC", current: tok, body: `{}`, status: 401, msg: "access token reset not authorized", wantToken: tok},
		{name: "rotation via MMDS hash", fc: true, current: tok, hash: sha512hex("new-token"), body: `{"accessToken":"new-token"}`, status: 204, wantToken: "new-token"},
		{name: "rotation with wrong hash", fc: true, current: tok, hash: sha512hex("new-token"), body: `{"accessToken":"evil"}`, status: 401, msg: "access token validation failed", wantToken: tok},
		{name: "rotation, hash uppercase", fc: true, current: tok, hash: strings.ToUpper(sha512hex("n2")), body: `{"accessToken":"n2"}`, status: 204, wantToken: "n2"},
		{name: "authorised reset via hash of empty", fc: true, current: tok, hash: sha512hex(""), body: `{}`, status: 204},
		{name: "reset with a non-empty hash", fc: true, current: tok, hash: sha512hex(tok), body: `{}`, status: 401, msg: "access token reset not authorized", wantToken: tok},
		{name: "reset, FC, MMDS down", fc: true, current: tok, mmdsDown: true, body: `{}`, status: 401, msg: "access token reset not authorized", wantToken: tok},
		{name: "same token, FC, even if hash differs", fc: true, current: tok, hash: sha512hex("x"), body: `{"accessToken":"` + tok + `"}`, status: 204, wantToken: tok},
		{name: "no token anywhere", fc: true, body: ``, status: 204},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var opts []envOpt
			if !c.fc {
				opts = append(opts, notFC)
			}
			e := newInitEnv(t, opts...)
			if c.current != "" {
				e.st.SetToken([]byte(c.current))
			}
			e.mmds.SetFields("sbx", "tpl", "", c.hash)
			e.mmds.SetFailing(c.mmdsDown)
			e.st.ReplaceUserEnv(map[string]string{"KEEP": "1"})
			reqBody := strings.Replace(c.body, "{", `{"envVars":{"NEW":"1"},`, 1)
			if c.body == "{}" {
				reqBody = `{"envVars":{"NEW":"1"}}`
			}
			status, h, body := e.post(reqBody)
			if status != c.status || body != c.msg {
				t.Fatalf("got %d %q, want %d %q", status, body, c.status, c.msg)
			}
			if h.Get("X-Envd-Version") == "" {
				t.Fatal("no X-Envd-Version")
			}
			if c.wantToken == "" && e.st.HasToken() || c.wantToken != "" && !e.st.TokenEquals([]byte(c.wantToken)) {
				t.Fatalf("token after /init wrong (want %q)", c.wantToken)
			}
			env := e.st.Env()
			if c.status == 401 {
				// No side effects at all on failure, hooks included.
				if env["KEEP"] != "1" || env["NEW"] != "" {
					t.Fatalf("env changed by a refused /init: %v", env)
				}
				if e.hooks.before.Load()+e.hooks.authorized.Load()+e.hooks.done.Load()+e.hooks.after.Load() != 0 {
					t.Fatal("hooks ran for a refused /init")
				}
				if h.Get("Content-Type") != "text/plain; charset=utf-8" {
					t.Fatalf("401 content type %q", h.Get("Content-Type"))
				}
				return
			}
			if c.body != "" && (env["KEEP"] != "" || env["NEW"] != "1") {
				t.Fatalf("envVars not replaced: %v", env)
			}
			if e.hooks.before.Load() != 1 || e.hooks.authorized.Load() != 1 || e.hooks.done.Load() != 1 || e.hooks.after.Load() != 1 {
				t.Fatalf("hooks: %+v", &e.hooks)
			}
			if h.Get("X-Envd-Freeze-Audit") == "" {
				t.Fatal("Authorized hook header not sent")
			}
			if !e.init.Initialized() {
				t.Fatal("not marked initialized")
			}
		})
	}
}

func TestInitFastPathSkipsMMDS(t *testing.T) {
	e := newInitEnv(t)
	e.st.SetToken([]byte("tok"))
	if s, _, _ := e.post(`{"accessToken":"tok"}`); s != 204 {
		t.Fatal(s)
	}
	if n := e.mmds.TokenRequests.Load(); n != 0 {
		t.Fatalf("fast path made %d MMDS requests", n)
	}
}

func TestInitTimestampGuardAndClock(t *testing.T) {
	e := newInitEnv(t, notFC)
	base := e.clock.clock().Now()
	ts := func(d time.Duration) string { return base.Add(d).UTC().Format(time.RFC3339Nano) }

	// 10 min ahead of the guest clock: applied and the clock stepped.
	if s, _, _ := e.post(`{"timestamp":"` + ts(10*time.Minute) + `","envVars":{"V":"1"},"defaultUser":"nobody"}`); s != 204 {
		t.Fatal(s)
	}
	// The step adds the time /init spent since the request arrived.
	if sets := e.clock.sets(); len(sets) != 1 || sets[0].Before(base.Add(10*time.Minute)) || sets[0].After(base.Add(10*time.Minute+5*time.Second)) {
		t.Fatalf("clock sets %v", sets)
	}
	// Replayed older request: 204 but nothing applied, hooks still run.
	if s, _, _ := e.post(`{"timestamp":"` + ts(5*time.Minute) + `","envVars":{"V":"old"},"defaultUser":"root","accessToken":"x"}`); s != 204 {
		t.Fatal(s)
	}
	if e.st.Env()["V"] != "1" || e.st.DefaultUser() != "nobody" || e.st.HasToken() {
		t.Fatal("stale /init was applied")
	}
	if len(e.clock.sets()) != 1 {
		t.Fatal("stale /init set the clock")
	}
	if e.hooks.after.Load() != 2 || e.hooks.before.Load() != 2 {
		t.Fatal("hooks must run for stale requests too")
	}
	// Equal timestamp is accepted; within 50 ms: no clock step.
	if s, _, _ := e.post(`{"timestamp":"` + ts(10*time.Minute) + `","envVars":{"V":"2"}}`); s != 204 {
		t.Fatal(s)
	}
	if e.st.Env()["V"] != "2" || len(e.clock.sets()) != 1 {
		t.Fatalf("equal timestamp: env %v, sets %d", e.st.Env(), len(e.clock.sets()))
	}
	// No timestamp: always applied.
	if s, _, _ := e.post(`{"envVars":{"V":"3"}}`); s != 204 || e.st.Env()["V"] != "3" {
		t.Fatal("timestamp-less /init not applied")
	}
	// Guest clock 3 s ahead: tolerated; 6 s ahead: stepped back.
	e.post(`{"timestamp":"` + ts(10*time.Minute-3*time.Second) + `"}`)
	if s, _, _ := e.post(`{"timestamp":"` + ts(10*time.Minute-3*time.Second) + `"}`); s != 204 {
		t.Fatal(s)
	}
	if len(e.clock.sets()) != 1 {
		t.Fatal("3 s ahead stepped the clock")
	}
}

func TestInitEnvAndDefaults(t *testing.T) {
	e := newInitEnv(t, notFC)
	e.st.SetInternalEnv("E2B_SANDBOX", "true")
	e.post(`{"envVars":{"A":"1","E2B_SANDBOX":"false"},"defaultUser":"nobody","defaultWorkdir":"/tmp"}`)
	e.post(`{"defaultUser":"","defaultWorkdir":""}`) // empty strings are ignored
	env := e.st.Env()
	if env["A"] != "1" || env["E2B_SANDBOX"] != "true" {
		t.Fatalf("env %v", env)
	}
	if e.st.DefaultUser() != "nobody" || e.st.DefaultWorkdir() != "/tmp" {
		t.Fatalf("defaults %q %q", e.st.DefaultUser(), e.st.DefaultWorkdir())
	}
	e.post(`{"envVars":{}}`)
	if _, ok := e.st.Env()["A"]; ok {
		t.Fatal("envVars {} did not clear the user env")
	}
}

func TestInitHyperloop(t *testing.T) {
	e := newInitEnv(t, notFC)
	hosts := filepath.Join(e.dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1\tlocalhost\n10.0.0.9\tevents.e2b.local other.local\n# comment events.e2b.local\n"), 0o644)
	if s, _, _ := e.post(`{"hyperloopIP":"192.0.2.7"}`); s != 204 {
		t.Fatal(s)
	}
	e.init.Wait()
	b, _ := os.ReadFile(hosts)
	want := "127.0.0.1\tlocalhost\n10.0.0.9\tother.local\n# comment events.e2b.local\n192.0.2.7\tevents.e2b.local events.wrenn.local\n"
	if string(b) != want {
		t.Fatalf("hosts:\n%s\nwant:\n%s", b, want)
	}
	if e.st.Env()["E2B_EVENTS_ADDRESS"] != "http://192.0.2.7" || e.st.Env()["WRENN_EVENTS_ADDRESS"] != "http://192.0.2.7" {
		t.Fatalf("env %v", e.st.Env())
	}
	fi1, _ := os.Stat(hosts)
	e.post(`{"hyperloopIP":"192.0.2.7"}`)
	e.init.Wait()
	if fi2, _ := os.Stat(hosts); !os.SameFile(fi1, fi2) {
		t.Fatal("unchanged alias rewrote the file")
	}
	e.post(`{"hyperloopIP":"2001:db8::1"}`)
	e.init.Wait()
	b, _ = os.ReadFile(hosts)
	if !strings.HasSuffix(string(b), "\n2001:db8::1\tevents.e2b.local events.wrenn.local\n") || strings.Contains(string(b), "192.0.2.7") {
		t.Fatalf("hosts after v6:\n%s", b)
	}
	if e.st.Env()["E2B_EVENTS_ADDRESS"] != "http://[2001:db8::1]" {
		t.Fatal(e.st.Env()["E2B_EVENTS_ADDRESS"])
	}
	// Not an IP: ignored, /init still succeeds.
	if s, _, _ := e.post(`{"hyperloopIP":"not-an-ip"}`); s != 204 {
		t.Fatal(s)
	}
}

const (
	pemA = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
	pemB = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n\n"
)

func TestInitCABundle(t *testing.T) {
	e := newInitEnv(t, notFC)
	bundle := filepath.Join(e.dir, "ca-certificates.crt")
	body := func(p string) string { b, _ := json.Marshal(map[string]string{"caBundle": p}); return string(b) }
	if s, _, m := e.post(body(pemA)); s != 204 {
		t.Fatal(s, m)
	}
	e.init.Wait()
	read := func(p string) string { b, _ := os.ReadFile(p); return string(b) }
	if got := read(bundle); got != "SYSTEM CA\n"+pemA+"\n" {
		t.Fatalf("bundle %q", got)
	}
	if got := read(filepath.Join(e.dir, "e2b-ca.crt")); got != pemA+"\n" {
		t.Fatalf("copy %q", got)
	}
	e.post(body(pemA + "\n")) // same after normalisation: no second copy
	e.init.Wait()
	if got := read(bundle); strings.Count(got, "AAAA") != 1 {
		t.Fatalf("identical CA appended twice: %q", got)
	}
	e.post(body(pemB)) // replaces A
	e.init.Wait()
	if got := read(bundle); got != "SYSTEM CA\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n" {
		t.Fatalf("bundle after replace %q", got)
	}
	os.Remove(bundle)
	if s, _, m := e.post(body(pemA)); s != 400 || !strings.Contains(m, "CA bundle") {
		t.Fatalf("missing bundle: %d %q", s, m)
	}
}

func TestInitCABusy(t *testing.T) {
	e := newInitEnv(t, notFC)
	e.init.ca.lock <- struct{}{} // a long background clean-up holds the lock
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "/init", strings.NewReader(`{"caBundle":"x"}`))
	rec := httptest.NewRecorder()
	e.init.ServeHTTP(rec, req)
	<-e.init.ca.lock
	if rec.Code != 503 || !strings.HasPrefix(rec.Body.String(), "CA install already in progress: ") {
		t.Fatalf("got %d %q", rec.Code, rec.Body.String())
	}
}

// writeScript makes an executable stand-in for mount/umount/findmnt that
// logs its arguments and behaves per the env of the test.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInitVolumeMounts(t *testing.T) {
	var logPath, mountedFlag string
	e := newInitEnv(t, notFC, func(o *InitOptions, e *initEnv) {
		logPath = filepath.Join(e.dir, "calls.log")
		mountedFlag = filepath.Join(e.dir, "mounted")
		o.Commands = InitCommands{
			Mount:   writeScript(t, e.dir, "mount", `echo "mount $*" >> `+logPath+`; case "$*" in *fail*) echo "mount.nfs: access denied" >&2; exit 32;; esac; touch `+mountedFlag),
			Umount:  writeScript(t, e.dir, "umount", `echo "umount $*" >> `+logPath+`; rm -f `+mountedFlag),
			Findmnt: writeScript(t, e.dir, "findmnt", `[ -e `+mountedFlag+` ] && echo "10.0.0.1:/vol" && exit 0; exit 1`),
		}
	})
	mnt := filepath.Join(e.dir, "mnt", "vol")
	calls := func() []string {
		b, _ := os.ReadFile(logPath)
		os.Remove(logPath)
		return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
	}
	body := func(target, lid string) string {
		return fmt.Sprintf(`{"lifecycleID":%q,"volumeMounts":[{"nfs_target":%q,"path":%q}]}`, lid, target, mnt)
	}
	if s, _, m := e.post(body("10.0.0.1:/vol", "L1")); s != 204 {
		t.Fatal(s, m)
	}
	want := "mount_-v_-t_nfs_-o_" + nfsOptions + "_10.0.0.1:/vol_" + mnt
	if c := calls(); len(c) != 1 || c[0] != want {
		t.Fatalf("calls %v, want [%s]", c, want)
	}
	if fi, err := os.Stat(mnt); err != nil || !fi.IsDir() {
		t.Fatal("mount point not created")
	}
	// Same lifecycle: nothing to do.
	e.post(body("10.0.0.1:/vol", "L1"))
	if c := calls(); len(c) != 0 {
		t.Fatalf("same lifecycle remounted: %v", c)
	}
	// New lifecycle: the old mount is taken down first.
	e.post(body("10.0.0.1:/vol", "L2"))
	if c := calls(); len(c) != 2 || c[0] != "umount_--force_"+mnt || !strings.HasPrefix(c[1], "mount_") {
		t.Fatalf("calls %v", c)
	}
	// Mount failure → 400 with the error.
	s, _, m := e.post(body("10.0.0.1:/fail", "L3"))
	if s != 400 || !strings.Contains(m, "access denied") {
		t.Fatalf("failed mount: %d %q", s, m)
	}
	if s, _, _ := e.post(`{"volumeMounts":[{"nfs_target":"","path":"/x"}]}`); s != 400 {
		t.Fatalf("empty target: %d", s)
	}
}

// The real mount(8): this kernel has no NFS client, so the mount fails and
// /init reports 400 — the path a VM without NFS support takes.
func TestInitVolumeMountRealMountFails(t *testing.T) {
	e := newInitEnv(t, notFC)
	mnt := filepath.Join(e.dir, "nfs")
	s, _, m := e.post(fmt.Sprintf(`{"volumeMounts":[{"nfs_target":"127.0.0.1:/nothing","path":%q}]}`, mnt))
	if s != 400 || !strings.Contains(m, "mount 127.0.0.1:/nothing") {
		t.Fatalf("got %d %q", s, m)
	}
}

func TestInitConcurrent(t *testing.T) {
	e := newInitEnv(t)
	e.mmds.SetFields("sbx", "tpl", "", sha512hex("tok"))
	const n = 64
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for k := range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"accessToken":"tok","timestamp":%q,"envVars":{"K":"%d"}}`, time.Now().UTC().Format(time.RFC3339Nano), k)
			statuses[k], _, _ = e.post(body)
		})
	}
	wg.Wait()
	for k, s := range statuses {
		if s != 204 {
			t.Fatalf("request %d: %d", k, s)
		}
	}
	if !e.st.TokenEquals([]byte("tok")) {
		t.Fatal("token not set")
	}
}

// A request whose context ends while another /init holds the lock gets
// 503 instead of queueing.
func TestInitLockHonoursContext(t *testing.T) {
	e := newInitEnv(t, notFC)
	e.init.lock <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "/init", bytes.NewReader(nil))
	rec := httptest.NewRecorder()
	e.init.ServeHTTP(rec, req)
	<-e.init.lock
	if rec.Code != 503 || rec.Header().Get("X-Envd-Version") == "" {
		t.Fatalf("got %d", rec.Code)
	}
	if e.hooks.after.Load() != 0 {
		t.Fatal("AfterInit ran for a 503")
	}
}

func FuzzParseInitRequest(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `{"accessToken":"abc"}`, `{"accessToken":"a\"b"}`, `{"accessToken":""}`,
		`{"envVars":{"A":"1"},"timestamp":"2026-01-02T03:04:05.123456789Z","volumeMounts":[{"nfs_target":"1.2.3.4:/v","path":"/mnt"}]}`,
		`{"defaultUser":"user","defaultWorkdir":"/home/user","hyperloopIP":"10.0.0.1","caBundle":"x","lifecycleID":"l"}`,
		`{"accessToken":null}`, `[1]`, `{"accessToken":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseInitRequest(bytes.Clone(b))
		if err != nil {
			return
		}
		if req.hasToken {
			if len(req.token) == 0 || bytes.IndexByte(req.token, '\\') >= 0 {
				t.Fatalf("accepted token %q", req.token)
			}
			// The accepted token is exactly what encoding/json decodes.
			var v struct {
				AccessToken string `json:"accessToken"`
			}
			if json.Unmarshal(b, &v) == nil && v.AccessToken != string(req.token) {
				t.Fatalf("token %q, json says %q", req.token, v.AccessToken)
			}
		} else if req.token != nil {
			t.Fatal("token bytes without hasToken")
		}
	})
}

func TestInitHashCompareIsConstantTime(t *testing.T) {
	if reflect.ValueOf(hashCompare).Pointer() != reflect.ValueOf(subtle.ConstantTimeCompare).Pointer() {
		t.Fatal("token hash comparison is not crypto/subtle.ConstantTimeCompare")
	}
}

// The first timestamp since boot corrects a guest clock that is ahead (the
// RTC gives whole seconds); later ones tolerate up to 5 s ahead, so a late
// timestamp never moves a synced clock backwards.
func TestInitFirstSyncStepsAheadClock(t *testing.T) {
	e := newInitEnv(t, notFC)
	base := e.clock.clock().Now()
	first := base.Add(-800 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	if s, _, _ := e.post(`{"timestamp":"` + first + `"}`); s != 204 {
		t.Fatal(s)
	}
	sets := e.clock.sets()
	if len(sets) != 1 || sets[0].After(base.Add(-700*time.Millisecond)) {
		t.Fatalf("first sync with the guest 800 ms ahead: sets %v", sets)
	}
	// Guest drifts 3 s ahead of the last timestamp: tolerated now.
	e.clock.mu.Lock()
	e.clock.now = e.clock.now.Add(3 * time.Second)
	e.clock.mu.Unlock()
	if s, _, _ := e.post(`{"timestamp":"` + first + `"}`); s != 204 {
		t.Fatal(s)
	}
	if n := len(e.clock.sets()); n != 1 {
		t.Fatalf("a synced clock 3 s ahead was stepped back (%d sets)", n)
	}
}
