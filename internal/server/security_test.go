package server_test

// Security table over every route and RPC: which requests the token check
// lets through, before and after /init sets a token, with the real
// services wired as cmd/envd/run.go wires them.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/cgroups"
	"github.com/envd-go/envd/internal/files"
	fsservice "github.com/envd-go/envd/internal/filesystem"
	"github.com/envd-go/envd/internal/host"
	"github.com/envd-go/envd/internal/host/mmdstest"
	"github.com/envd-go/envd/internal/lifecycle"
	"github.com/envd-go/envd/internal/pid1"
	procservice "github.com/envd-go/envd/internal/process"
	"github.com/envd-go/envd/internal/server"
	"github.com/envd-go/envd/internal/state"
)

const middleware401 = `{"code":401,"message":"unauthorized access, please provide a valid access token or method signing if supported"}` + "\n"

type fullEnv struct {
	st      *state.State
	srv     *httptest.Server
	init    *lifecycle.Init
	mmds    *mmdstest.Server
	routes  []string // "METHOD /path" of every REST route
	reached map[string]*atomic.Int32
	dir     string
	work    string // default workdir
}

// touchesHost are routes whose handlers act on this machine (FIFREEZE on
// /, heap collapse): the table only needs to know the request got past the
// token check, so they are replaced by a marker. Their own tests cover them.
var touchesHost = map[string]bool{"POST /fsfreeze": true, "POST /fsthaw": true, "POST /collapse": true}

func newFullEnv(t *testing.T, fc bool) *fullEnv {
	t.Helper()
	e := &fullEnv{st: state.New(), reached: map[string]*atomic.Int32{}, dir: t.TempDir()}
	// Defence in depth: should a request ever reach a handler with empty
	// paths, they resolve here and not to root's home. World-writable so
	// processes of test users can start in it.
	work, err := os.MkdirTemp("", "envdta-work")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	os.Chmod(work, 0o777)
	e.work = work
	e.st.SetDefaultWorkdir(work)
	reaper := pid1.NewReaper(false)
	t.Cleanup(reaper.Close)
	sampler := host.NewCPUSampler(50 * time.Millisecond)
	sampler.Start()
	t.Cleanup(sampler.Stop)
	e.mmds = mmdstest.New()
	t.Cleanup(e.mmds.Close)
	mmds := host.NewMMDS(e.mmds.URL)

	conns := lifecycle.NewConnTracker()
	snap := lifecycle.NewSnapshot(lifecycle.SnapshotOptions{Tracker: conns, Sampler: sampler, CloseIdleClients: mmds.CloseIdleConnections})
	t.Cleanup(snap.Close)
	bundle := filepath.Join(e.dir, "ca.crt")
	os.WriteFile(bundle, nil, 0o644)
	opts := lifecycle.InitOptions{
		State: e.st, Version: "0.6.11", Reaper: reaper,
		Clock:       host.Clock{Now: time.Now, Set: func(time.Time) error { return nil }},
		HostsFile:   filepath.Join(e.dir, "hosts"),
		CABundle:    bundle,
		CACopy:      filepath.Join(e.dir, "ca-copy.crt"),
		BeforeApply: snap.OnInit,
	}
	if fc {
		opts.MMDS = mmds
	}
	e.init = lifecycle.NewInit(opts)
	t.Cleanup(e.init.Wait)

	procs := procservice.New(procservice.Options{State: e.st, Reaper: reaper, Cgroups: cgroups.Noop{}})
	fsys := fsservice.New(fsservice.Options{State: e.st})
	var routes []server.Route
	routes = append(routes, snap.Routes()...)
	routes = append(routes, lifecycle.NewFreeze(cgroups.Noop{}).Routes()...)
	routes = append(routes, files.New(files.Options{State: e.st}).Routes()...)
	routes = append(routes, e.init.Route())
	for i, rt := range routes {
		n := &atomic.Int32{}
		e.reached[rt.Pattern] = n
		next := rt.Handler
		if touchesHost[rt.Pattern] {
			next = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
		}
		routes[i].Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); next.ServeHTTP(w, r) })
		e.routes = append(e.routes, rt.Pattern)
	}
	e.routes = append(e.routes, "GET /health", "GET /metrics", "GET /envs")
	h := server.Handler(server.Deps{
		Version: "0.6.11", State: e.st, Sampler: sampler,
		Process: procs, Filesystem: fsys, Routes: routes, OnHealth: snap.OnHealth,
	})
	e.srv = httptest.NewUnstartedServer(h)
	e.srv.Config = server.New(h, conns.ConnState)
	e.srv.Start()
	snap.SetServer(e.srv.Config)
	t.Cleanup(e.srv.Close)
	return e
}

