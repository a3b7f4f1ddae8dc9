package server

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/host"
	"github.com/envd-go/envd/internal/state"
)

func newTestServer(t *testing.T, d Deps) *httptest.Server {
	t.Helper()
	if d.State == nil {
		d.State = state.New()
	}
	if d.Sampler == nil {
		d.Sampler = host.NewCPUSampler(10 * time.Millisecond)
		d.Sampler.Start()
		t.Cleanup(d.Sampler.Stop)
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if d.Version == "" {
		d.Version = "1.2.3"
	}
	srv := httptest.NewUnstartedServer(Handler(d))
	srv.Config = New(srv.Config.Handler, nil)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestRoutes(t *testing.T) {
	st := state.New()
	st.SetInternalEnv("E2B_SANDBOX", "false")
	st.ReplaceUserEnv(map[string]string{"FOO": "bar", "E2B_SANDBOX": "hijack"})
	srv := newTestServer(t, Deps{State: st, Process: processconnect.UnimplementedProcessHandler{}})

	tests := []struct {
		method, path string
		status       int
		body         string // substring
		header       map[string]string
	}{
		{"GET", "/health", 200, `{"version":"1.2.3"}`, map[string]string{"Cache-Control": "no-store", "Content-Type": "application/json"}},
		{"POST", "/health", 405, "", nil},
		{"GET", "/nope", 404, "404 page not found", nil},
		{"GET", "/envs", 200, `"E2B_SANDBOX":"false"`, map[string]string{"Cache-Control": "no-store"}},
		{"GET", "/envs", 200, `"FOO":"bar"`, nil},
		{"GET", "/metrics", 200, `"mem_total_mib":`, map[string]string{"Content-Type": "application/json"}},
		{"GET", "/process.Process/List", 405, "", nil},
		{"POST", "/process.Process/List", 415, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", res.StatusCode, tc.status, b)
			}
			if !strings.Contains(string(b), tc.body) {
				t.Errorf("body %q does not contain %q", b, tc.body)
			}
			for k, v := range tc.header {
				if got := res.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestHealthNoContent(t *testing.T) {
	called := 0
	srv := newTestServer(t, Deps{HealthNoContent: true, OnHealth: func(*http.Request) { called++ }})
	res, err := http.Get(srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 204 || called != 1 {
		t.Fatalf("status %d, OnHealth called %d times", res.StatusCode, called)
	}
}

func TestMetricsFields(t *testing.T) {
	srv := newTestServer(t, Deps{})
	res, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(res.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache", "mem_total_mib", "mem_used_mib", "disk_used", "disk_total"} {
		if _, ok := m[k]; !ok {
			t.Errorf("missing %s in %v", k, m)
		}
	}
	if m["mem_total"].(float64) <= 0 || m["disk_total"].(float64) <= 0 || m["cpu_count"].(float64) < 1 {
		t.Errorf("implausible metrics %v", m)
	}
}

func TestCORS(t *testing.T) {
	st := state.New()
	st.SetToken([]byte("secret"))
	srv := newTestServer(t, Deps{State: st})

	// A preflight is answered before the token check.
	req, _ := http.NewRequest("OPTIONS", srv.URL+"/process.Process/Start", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type,x-access-token")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 204 {
		t.Fatalf("preflight status %d", res.StatusCode)
	}
	for k, v := range map[string]string{
		"Access-Control-Allow-Origin":  "*",
		"Access-Control-Allow-Headers": "content-type,x-access-token",
		"Access-Control-Max-Age":       "7200",
	} {
		if got := res.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(res.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("methods %q", res.Header.Get("Access-Control-Allow-Methods"))
	}

	// Actual request: origin allowed, headers exposed, token still enforced.
	req, _ = http.NewRequest("GET", srv.URL+"/envs", nil)
	req.Header.Set("Origin", "https://app.example")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 401 || res.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("status %d, ACAO %q", res.StatusCode, res.Header.Get("Access-Control-Allow-Origin"))
	}
	if !strings.HasPrefix(res.Header.Get("Access-Control-Expose-Headers"), "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Location, Cache-Control, X-Content-Type-Options") {
		t.Errorf("expose %q", res.Header.Get("Access-Control-Expose-Headers"))
	}
	want := `{"code":401,"message":"unauthorized access, please provide a valid access token or method signing if supported"}` + "\n"
	if string(body) != want {
		t.Errorf("body %q", body)
	}
}

func TestH2CPriorKnowledge(t *testing.T) {
	srv := newTestServer(t, Deps{})
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr}).Get(srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.ProtoMajor != 2 || res.StatusCode != 200 {
		t.Fatalf("proto %s status %d", res.Proto, res.StatusCode)
	}
}

// A client that stops reading a stream must make the handler's write fail
// within the stall bound instead of blocking it forever.
func TestWriteStallBound(t *testing.T) {
	done := make(chan error, 1)
	stream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				done <- err
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	h := withWriteDeadline(stream, 200*time.Millisecond)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	// Stop reading; the handler must give up on its own.
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("write returned no error")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("handler still blocked in Write after 60s")
	}
}
