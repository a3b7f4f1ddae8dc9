package envdclient_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/envd-go/envd/envdclient"
)

// envdBin is the envd binary built once for the whole test run.
var envdBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		// ENVD_TEST_BIN points at a prebuilt envd (handy while the tree
		// is mid-edit); otherwise build the one in this tree.
		if envdBin = os.Getenv("ENVD_TEST_BIN"); envdBin != "" {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "envdclient-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		envdBin = filepath.Join(dir, "envd")
		build := exec.Command("go", "build", "-o", envdBin, "github.com/envd-go/envd/cmd/envd")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build envd:", err)
			return 1
		}
		return m.Run()
	}())
}

// envd is one real envd process started for a test.
type envd struct {
	addr string
	cmd  *exec.Cmd
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startEnvd runs envd -isnotfc on a free port and waits until /health
// answers. It is stopped in t.Cleanup.
func startEnvd(t testing.TB) *envd {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		cmd := exec.Command(envdBin, "-isnotfc", "-port", strconv.Itoa(port))
		cmd.Stdout, cmd.Stderr = nil, nil
		if testing.Verbose() {
			cmd.Stderr = os.Stderr
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start envd: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		e := &envd{addr: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd}
		c, err := envdclient.New(e.addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		readyc := make(chan error, 1)
		go func() { _, err := c.WaitUntilReady(ctx); readyc <- err }()
		select {
		case err = <-readyc:
		case err = <-exited:
			err = fmt.Errorf("envd exited early: %v", err)
			cancel()
			<-readyc
		}
		cancel()
		c.CloseIdleConnections()
		if err == nil {
			t.Cleanup(func() {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(15 * time.Second):
					syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-exited
				}
			})
			return e
		}
		lastErr = err
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	t.Fatalf("envd did not become ready: %v", lastErr)
	return nil
}

// client returns a client for e, closed in t.Cleanup.
func (e *envd) client(t testing.TB, opts ...envdclient.Option) *envdclient.Client {
	t.Helper()
	c, err := envdclient.New(e.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// testCtx is a bounded context for one test step.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
