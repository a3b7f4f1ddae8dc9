package host

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd-go/envd/internal/host/mmdstest"
	"github.com/envd-go/envd/internal/state"
)

func TestParseMetadata(t *testing.T) {
	cases := []struct {
		in      string
		want    Metadata
		wantErr bool
	}{
		{in: `{"instanceID":"i1","envID":"e1","address":"http://x","accessTokenHash":"ab"}`, want: Metadata{"i1", "e1", "http://x", "ab"}},
		{in: `{"instanceID":"i1","envID":"e1"}`, want: Metadata{InstanceID: "i1", EnvID: "e1"}},
		{in: `{}`},
		{in: ` {"instanceid":"i2","extra":{"x":1}} `, want: Metadata{InstanceID: "i2"}},
		{in: `{"instanceID":""}`},
		{in: ``, wantErr: true},
		{in: `null`, wantErr: true},
		{in: `"str"`, wantErr: true},
		{in: `{"instanceID":5}`, wantErr: true},
		{in: `not json`, wantErr: true},
		{in: `{"instanceID":"i"`, wantErr: true},
	}
	for _, c := range cases {
		got, err := ParseMetadata([]byte(c.in))
		if (err != nil) != c.wantErr || (!c.wantErr && got != c.want) {
			t.Errorf("ParseMetadata(%q) = %+v, %v", c.in, got, err)
		}
	}
}

