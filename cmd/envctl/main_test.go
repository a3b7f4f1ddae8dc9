package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envd-go/envd/envdclient"
)

// Binaries built once per test run: the envctl under test and a real envd.
var envctlBin, envdBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "envctl-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		envctlBin = filepath.Join(dir, "envctl")
		envdBin = os.Getenv("ENVD_TEST_BIN") // prebuilt envd, for a tree mid-edit
		pkgs := map[string]string{envctlBin: "github.com/envd-go/envd/cmd/envctl"}
		if envdBin == "" {
			envdBin = filepath.Join(dir, "envd")
			pkgs[envdBin] = "github.com/envd-go/envd/cmd/envd"
		}
		for out, pkg := range pkgs {
			build := exec.Command("go", "build", "-o", out, pkg)
			build.Stdout, build.Stderr = os.Stderr, os.Stderr
			if err := build.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
				return 1
			}
		}
		return m.Run()
	}())
}

// startEnvd runs a real envd -isnotfc on a free port until the test ends
// and returns its address.
func startEnvd(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(envdBin, "-isnotfc", "-port", strconv.Itoa(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	addr := fmt.Sprintf("http://127.0.0.1:%d", port)
	c, err := envdclient.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitUntilReady(ctx); err != nil {
		t.Fatalf("envd not ready: %v", err)
	}
	return addr
}

type result struct {
	stdout, stderr string
	code           int
}

// envctl runs the binary with args (and extra environment) to completion.
func envctl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, envctlBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run envctl %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// ok runs envctl against addr and requires exit 0.
func ok(t *testing.T, addr string, args ...string) string {
	t.Helper()
	r := envctl(t, nil, append([]string{"--addr", addr}, args...)...)
	if r.code != 0 {
		t.Fatalf("envctl %v: exit %d, stderr %q", args, r.code, r.stderr)
	}
	return r.stdout
}

func TestExecExitCode(t *testing.T) {
	addr := startEnvd(t)
	tests := []struct {
		name           string
		args           []string
		stdout, stderr string
		code           int
	}{
		{"success", []string{"echo", "hello"}, "hello\n", "", 0},
		{"exit code", []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 42"}, "out\n", "err\n", 42},
		{"signal", []string{"/bin/sh", "-c", "kill -9 $$"}, "", "", 137},
		{"missing program", []string{"/bin/sh", "-c", "envdtc-nope 2>/dev/null"}, "", "", 127},
		{"env and cwd", []string{"-e", "A=1", "-w", "/tmp", "--", "/bin/sh", "-c", "echo $A $(pwd)"}, "1 /tmp\n", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--addr", addr, "exec"}, tt.args...)
			if tt.args[0] != "-e" {
				args = append([]string{"--addr", addr, "exec", "--"}, tt.args...)
			}
			r := envctl(t, nil, args...)
			if r.code != tt.code || r.stdout != tt.stdout || r.stderr != tt.stderr {
				t.Errorf("got exit %d out %q err %q, want %d %q %q", r.code, r.stdout, r.stderr, tt.code, tt.stdout, tt.stderr)
			}
		})
	}

	// Local stdin is forwarded with -i.
	cmd := exec.Command(envctlBin, "--addr", addr, "exec", "-i", "--", "tr", "a-z", "A-Z")
	cmd.Stdin = strings.NewReader("shout\n")
	out, err := cmd.Output()
	if err != nil || string(out) != "SHOUT\n" {
		t.Errorf("exec -i: %q, %v", out, err)
	}
}

// Ctrl-C (SIGINT to envctl) becomes SIGTERM for the remote process, and
// envctl exits with the remote code, 128+15.
func TestExecForwardsInterrupt(t *testing.T) {
	addr := startEnvd(t)
	cmd := exec.Command(envctlBin, "--addr", addr, "exec", "--tag", "envdtc-int", "--", "sleep", "60")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	waitTag(t, addr, "envdtc-int")
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 143 {
			t.Fatalf("envctl exit = %v, want 143 (stderr %q)", err, errb.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("envctl did not exit after SIGINT")
	}
}

// waitTag waits until a process with tag is listed.
func waitTag(t *testing.T, addr, tag string) uint32 {
	t.Helper()
	c, err := envdclient.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ps, err := c.List(context.Background())
		if err == nil {
			for _, p := range ps {
				if p.Tag == tag {
					return p.PID
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no process tagged %s", tag)
	return 0
}

func TestErrorsAreOneLine(t *testing.T) {
	addr := startEnvd(t)
	dead := "http://" + func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	tests := []struct {
		name string
		args []string
		code int
		has  string
	}{
		{"not found", []string{"--addr", addr, "stat", "/envdtc/missing"}, 1, "not found"},
		{"unreachable", []string{"--addr", dead, "health"}, 1, "unavailable"},
		{"bad flag", []string{"--addr", addr, "ls", "--bogus"}, 2, "unknown flag"},
		{"bad args", []string{"--addr", addr, "stat"}, 2, "arg"},
		{"cp both local", []string{"--addr", addr, "cp", "a", "b"}, 2, "remote:PATH"},
		{"kill bad signal", []string{"--addr", addr, "kill", "-s", "HUP", "1"}, 2, "TERM and KILL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := envctl(t, nil, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tt.code, r.stderr)
			}
			lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "envctl: ") || !strings.Contains(lines[0], tt.has) {
				t.Errorf("stderr = %q, want one line starting envctl: containing %q", r.stderr, tt.has)
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
		})
	}
}

func TestEnvVarsAndToken(t *testing.T) {
	addr := startEnvd(t)
	env := []string{"ENVD_ADDR=" + addr}
	if r := envctl(t, env, "health"); r.code != 0 || !strings.HasPrefix(r.stdout, "ok") {
		t.Fatalf("health via ENVD_ADDR: %+v", r)
	}
	r := envctl(t, env, "--json", "init", "--access-token", "envdtc-tok", "--env", "GREETING=hi", "--workdir", "/tmp")
	if r.code != 0 {
		t.Fatalf("init: %+v", r)
	}
	hasKeys(t, "init", r.stdout, "version")
	if r := envctl(t, env, "envs"); r.code != 1 || !strings.Contains(r.stderr, "unauthenticated") {
		t.Errorf("envs without token: %+v", r)
	}
	r = envctl(t, append(env, "ENVD_TOKEN=envdtc-tok"), "envs")
	if r.code != 0 || !strings.Contains(r.stdout, "GREETING=hi\n") {
		t.Errorf("envs with ENVD_TOKEN: %+v", r)
	}
	r = envctl(t, env, "--token", "envdtc-tok", "exec", "--", "/bin/sh", "-c", "echo $GREETING; pwd")
	if r.code != 0 || r.stdout != "hi\n/tmp\n" {
		t.Errorf("exec with --token: %+v", r)
	}
}

func TestKillAndAttach(t *testing.T) {
	addr := startEnvd(t)
	c, err := envdclient.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	p, err := c.Start(context.Background(), envdclient.Command{
		Cmd: "/bin/sh", Args: []string{"-c", "while :; do echo beat; sleep 0.1; done"}, Tag: "envdtc-beat",
	})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.PID()
	p.Close()
	t.Cleanup(func() { c.Kill(context.Background(), envdclient.PID(pid)) })

	if out := ok(t, addr, "ps"); !strings.Contains(out, strconv.Itoa(int(pid))) || !strings.Contains(out, "envdtc-beat") {
		t.Errorf("ps = %q", out)
	}

	attach := exec.Command(envctlBin, "--addr", addr, "attach", strconv.Itoa(int(pid)))
	stdout, err := attach.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := attach.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { attach.Process.Kill() })
	buf := make([]byte, 64)
	n, err := stdout.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "beat") {
		t.Fatalf("attach output %q, %v", buf[:n], err)
	}
	ok(t, addr, "kill", "--tag", "envdtc-beat")
	go func() { var sink bytes.Buffer; sink.ReadFrom(stdout) }()
	done := make(chan error, 1)
	go func() { done <- attach.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 143 {
			t.Fatalf("attach exit = %v, want 143 after SIGTERM", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("attach did not end when the process was killed")
	}
	if r := envctl(t, nil, "--addr", addr, "kill", strconv.Itoa(int(pid))); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("kill of a gone pid: %+v", r)
	}
}

func TestWatchCommand(t *testing.T) {
	addr := startEnvd(t)
	dir := t.TempDir()
	cmd := exec.Command(envctlBin, "--addr", addr, "--json", "watch", "-r", dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	lines := make(chan string, 16)
	go func() {
		var acc []byte
		b := make([]byte, 4096)
		for {
			n, err := stdout.Read(b)
			acc = append(acc, b[:n]...)
			for {
				i := bytes.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- string(acc[:i])
				acc = acc[i+1:]
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	// The watch is live once envctl said so on stderr; retry the write
	// until an event shows up, which also covers that window.
	deadline := time.After(60 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var got string
	for got == "" {
		select {
		case l := <-lines:
			if strings.Contains(l, `"name": "w.txt"`) || strings.Contains(l, `"name":"w.txt"`) {
				got = l
			}
		case <-tick.C:
			os.WriteFile(filepath.Join(dir, "w.txt"), []byte("x"), 0o644)
		case <-deadline:
			t.Fatalf("no event for w.txt; stderr %q", errb.String())
		}
	}
	if !strings.Contains(got, `"type":`) {
		t.Errorf("event line %q lacks type", got)
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watch after Ctrl-C: %v (stderr %q)", err, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("watch did not stop on SIGINT")
	}
}
