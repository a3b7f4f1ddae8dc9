package envdclient_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd-go/envd/envdclient"
)

type seen struct {
	path   string
	proto  string
	header http.Header
}

// TestWire checks what the client puts on the wire, through a recording
// reverse proxy in front of a real envd (which itself also speaks h2c).
func TestWire(t *testing.T) {
	e := startEnvd(t)
	target, err := url.Parse(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reqs []seen
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, seen{r.URL.Path, r.Proto, r.Header.Clone()})
		mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	// The proxy accepts HTTP/2 too, so an h2 attempt would show.
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)

	c, err := envdclient.New(srv.URL, envdclient.WithUser("root"), envdclient.WithAccessToken("envdtc-not-set"),
		envdclient.WithKeepaliveInterval(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	ctx := testCtx(t)
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, "/"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, t.TempDir(), envdclient.WatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()

	mu.Lock()
	defer mu.Unlock()
	byPath := map[string]seen{}
	for _, s := range reqs {
		if s.proto != "HTTP/1.1" {
			t.Errorf("%s sent over %s, want HTTP/1.1", s.path, s.proto)
		}
		if s.header.Get("X-Access-Token") != "envdtc-not-set" {
			t.Errorf("%s without X-Access-Token", s.path)
		}
		byPath[s.path] = s
	}
	stat, ok := byPath["/filesystem.Filesystem/Stat"]
	if !ok {
		t.Fatalf("no Stat request among %v", reqs)
	}
	if got := stat.header.Get("Content-Type"); got != "application/proto" {
		t.Errorf("Stat Content-Type = %q, want binary proto", got)
	}
	if got := stat.header.Get("Authorization"); got != "Basic cm9vdDo=" {
		t.Errorf("Stat Authorization = %q, want Basic root:", got)
	}
	watch := byPath["/filesystem.Filesystem/WatchDir"]
	if got := watch.header.Get("Keepalive-Ping-Interval"); got != "2" {
		t.Errorf("WatchDir Keepalive-Ping-Interval = %q, want 2", got)
	}
	if got := watch.header.Get("Content-Type"); !strings.HasPrefix(got, "application/connect+proto") {
		t.Errorf("WatchDir Content-Type = %q", got)
	}
}
