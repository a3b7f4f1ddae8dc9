package envdclient_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/envd-go/envd/envdclient"
)

func TestExec(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	dir := t.TempDir()
	tests := []struct {
		name       string
		cmd        envdclient.Command
		stdout     string
		stderr     string
		code       int
		exited     bool
		statusPart string
	}{
		{"stdout", envdclient.Command{Cmd: "echo", Args: []string{"hi", "there"}}, "hi there\n", "", 0, true, "exit status 0"},
		{"stderr and exit code", envdclient.Command{Cmd: "/bin/sh", Args: []string{"-c", "echo oops >&2; exit 3"}}, "", "oops\n", 3, true, "exit status 3"},
		{"env and cwd", envdclient.Command{Cmd: "/bin/sh", Args: []string{"-c", `echo "$FOO $(pwd)"`}, Env: map[string]string{"FOO": "bar"}, Cwd: dir}, "bar " + dir + "\n", "", 0, true, "exit status 0"},
		{"killed by signal", envdclient.Command{Cmd: "/bin/sh", Args: []string{"-c", "kill -9 $$"}}, "", "", -1, false, "signal: killed"},
		{"missing program", envdclient.Command{Cmd: "/bin/sh", Args: []string{"-c", "envdtc-no-such-program"}}, "", "", 127, true, "exit status 127"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Exec(testCtx(t), tt.cmd)
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			if string(res.Stdout) != tt.stdout || (tt.stderr != "" && string(res.Stderr) != tt.stderr) {
				t.Errorf("output = %q / %q, want %q / %q", res.Stdout, res.Stderr, tt.stdout, tt.stderr)
			}
			if res.ExitCode != tt.code || res.Exited != tt.exited || res.Status != tt.statusPart {
				t.Errorf("exit = %+v, want code %d exited %v status %q", res.ExitStatus, tt.code, tt.exited, tt.statusPart)
			}
			if res.PID == 0 {
				t.Error("no pid")
			}
		})
	}
	if _, err := c.Exec(testCtx(t), envdclient.Command{Cmd: "true", Cwd: "/envdtc/missing"}); !errors.Is(err, envdclient.ErrInvalidArgument) {
		t.Errorf("Exec with a missing cwd = %v, want ErrInvalidArgument", err)
	}
}

// The unary client's 1 s timeout cuts a unary call that blocks, but not a
// 3 s streamed exec on the streaming client.
func TestUnaryTimeoutVsStream(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t, envdclient.WithUnaryTimeout(time.Second))

	res, err := c.Exec(testCtx(t), envdclient.Command{Cmd: "/bin/sh", Args: []string{"-c", "sleep 3; echo done"}})
	if err != nil {
		t.Fatalf("streamed exec under a 1 s unary timeout: %v", err)
	}
	if string(res.Stdout) != "done\n" || res.ExitCode != 0 {
		t.Fatalf("exec result = %q, %+v", res.Stdout, res.ExitStatus)
	}

	// A process that never reads stdin: writing 4 MiB blocks in envd's
	// pipe write, so the unary SendInput outlives its 1 s budget.
	p, err := c.Start(testCtx(t), envdclient.Command{Cmd: "sleep", Args: []string{"60"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.Kill(kctx)
		p.Wait()
	})
	err = p.SendStdin(context.Background(), make([]byte, 4<<20))
	if !errors.Is(err, envdclient.ErrDeadlineExceeded) {
		t.Fatalf("blocked SendInput = %v, want ErrDeadlineExceeded", err)
	}
}

