package lifecycle

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envd-go/envd/internal/host"
)

// snapServer serves a Snapshot's routes plus /health (with the recovery
// hook) and /stream (writes a line every 20 ms until the client goes).
type snapServer struct {
	url     string
	snap    *Snapshot
	tracker *ConnTracker
	ports   atomic.Int32 // +1 per StartPorts, -1 per StopPorts
	idles   atomic.Int32 // CloseIdleClients calls
}

func newSnapServer(t *testing.T, o SnapshotOptions) *snapServer {
	t.Helper()
	s := &snapServer{tracker: NewConnTracker()}
	o.Tracker = s.tracker
	o.StopPorts = func() { s.ports.Add(-1) }
	o.StartPorts = func() { s.ports.Add(1) }
	o.CloseIdleClients = func() { s.idles.Add(1) }
	s.snap = NewSnapshot(o)
	t.Cleanup(s.snap.Close)
	mux := http.NewServeMux()
	for _, rt := range s.snap.Routes() {
		mux.Handle(rt.Pattern, rt.Handler)
	}
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		s.snap.OnHealth(r)
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		for {
			if _, err := io.WriteString(w, "tick\n"); err != nil {
				return
			}
			rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	srv := &http.Server{Handler: mux, ConnState: s.tracker.ConnState}
	s.snap.SetServer(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.url = "http://" + ln.Addr().String()
	return s
}

func get(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func post(t *testing.T, url string) int {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Post(url, "", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (s *snapServer) debug(t *testing.T) DebugInfo {
	t.Helper()
	resp, err := http.Get(s.url + "/debug/conns")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d DebugInfo
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPrepareRestore: prepare closes idle connections and pauses the
// subsystems; the first /health afterwards closes the streams that existed
// before, keeps its own connection and resumes everything.
func TestPrepareRestore(t *testing.T) {
	sampler := host.NewCPUSampler(50 * time.Millisecond)
	sampler.Start()
	t.Cleanup(sampler.Stop)
	s := newSnapServer(t, SnapshotOptions{Sampler: sampler})

	idle := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(idle.CloseIdleConnections)
	if st := get(t, idle, s.url+"/health"); st != 200 {
		t.Fatalf("health %d", st)
	}
	streamResp, err := http.Get(s.url + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { streamResp.Body.Close() })
	lines := bufio.NewReader(streamResp.Body)
	if l, err := lines.ReadString('\n'); err != nil || l != "tick\n" {
		t.Fatalf("stream: %q %v", l, err)
	}

	if st := post(t, s.url+"/snapshot/prepare"); st != 204 {
		t.Fatalf("prepare: %d", st)
	}
	if !s.snap.Pending() || s.ports.Load() != -1 || s.idles.Load() != 1 {
		t.Fatalf("after prepare: pending %v ports %d idle-closes %d", s.snap.Pending(), s.ports.Load(), s.idles.Load())
	}
	// Keep-alives off: the idle conn is gone (the prepare's own soon), the
	// stream is pre-snapshot.
	waitUntil(t, "idle and prepare conns closed", func() bool { return s.tracker.Stats().PreSnapshotOpen == 1 })
	d := s.debug(t)
	if d.PreSnapshotOpen != 1 || d.Prepares != 1 {
		t.Fatalf("after prepare: %+v", d)
	}

	// The recovery trigger arrives on a fresh keep-alive connection.
	fresh := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(fresh.CloseIdleConnections)
	if st := get(t, fresh, s.url+"/health"); st != 200 {
		t.Fatalf("health %d", st)
	}
	if s.snap.Pending() {
		t.Fatal("still pending after /health")
	}
	// The pre-snapshot stream is closed under the client.
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, lines)
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("pre-snapshot stream still open after restore")
	}
	waitUntil(t, "ports restarted", func() bool { return s.ports.Load() == 0 })
	d = s.debug(t)
	if d.Restores != 1 || d.LastClosed != 1 || d.ClosedPreSnapshot != 1 || d.PreSnapshotOpen != 0 || d.LastTrigger != "request" {
		t.Fatalf("after restore: %+v", d)
	}
	// Keep-alives are back: the fresh connection is reused.
	var reused atomic.Bool
	req, _ := http.NewRequest("GET", s.url+"/health", nil)
	req = req.WithContext(withConnTrace(req.Context(), &reused))
	resp, err := fresh.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !reused.Load() {
		t.Error("keep-alives not re-enabled: connection not reused")
	}
	// A second /health is not a restore.
	get(t, fresh, s.url+"/health")
	if d := s.debug(t); d.Restores != 1 {
		t.Errorf("restores %d after a second /health", d.Restores)
	}
}

func TestPrepareSelfRecovers(t *testing.T) {
	s := newSnapServer(t, SnapshotOptions{SelfRecover: 200 * time.Millisecond})
	if st := post(t, s.url+"/snapshot/prepare"); st != 204 {
		t.Fatalf("prepare: %d", st)
	}
	waitUntil(t, "self recovery", func() bool { return !s.snap.Pending() })
	d := s.debug(t)
	if d.SelfRecoveries != 1 || d.Restores != 1 || d.LastTrigger != "self-recovery" {
		t.Fatalf("%+v", d)
	}
	waitUntil(t, "ports restarted", func() bool { return s.ports.Load() == 0 })
}

// TestRecoverWithoutPrepare: /health alone is no restore.
func TestRecoverWithoutPrepare(t *testing.T) {
	s := newSnapServer(t, SnapshotOptions{})
	c := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(c.CloseIdleConnections)
	get(t, c, s.url+"/health")
	if s.snap.Recover(nil) {
		t.Error("recovery ran without a prepare")
	}
	if d := s.debug(t); d.Restores != 0 || d.Tracked < 1 {
		t.Errorf("%+v", d)
	}
}

// TestClockJumpClosesIdle: a jump without a prepare closes idle
// connections only; after a prepare it is a full restore.
func TestClockJumpClosesIdle(t *testing.T) {
	s := newSnapServer(t, SnapshotOptions{})
	idle := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(idle.CloseIdleConnections)
	get(t, idle, s.url+"/health")
	stream, err := http.Get(s.url + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stream.Body.Close() })
	br := bufio.NewReader(stream.Body)
	br.ReadString('\n')
	waitUntil(t, "idle state", func() bool {
		for _, c := range s.tracker.Stats().Conns {
			if c.State == "idle" {
				return true
			}
		}
		return false
	})
	s.snap.onJump(3 * time.Second)
	d := s.debug(t)
	if d.ClockJumps != 1 || d.JumpClosed != 1 || d.Restores != 0 {
		t.Fatalf("%+v", d)
	}
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("active stream cut by a jump without prepare: %v", err)
	}
	post(t, s.url+"/snapshot/prepare")
	s.snap.onJump(3 * time.Second)
	if d := s.debug(t); d.Restores != 1 || d.LastTrigger != "clock-jump" {
		t.Fatalf("%+v", d)
	}
}

func TestJumped(t *testing.T) {
	s := time.Second
	base := clockSample{real: 1000 * s, mono: 10 * s, boot: 10 * s}
	tests := []struct {
		name string
		cur  clockSample
		want bool
	}{
		{"steady", clockSample{1001 * s, 11 * s, 11 * s}, false},
		{"small NTP slew", clockSample{1001*s + 200*time.Millisecond, 11 * s, 11 * s}, false},
		{"wall stepped forward", clockSample{1031 * s, 11 * s, 11 * s}, true},
		{"wall stepped back", clockSample{995 * s, 11 * s, 11 * s}, true},
		{"boottime ran on", clockSample{1001 * s, 11 * s, 40 * s}, true},
		{"tick late by loaded machine", clockSample{1003 * s, 13 * s, 13 * s}, false},
		{"tick very late", clockSample{1020 * s, 30 * s, 30 * s}, true},
	}
	for _, tc := range tests {
		if got := jumped(base, tc.cur, s, s) != 0; got != tc.want {
			t.Errorf("%s: jumped %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestDetectorStops: the detector goroutine ends on Close.
func TestDetectorStops(t *testing.T) {
	var n atomic.Int32
	d := startJumpDetector(time.Millisecond, time.Hour, func(time.Duration) { n.Add(1) })
	time.Sleep(10 * time.Millisecond)
	d.stop()
	d.stop() // idempotent
	if n.Load() != 0 {
		t.Errorf("%d spurious jumps", n.Load())
	}
}

func TestTrackerKeepAlive(t *testing.T) {
	tr := NewConnTracker()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tr.ConnState(c, http.StateNew)
	raw, _ := c.(*net.TCPConn).SyscallConn()
	var on int
	raw.Control(func(fd uintptr) { on, _ = getsockoptInt(int(fd)) })
	if on != 1 {
		t.Errorf("SO_KEEPALIVE %d on an accepted conn", on)
	}
	if st := tr.Stats(); st.Tracked != 1 || !strings.HasPrefix(st.Conns[0].Remote, "127.0.0.1:") {
		t.Errorf("%+v", st)
	}
	tr.ConnState(c, http.StateClosed)
	if st := tr.Stats(); st.Tracked != 0 {
		t.Errorf("%+v", st)
	}
}

// TestOnInit: /init is the safety net when no /health came first.
func TestOnInit(t *testing.T) {
	s := newSnapServer(t, SnapshotOptions{})
	s.snap.OnInit(t.Context()) // no prepare: nothing to do
	post(t, s.url+"/snapshot/prepare")
	s.snap.OnInit(t.Context())
	if d := s.debug(t); d.Pending || d.Restores != 1 || d.LastTrigger != "init" {
		t.Fatalf("%+v", d)
	}
}