func FuzzParseMetadata(f *testing.F) {
	for _, s := range []string{`{"instanceID":"i","envID":"e"}`, `{}`, `[]`, `{"accessTokenHash":null}`, "\x00", `{"a":"\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		md, err := ParseMetadata(b)
		if err != nil && md != (Metadata{}) {
			t.Fatalf("error with non-empty result %+v", md)
		}
	})
}

func TestMMDSFetch(t *testing.T) {
	srv := mmdstest.New()
	t.Cleanup(srv.Close)
	srv.SetFields("sbx-1", "tpl-1", "http://logs", "hash")
	m := NewMMDS(srv.URL + "/")
	t.Cleanup(m.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	md, err := m.Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if md != (Metadata{"sbx-1", "tpl-1", "http://logs", "hash"}) {
		t.Fatalf("got %+v", md)
	}
	if srv.TokenRequests.Load() != 1 || srv.DataRequests.Load() != 1 {
		t.Fatalf("requests: %d token, %d data", srv.TokenRequests.Load(), srv.DataRequests.Load())
	}
	srv.SetFailing(true)
	if _, err := m.Fetch(ctx); err == nil {
		t.Fatal("failing MMDS gave no error")
	}
}

func TestMMDSStandInProtocol(t *testing.T) {
	srv := mmdstest.New()
	t.Cleanup(srv.Close)
	c := srv.Client()
	// token without TTL header → 400; data without token → 401
	req, _ := newReq("PUT", srv.URL+"/latest/api/token", nil)
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 400 {
		t.Fatalf("PUT without ttl: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	req, _ = newReq("GET", srv.URL+"/", map[string]string{"Accept": "application/json"})
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("GET without token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestApplyMetadataAndSandboxFlag(t *testing.T) {
	dir := t.TempDir()
	dirs := RunDirs{E2B: filepath.Join(dir, "e2b"), Wrenn: filepath.Join(dir, "wrenn")}
	st := state.New()
	if err := WriteSandboxFlag(st, dirs, true); err != nil {
		t.Fatal(err)
	}
	if err := ApplyMetadata(st, dirs, Metadata{InstanceID: "sbx-9", EnvID: "tpl-9"}); err != nil {
		t.Fatal(err)
	}
	// A second apply (new id after restore) replaces the files.
	if err := ApplyMetadata(st, dirs, Metadata{InstanceID: "sbx-10", EnvID: "tpl-9"}); err != nil {
		t.Fatal(err)
	}
	files := map[string]struct {
		content string
		mode    os.FileMode
	}{
		"e2b/.E2B_SANDBOX":         {"true", 0o444},
		"e2b/.E2B_SANDBOX_ID":      {"sbx-10", 0o666},
		"e2b/.E2B_TEMPLATE_ID":     {"tpl-9", 0o666},
		"wrenn/.WRENN_SANDBOX":     {"true", 0o444},
		"wrenn/.WRENN_SANDBOX_ID":  {"sbx-10", 0o666},
		"wrenn/.WRENN_TEMPLATE_ID": {"tpl-9", 0o666},
	}
	for name, want := range files {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(p)
		if string(b) != want.content || fi.Mode().Perm() != want.mode {
			t.Errorf("%s = %q %v, want %q %v", name, b, fi.Mode().Perm(), want.content, want.mode)
		}
	}
	ents, _ := os.ReadDir(dirs.E2B)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
	env := st.Env()
	for k, v := range map[string]string{"E2B_SANDBOX": "true", "WRENN_SANDBOX": "true", "E2B_SANDBOX_ID": "sbx-10",
		"WRENN_SANDBOX_ID": "sbx-10", "E2B_TEMPLATE_ID": "tpl-9", "WRENN_TEMPLATE_ID": "tpl-9"} {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	// A second start-up must be able to overwrite the 0444 flag file.
	if err := WriteSandboxFlag(st, dirs, false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dirs.E2B, ".E2B_SANDBOX")); string(b) != "false" {
		t.Fatalf("flag = %q", b)
	}
}

func TestPollerRetriesUntilSuccess(t *testing.T) {
	srv := mmdstest.New()
	t.Cleanup(srv.Close)
	srv.SetFailing(true)
	got := make(chan Metadata, 10)
	p := NewPoller(NewMMDS(srv.URL), 5*time.Millisecond, func(md Metadata) { got <- md }, nil)
	t.Cleanup(p.Close)
	p.Poll(0)
	deadline := time.After(30 * time.Second)
	for srv.TokenRequests.Load() < 3 {
		select {
		case <-deadline:
			t.Fatal("poller did not retry")
		case <-time.After(5 * time.Millisecond):
		}
	}
	srv.SetFields("sbx", "tpl", "", "")
	srv.SetFailing(false)
	select {
	case md := <-got:
		if md.InstanceID != "sbx" {
			t.Fatalf("got %+v", md)
		}
	case <-deadline:
		t.Fatal("no metadata applied")
	}
	waitFor(t, func() bool { return !p.Running() })
	n := srv.DataRequests.Load()
	time.Sleep(50 * time.Millisecond)
	if srv.DataRequests.Load() != n {
		t.Fatal("poller kept polling after success")
	}
}

func TestPollerBoundedGivesUp(t *testing.T) {
	srv := mmdstest.New()
	t.Cleanup(srv.Close)
	srv.SetFailing(true)
	p := NewPoller(NewMMDS(srv.URL), 5*time.Millisecond, func(Metadata) { t.Error("applied") }, nil)
	t.Cleanup(p.Close)
	p.Poll(100 * time.Millisecond)
	p.Poll(50 * time.Millisecond) // joins the running poll, keeps the later deadline
	waitFor(t, func() bool { return !p.Running() })
	if srv.TokenRequests.Load() < 2 {
		t.Fatalf("only %d attempts", srv.TokenRequests.Load())
	}
}

// A Poll requested while a fetch is in flight must be followed by a fetch
// that starts after the request (so a restored sandbox reads its new id).
func TestPollerRefetchesForLateRequest(t *testing.T) {
	srv := mmdstest.New()
	t.Cleanup(srv.Close)
	srv.SetFields("old", "tpl", "", "")
	var mu sync.Mutex
	var seen []string
	release := make(chan struct{})
	first := true
	p := NewPoller(NewMMDS(srv.URL), 5*time.Millisecond, func(md Metadata) {
		mu.Lock()
		seen = append(seen, md.InstanceID)
		wait := first
		first = false
		mu.Unlock()
		if wait {
			<-release
		}
	}, nil)
	t.Cleanup(p.Close)
	p.Poll(0)
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 1 })
	srv.SetFields("new", "tpl", "", "")
	p.Poll(time.Minute)
	close(release)
	waitFor(t, func() bool { return !p.Running() })
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[1] != "new" {
		t.Fatalf("applied %v, want [old new]", seen)
	}
}

func TestPollerCloseStopsUnboundedPoll(t *testing.T) {
	srv := mmdstest.New()
	t.Cleanup(srv.Close)
	srv.SetFailing(true)
	p := NewPoller(NewMMDS(srv.URL), 5*time.Millisecond, func(Metadata) {}, nil)
	p.Poll(0)
	waitFor(t, func() bool { return srv.TokenRequests.Load() > 0 })
	p.Close()
	if p.Running() {
		t.Fatal("still running after Close")
	}
	p.Poll(0) // after Close: no-op
	if p.Running() {
		t.Fatal("Poll after Close started a loop")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestMMDSStandInOnListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := mmdstest.NewOnListener(ln)
	t.Cleanup(srv.Close)
	srv.SetFields("i", "e", "", "")
	md, err := NewMMDS(srv.URL).Fetch(context.Background())
	if err != nil || md.InstanceID != "i" {
		t.Fatalf("%+v %v", md, err)
	}
}