func TestStartStdinAndKill(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)

	var out syncBuffer
	p, err := c.Start(ctx, envdclient.Command{Cmd: "cat", Stdin: true, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() == 0 {
		t.Fatal("no pid")
	}
	if err := p.SendStdin(ctx, []byte("unary ")); err != nil {
		t.Fatalf("SendStdin: %v", err)
	}
	in, err := p.InputStream(ctx)
	if err != nil {
		t.Fatalf("InputStream: %v", err)
	}
	for _, s := range []string{"streamed ", "in ", "order\n"} {
		if _, err := io.WriteString(in, s); err != nil {
			t.Fatalf("InputStream write: %v", err)
		}
	}
	if err := in.Close(); err != nil {
		t.Fatalf("InputStream close: %v", err)
	}
	if err := p.CloseStdin(ctx); err != nil {
		t.Fatalf("CloseStdin: %v", err)
	}
	st, err := p.Wait()
	if err != nil || !st.Success() {
		t.Fatalf("Wait = %+v, %v", st, err)
	}
	if got := out.String(); got != "unary streamed in order\n" {
		t.Errorf("cat echoed %q", got)
	}

	p, err = c.Start(ctx, envdclient.Command{Cmd: "sleep", Args: []string{"60"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(ctx); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	st, err = p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.Exited || st.ExitCode != -1 || st.Status != "signal: killed" {
		t.Errorf("after Kill: %+v", st)
	}
	if err := c.Kill(ctx, envdclient.PID(p.PID())); !errors.Is(err, envdclient.ErrNotFound) && !errors.Is(err, envdclient.ErrInternal) {
		t.Errorf("Kill of an exited pid = %v, want not found", err)
	}
	if err := c.Kill(ctx, envdclient.Tag("envdtc-no-such-tag")); !errors.Is(err, envdclient.ErrNotFound) {
		t.Errorf("Kill of an unknown tag = %v, want ErrNotFound", err)
	}
}

func TestConnectListAndDetach(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)

	const tag = "envdtc-ticker"
	// Start and detach at once: the process keeps running without a reader.
	p, err := c.Start(ctx, envdclient.Command{Cmd: "/bin/sh", Args: []string{"-c", "while :; do echo tick; sleep 0.1; done"}, Tag: tag})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.PID()
	p.Close()
	if _, err := p.Wait(); !errors.Is(err, envdclient.ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after Close = %v, want ErrCanceled", err)
	}
	t.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c.Kill(kctx, envdclient.PID(pid))
	})

	list, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, pi := range list {
		if pi.PID == pid {
			found = pi.Tag == tag && pi.Cmd == "/bin/sh" && len(pi.Args) == 2
		}
	}
	if !found {
		t.Fatalf("List = %+v: no %d with tag %s", list, pid, tag)
	}

	for _, sel := range []envdclient.Selector{envdclient.PID(pid), envdclient.Tag(tag)} {
		var out syncBuffer
		got := make(chan struct{})
		w := &notifyWriter{w: &out, want: "tick", hit: got}
		cp, err := c.Connect(ctx, sel, envdclient.ConnectOptions{Stdout: w})
		if err != nil {
			t.Fatalf("Connect %+v: %v", sel, err)
		}
		if cp.PID() != pid {
			t.Errorf("Connect %+v pid = %d, want %d", sel, cp.PID(), pid)
		}
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			t.Fatalf("Connect %+v: no output", sel)
		}
		cp.Close()
	}

	// One attached reader sees the end when the process is killed.
	cp, err := c.Connect(ctx, envdclient.Tag(tag), envdclient.ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Signal(ctx, envdclient.Tag(tag), envdclient.SIGTERM); err != nil {
		t.Fatalf("SIGTERM by tag: %v", err)
	}
	st, err := cp.Wait()
	if err != nil || st.Status != "signal: terminated" {
		t.Fatalf("Connect Wait after SIGTERM = %+v, %v", st, err)
	}

	if _, err := c.Connect(ctx, envdclient.PID(1<<30), envdclient.ConnectOptions{}); !errors.Is(err, envdclient.ErrNotFound) {
		t.Errorf("Connect to a missing pid = %v, want ErrNotFound", err)
	}
}

func TestContextCancelDetaches(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx, cancel := context.WithCancel(context.Background())
	p, err := c.Start(ctx, envdclient.Command{Cmd: "sleep", Args: []string{"60"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c.Kill(kctx, envdclient.PID(p.PID()))
	})
	cancel()
	if _, err := p.Wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
	}
	// Cancelling the stream does not kill the process.
	list, err := c.List(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	alive := false
	for _, pi := range list {
		alive = alive || pi.PID == p.PID()
	}
	if !alive {
		t.Fatal("process died with its stream")
	}

	// A cancelled context fails a unary call right away.
	dead, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := c.Stat(dead, "/"); !errors.Is(err, envdclient.ErrCanceled) {
		t.Errorf("Stat with a cancelled ctx = %v, want ErrCanceled", err)
	}

	// A deadline on Start's ctx bounds the process's lifetime in envd.
	dctx, dcancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer dcancel()
	_, err = c.Exec(dctx, envdclient.Command{Cmd: "sleep", Args: []string{"30"}})
	if !errors.Is(err, envdclient.ErrDeadlineExceeded) {
		t.Fatalf("Exec past its deadline = %v, want ErrDeadlineExceeded", err)
	}
}

func TestPTY(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)

	var out syncBuffer
	p, err := c.Start(ctx, envdclient.Command{
		Cmd: "/bin/sh", Env: map[string]string{"PS1": "$ ", "TERM": "xterm"}, Tag: "envdtc-pty",
		PTY: &envdclient.PTYSize{Cols: 40, Rows: 10}, Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.Kill(kctx)
		p.Wait()
	})
	waitFor := func(s string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("terminal never showed %q; got %q", s, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := p.SendStdin(ctx, []byte("stty size; echo m1-$((1+1))\n")); err != nil {
		t.Fatal(err)
	}
	waitFor("10 40")
	waitFor("m1-2")
	if err := p.Resize(ctx, envdclient.PTYSize{Cols: 100, Rows: 30}); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	in, err := p.InputStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(in, "stty size; echo m2-$((2+2))\n")
	waitFor("30 100")
	waitFor("m2-4")
	in.Close()

	// Attach to the same PTY by tag, as wrenn's host does, and type there.
	var out2 syncBuffer
	att, err := c.Connect(ctx, envdclient.Tag("envdtc-pty"), envdclient.ConnectOptions{Stdout: &out2, PTY: true})
	if err != nil {
		t.Fatalf("Connect to the PTY by tag: %v", err)
	}
	if err := att.SendStdin(ctx, []byte("echo m3-$((3+3))\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out2.String(), "m3-6") {
		if time.Now().After(deadline) {
			t.Fatalf("attached stream never showed m3-6; got %q", out2.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := att.SendStdin(ctx, []byte("exit 7\n")); err != nil {
		t.Fatal(err)
	}
	if st, err := att.Wait(); err != nil || st.ExitCode != 7 {
		t.Fatalf("attached PTY exit = %+v, %v", st, err)
	}
	st, err := p.Wait()
	if err != nil || st.ExitCode != 7 {
		t.Fatalf("PTY exit = %+v, %v", st, err)
	}

	// Resizing a pipe process is an error envd reports.
	q, err := c.Start(ctx, envdclient.Command{Cmd: "sleep", Args: []string{"30"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { q.Kill(ctx); q.Wait() }()
	if err := q.Resize(ctx, envdclient.PTYSize{Cols: 1, Rows: 1}); err == nil {
		t.Error("Resize of a pipe process succeeded")
	}
}

// Keepalives from envd keep a silent stream alive past the watchdog; a
// stopped envd (SIGSTOP: nothing at all arrives) trips it.
func TestStreamIdleWatchdog(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t, envdclient.WithKeepaliveInterval(time.Second), envdclient.WithIdleMultiplier(3))

	res, err := c.Exec(testCtx(t), envdclient.Command{Cmd: "sleep", Args: []string{"5"}})
	if err != nil || !res.Success() {
		t.Fatalf("silent 5 s exec with a 3 s idle limit = %+v, %v", res, err)
	}

	p, err := c.Start(testCtx(t), envdclient.Command{Cmd: "sleep", Args: []string{"60"}})
	if err != nil {
		t.Fatal(err)
	}
	envdPid := e.cmd.Process.Pid
	if err := syscall.Kill(envdPid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(envdPid, syscall.SIGCONT) })
	_, err = p.Wait()
	syscall.Kill(envdPid, syscall.SIGCONT)
	if !errors.Is(err, envdclient.ErrStreamIdle) {
		t.Fatalf("Wait on a frozen envd = %v, want ErrStreamIdle", err)
	}
	kctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Kill(kctx, envdclient.PID(p.PID())); err != nil {
		t.Errorf("Kill after thaw: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and polling readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// notifyWriter closes hit once the output contains want.
type notifyWriter struct {
	w    *syncBuffer
	want string
	hit  chan struct{}
	once sync.Once
}

func (n *notifyWriter) Write(p []byte) (int, error) {
	n.w.Write(p)
	if strings.Contains(n.w.String(), n.want) {
		n.once.Do(func() { close(n.hit) })
	}
	return len(p), nil
}