// rpcs lists every procedure from the generated descriptors, so a new RPC
// is covered without editing this test.
func rpcs() []protoreflect.MethodDescriptor {
	var out []protoreflect.MethodDescriptor
	for _, fd := range []protoreflect.FileDescriptor{process.File_process_process_proto, filesystem.File_filesystem_filesystem_proto} {
		for i := 0; i < fd.Services().Len(); i++ {
			s := fd.Services().Get(i)
			for j := 0; j < s.Methods().Len(); j++ {
				out = append(out, s.Methods().Get(j))
			}
		}
	}
	return out
}

func procedure(m protoreflect.MethodDescriptor) string {
	return "/" + string(m.Parent().FullName()) + "/" + string(m.Name())
}

// rpcRequest builds a Connect request whose body is not JSON, so a request
// that passes the token check is refused with invalid_argument while
// decoding, before any handler acts: nothing is removed or run. (Unknown
// fields would not do: Connect discards them, and an empty Remove request
// means "remove the default directory".)
func (e *fullEnv) rpcRequest(m protoreflect.MethodDescriptor, token string) *http.Request {
	const bad = `not json`
	var req *http.Request
	if m.IsStreamingClient() || m.IsStreamingServer() {
		var buf bytes.Buffer
		buf.WriteByte(0)
		binary.Write(&buf, binary.BigEndian, uint32(len(bad)))
		buf.WriteString(bad)
		req, _ = http.NewRequest("POST", e.srv.URL+procedure(m), &buf)
		req.Header.Set("Content-Type", "application/connect+json")
	} else {
		req, _ = http.NewRequest("POST", e.srv.URL+procedure(m), strings.NewReader(bad))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Connect-Protocol-Version", "1")
	if token != "" {
		req.Header.Set(auth.TokenHeader, token)
	}
	return req
}

// restRequest makes a harmless request for a route: /files on a temp file,
// /init and compose with bodies that do nothing.
func (e *fullEnv) restRequest(pattern, token string) *http.Request {
	method, path, _ := strings.Cut(pattern, " ")
	var body io.Reader
	target := e.srv.URL + path
	switch pattern {
	case "GET /files":
		target += "?path=" + url.QueryEscape(filepath.Join(e.dir, "ca.crt"))
	case "POST /files":
		target += "?path=" + url.QueryEscape(filepath.Join(e.dir, "upload.txt"))
		body = strings.NewReader("data")
	case "POST /init":
		// Before a token is set: an empty /init (changes nothing). After:
		// the header's token in the body, which /init itself judges.
		b := "{}"
		if token != "" && e.st.HasToken() {
			b = fmt.Sprintf(`{"accessToken":%q}`, token)
		}
		body = strings.NewReader(b)
	case "POST /files/compose":
		body = strings.NewReader(`not json`)
	}
	req, _ := http.NewRequest(method, target, body)
	if pattern == "POST /files" {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if token != "" {
		req.Header.Set(auth.TokenHeader, token)
	}
	return req
}

func do(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSecurityTable(t *testing.T) {
	e := newFullEnv(t, false)
	c := e.srv.Client()
	const tok = "9f86d081884c7d659a2feaa0c55ad015"
	methods := rpcs()
	if len(methods) < 15 {
		t.Fatalf("only %d RPCs found in the descriptors", len(methods))
	}
	if len(e.routes) < 13 {
		t.Fatalf("only %d REST routes: %v", len(e.routes), e.routes)
	}

	check := func(phase, tokenCase, send string, tokenSet bool) {
		for _, pattern := range e.routes {
			method, path, _ := strings.Cut(pattern, " ")
			status, body := do(t, c, e.restRequest(pattern, send))
			blocked := status == 401 && body == middleware401
			wantBlocked := tokenSet && send != tok && !auth.IsExempt(method, path)
			if blocked != wantBlocked {
				t.Errorf("%s, %s: %s → %d %q; blocked=%v want %v", phase, tokenCase, pattern, status, body, blocked, wantBlocked)
			}
			if tokenSet && send != tok && (pattern == "GET /files" || pattern == "POST /files") {
				want := "missing signature query parameter"
				if send != "" {
					want = "access token present in header but does not match"
				}
				if status != 401 || !strings.Contains(body, want) {
					t.Errorf("%s, %s: %s → %d %q, want 401 %q", phase, tokenCase, pattern, status, body, want)
				}
			}
		}
		for _, m := range methods {
			status, body := do(t, c, e.rpcRequest(m, send))
			blocked := status == 401 && body == middleware401
			wantBlocked := tokenSet && send != tok
			if blocked != wantBlocked {
				t.Errorf("%s, %s: %s → %d %q; blocked=%v want %v", phase, tokenCase, procedure(m), status, body, blocked, wantBlocked)
			}
			if !blocked && !strings.Contains(body, "invalid_argument") {
				t.Errorf("%s, %s: %s → %d %q, want invalid_argument from decoding", phase, tokenCase, procedure(m), status, body)
			}
		}
	}
	for _, phase := range []string{"before /init", "after /init"} {
		tokenSet := phase == "after /init"
		if tokenSet {
			req, _ := http.NewRequest("POST", e.srv.URL+"/init", strings.NewReader(`{"accessToken":"`+tok+`"}`))
			if s, _ := do(t, c, req); s != 204 || !e.st.HasToken() {
				t.Fatalf("/init with token: %d", s)
			}
		}
		check(phase, "no token", "", tokenSet)
		check(phase, "wrong token", "wrong-"+tok, tokenSet)
		check(phase, "right token", tok, tokenSet)
	}
	for pattern, n := range e.reached {
		if n.Load() == 0 {
			t.Errorf("route %s never reached its handler", pattern)
		}
	}

	// A Connect client sees the refusal as unauthenticated, for unary and
	// streaming calls alike.
	pc := processconnect.NewProcessClient(c, e.srv.URL)
	_, err := pc.List(context.Background(), connect.NewRequest(&process.ListRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("List without token: %v", err)
	}
	stream, err := pc.Start(context.Background(), connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/true"}}))
	if err == nil {
		for stream.Receive() {
			t.Error("Start without token delivered an event")
		}
		err = stream.Err()
		stream.Close()
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("Start without token: %v", err)
	}

	// Path tricks do not reach an exempt key with a protected handler.
	for _, p := range []string{"/health/../envs", "//envs", "/envs/", "/files/../envs", "/init/../metrics"} {
		req, _ := http.NewRequest("GET", e.srv.URL+p, nil)
		req.URL.Opaque = p // send the path as written
		status, body := do(t, &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, req)
		if status == 200 || strings.Contains(body, "E2B") {
			t.Errorf("GET %s without token: %d %q", p, status, body)
		}
	}
}

func TestSecurityInitRotationAndReset(t *testing.T) {
	e := newFullEnv(t, true)
	c := e.srv.Client()
	post := func(body string, hdr string) int {
		req, _ := http.NewRequest("POST", e.srv.URL+"/init", strings.NewReader(body))
		if hdr != "" {
			req.Header.Set(auth.TokenHeader, hdr)
		}
		s, _ := do(t, c, req)
		return s
	}
	envs := func(tok string) int {
		req, _ := http.NewRequest("GET", e.srv.URL+"/envs", nil)
		req.Header.Set(auth.TokenHeader, tok)
		s, _ := do(t, c, req)
		return s
	}
	e.mmds.SetFields("sbx", "tpl", "", sha512hex("first"))
	if post(`{"accessToken":"first"}`, "") != 204 || envs("first") != 200 {
		t.Fatal("first token not accepted")
	}
	// Resume: the host rotates the token and publishes the new hash.
	e.mmds.SetFields("sbx", "tpl", "", sha512hex("second"))
	if post(`{"accessToken":"evil"}`, "") != 401 {
		t.Fatal("unhashed token accepted")
	}
	if post(`{"accessToken":"second"}`, "") != 204 || envs("second") != 200 || envs("first") != 401 {
		t.Fatal("rotation via MMDS hash failed")
	}
	// Reset: without a token, allowed only when MMDS holds the hash of "".
	if post(`{}`, "second") != 401 || envs("second") != 200 {
		t.Fatal("unauthorised reset")
	}
	e.mmds.SetFields("sbx", "tpl", "", sha512hex(""))
	if post(`{}`, "") != 204 || e.st.HasToken() {
		t.Fatal("authorised reset failed")
	}
	if envs("") != 200 {
		t.Fatal("routes not open after reset")
	}
	// Replay of an older timestamp: 204 and nothing applied.
	now := time.Now().UTC()
	if post(fmt.Sprintf(`{"timestamp":%q,"envVars":{"V":"new"}}`, now.Format(time.RFC3339Nano)), "") != 204 {
		t.Fatal("init with timestamp")
	}
	if post(fmt.Sprintf(`{"timestamp":%q,"envVars":{"V":"old"}}`, now.Add(-time.Second).Format(time.RFC3339Nano)), "") != 204 || e.st.Env()["V"] != "new" {
		t.Fatal("replayed /init was applied")
	}
}

func sha512hex(s string) string {
	return fmt.Sprintf("%x", sha512Sum([]byte(s)))
}

// TestSecurityDefaultUser: after /init defaultUser, a process started
// without Basic auth and a file uploaded without username run as that
// user.
func TestSecurityDefaultUser(t *testing.T) {
	const name = "envdta-def"
	exec.Command("userdel", "-r", name).Run()
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", "-r", name).Run() })

	e := newFullEnv(t, false)
	c := e.srv.Client()
	req, _ := http.NewRequest("POST", e.srv.URL+"/init", strings.NewReader(`{"defaultUser":"`+name+`","accessToken":"tk"}`))
	if s, _ := do(t, c, req); s != 204 {
		t.Fatalf("/init: %d", s)
	}

	pc := processconnect.NewProcessClient(c, e.srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sreq := connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "id -un; pwd"}}})
	sreq.Header().Set(auth.TokenHeader, "tk")
	stream, err := pc.Start(ctx, sreq)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for stream.Receive() {
		if d := stream.Msg().GetEvent().GetData(); d != nil {
			out.Write(d.GetStdout())
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	if got := out.String(); got != name+"\n"+e.work+"\n" {
		t.Fatalf("process output %q, want user %s in the default workdir", got, name)
	}

	// Basic auth overrides the default; an unknown user is unauthenticated.
	breq := connect.NewRequest(&process.ListRequest{})
	breq.Header().Set(auth.TokenHeader, "tk")
	breq.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("envdta-nobody:")))
	_, err = pc.List(ctx, breq)
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnauthenticated || ce.Message() != "invalid username: 'envdta-nobody'" {
		t.Fatalf("unknown Basic user: %v", err)
	}

	up, _ := http.NewRequest("POST", e.srv.URL+"/files?path=envdta-upload.txt", strings.NewReader("hello"))
	up.Header.Set("Content-Type", "application/octet-stream")
	up.Header.Set(auth.TokenHeader, "tk")
	if s, b := do(t, c, up); s != 200 {
		t.Fatalf("upload: %d %s", s, b)
	}
	fi, err := os.Stat("/home/" + name + "/envdta-upload.txt")
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	u, _ := exec.Command("id", "-u", name).Output()
	if fmt.Sprint(st.Uid) != strings.TrimSpace(string(u)) {
		t.Fatalf("uploaded file owned by uid %d, want %s", st.Uid, u)
	}
}
