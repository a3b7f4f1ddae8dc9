package envdclient_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/envd-go/envd/envdclient"
)

func TestHealthMetricsEnvs(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)

	h, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Version == "" {
		t.Error("Health: empty version")
	}
	m, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUCount < 1 || m.MemTotal == 0 || m.DiskTotal == 0 || m.Timestamp == 0 {
		t.Errorf("Metrics: implausible %+v", m)
	}
	if m.MemTotalMiB != m.MemTotal/(1<<20) {
		t.Errorf("Metrics: mem_total_mib %d != mem_total/MiB %d", m.MemTotalMiB, m.MemTotal/(1<<20))
	}
	env, err := c.Envs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if env["E2B_SANDBOX"] != "false" {
		t.Errorf("Envs: E2B_SANDBOX = %q, want false (-isnotfc)", env["E2B_SANDBOX"])
	}
}

func TestWaitUntilReadyAndBoot(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	h, err := c.WaitUntilReady(testCtx(t))
	if err != nil || h.Version == "" {
		t.Fatalf("WaitUntilReady = %+v, %v", h, err)
	}

	// Nothing listens on a port we just closed: readiness never comes and
	// the error says it was the deadline.
	dead, err := envdclient.New("127.0.0.1:" + portOf(t, freeAddr(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := dead.WaitUntilReady(ctx); !errors.Is(err, envdclient.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitUntilReady on a dead port = %v, want deadline", err)
	}

	// Boot gives /init its own budget after readiness.
	v, err := c.Boot(context.Background(), envdclient.BootOptions{
		ReadyTimeout: 30 * time.Second, InitTimeout: 30 * time.Second,
		Init: &envdclient.InitRequest{EnvVars: map[string]string{"BOOTED": "yes"}},
	})
	if err != nil || v == "" {
		t.Fatalf("Boot = %q, %v", v, err)
	}
	env, err := c.Envs(testCtx(t))
	if err != nil || env["BOOTED"] != "yes" {
		t.Fatalf("Envs after Boot = %v, %v", env, err)
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func portOf(t *testing.T, addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInitTokenUserWorkdir(t *testing.T) {
	e := startEnvd(t)
	anon := e.client(t)
	ctx := testCtx(t)

	res, err := anon.Init(ctx, envdclient.InitRequest{
		AccessToken:    "envdtc-secret",
		EnvVars:        map[string]string{"FOO": "bar"},
		DefaultWorkdir: "/tmp",
	})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if res.Version == "" {
		t.Error("Init: no X-Envd-Version")
	}

	// Without the token every guarded call is unauthenticated, REST and RPC.
	if _, err := anon.Metrics(ctx); !errors.Is(err, envdclient.ErrUnauthenticated) {
		t.Errorf("Metrics without token = %v, want ErrUnauthenticated", err)
	}
	if _, err := anon.Stat(ctx, "/tmp"); !errors.Is(err, envdclient.ErrUnauthenticated) {
		t.Errorf("Stat without token = %v, want ErrUnauthenticated", err)
	}
	var ce *envdclient.Error
	if _, err := anon.Envs(ctx); !errors.As(err, &ce) || ce.Status != 401 {
		t.Errorf("Envs without token = %v, want *Error with status 401", err)
	}
	// /health stays open.
	if _, err := anon.Health(ctx); err != nil {
		t.Errorf("Health without token: %v", err)
	}

	c := e.client(t, envdclient.WithAccessToken("envdtc-secret"))
	env, err := c.Envs(ctx)
	if err != nil || env["FOO"] != "bar" {
		t.Fatalf("Envs with token = %v, %v", env, err)
	}
	if _, err := c.Stat(ctx, "/tmp"); err != nil {
		t.Fatalf("Stat with token: %v", err)
	}
	res2, err := c.Exec(ctx, envdclient.Command{Cmd: "/bin/sh", Args: []string{"-c", "pwd; echo $FOO"}})
	if err != nil || string(res2.Stdout) != "/tmp\nbar\n" {
		t.Fatalf("Exec after Init = %q, %v; want default workdir /tmp and FOO=bar", res2.Stdout, err)
	}

	// A later /init with the same token switches the default user.
	user := addUser(t)
	if _, err := c.Init(ctx, envdclient.InitRequest{AccessToken: "envdtc-secret", DefaultUser: user}); err != nil {
		t.Fatalf("Init default user: %v", err)
	}
	res3, err := c.Exec(ctx, envdclient.Command{Cmd: "id", Args: []string{"-un"}})
	if err != nil || string(res3.Stdout) != user+"\n" {
		t.Fatalf("id -un after Init = %q, %v; want %s", res3.Stdout, err, user)
	}
	// A stale timestamp is accepted (204) but not applied. Only 1 s old:
	// were it applied, the clock step rule (>5 s ahead) leaves the clock
	// of this shared machine alone.
	if _, err := c.Init(ctx, envdclient.InitRequest{AccessToken: "envdtc-secret", DefaultUser: "root", Timestamp: time.Now().Add(-time.Second)}); err != nil {
		t.Fatalf("stale Init: %v", err)
	}
	if res4, err := c.Exec(ctx, envdclient.Command{Cmd: "id", Args: []string{"-un"}}); err != nil || string(res4.Stdout) != user+"\n" {
		t.Fatalf("id -un after a stale Init = %q, %v; want %s still", res4.Stdout, err, user)
	}

	// A different token cannot re-init (not FC mode: only the same token).
	if _, err := anon.Init(ctx, envdclient.InitRequest{AccessToken: "other"}); !errors.Is(err, envdclient.ErrUnauthenticated) {
		t.Errorf("Init with another token = %v, want ErrUnauthenticated", err)
	}
}

func TestPrepareSnapshot(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)
	if err := c.PrepareSnapshot(ctx); err != nil {
		t.Fatalf("PrepareSnapshot: %v", err)
	}
	// The next /health is the restore signal; envd keeps serving.
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("Health after prepare: %v", err)
	}
	if _, err := c.Stat(ctx, "/"); err != nil {
		t.Fatalf("Stat after prepare: %v", err)
	}
}

// A peer that accepts and never answers: the unary client's overall
// timeout fires, and a stream's idle watchdog fires long before the
// 30 s response-header timeout.
func TestStalledPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { <-done; conn.Close() }()
		}
	}()
	c, err := envdclient.New(ln.Addr().String(),
		envdclient.WithUnaryTimeout(time.Second),
		envdclient.WithKeepaliveInterval(time.Second), envdclient.WithIdleMultiplier(2),
		envdclient.WithTransferIdleTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()

	if _, err := c.Health(context.Background()); !errors.Is(err, envdclient.ErrDeadlineExceeded) {
		t.Errorf("Health on a stalled peer = %v, want ErrDeadlineExceeded", err)
	}
	if _, err := c.Stat(context.Background(), "/"); !errors.Is(err, envdclient.ErrDeadlineExceeded) {
		t.Errorf("Stat on a stalled peer = %v, want ErrDeadlineExceeded", err)
	}
	if _, err := c.Start(context.Background(), envdclient.Command{Cmd: "true"}); !errors.Is(err, envdclient.ErrStreamIdle) {
		t.Errorf("Start on a stalled peer = %v, want ErrStreamIdle", err)
	}
	if _, err := c.Watch(context.Background(), "/", envdclient.WatchOptions{}); !errors.Is(err, envdclient.ErrStreamIdle) {
		t.Errorf("Watch on a stalled peer = %v, want ErrStreamIdle", err)
	}
	var sink countWriter
	if _, err := c.Download(context.Background(), "/etc/hostname", &sink, envdclient.DownloadOptions{}); !errors.Is(err, envdclient.ErrStreamIdle) {
		t.Errorf("Download on a stalled peer = %v, want ErrStreamIdle", err)
	}
}

type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }
