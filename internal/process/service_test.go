package process

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/pid1"
)

func TestMain(m *testing.M) {
	// os/signal starts its watcher goroutine on first use and keeps it;
	// start it before any leak baseline is taken.
	pid1.NewReaper(false).Close()
	os.Exit(m.Run())
}

func TestStartEndEvents(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	tests := []struct {
		name   string
		cfg    *pb.ProcessConfig
		stdout string
		stderr string
		end    *pb.ProcessEvent_EndEvent
	}{
		{"exit0", sh("echo hi"), "hi\n", "", &pb.ProcessEvent_EndEvent{Exited: true, Status: "exit status 0"}},
		{"exit3", sh("echo hi; echo err >&2; exit 3"), "hi\n", "err\n", &pb.ProcessEvent_EndEvent{ExitCode: 3, Exited: true, Status: "exit status 3", Error: ptr("exit status 3")}},
		{"killed", sh("kill -KILL $$"), "", "", &pb.ProcessEvent_EndEvent{ExitCode: -1, Status: "signal: killed", Error: ptr("signal: killed")}},
		{"terminated", sh("kill -TERM $$"), "", "", &pb.ProcessEvent_EndEvent{ExitCode: -1, Status: "signal: terminated", Error: ptr("signal: terminated")}},
		{"direct", cfg("echo", "a", "b"), "a b\n", "", &pb.ProcessEvent_EndEvent{Exited: true, Status: "exit status 0"}},
		{"missing program", cfg("envd-no-such-program"), "", "", &pb.ProcessEvent_EndEvent{ExitCode: 127, Exited: true, Status: "exit status 127", Error: ptr("exit status 127")}},
	}
	for _, tc := range tests {
		for _, codec := range []string{"proto", "json", "gzip"} {
			t.Run(tc.name+"/"+codec, func(t *testing.T) {
				c := map[string]processconnect.ProcessClient{"proto": h.proto, "json": h.json, "gzip": h.gzip}[codec]
				r := h.run(t, c, &pb.StartRequest{Process: tc.cfg})
				if r.err != nil {
					t.Fatalf("stream error: %v", r.err)
				}
				if tc.name == "missing program" {
					// The message is the wrapper's (nice's or the shell's).
					if !strings.Contains(string(r.stderr), "envd-no-such-program") {
						t.Fatalf("stderr %q", r.stderr)
					}
					r.stderr = nil
				}
				if r.pid == 0 || string(r.stdout) != tc.stdout || string(r.stderr) != tc.stderr {
					t.Fatalf("pid %d stdout %q stderr %q", r.pid, r.stdout, r.stderr)
				}
				if r.end == nil || r.end.String() != tc.end.String() {
					t.Fatalf("end = %v, want %v", r.end, tc.end)
				}
			})
		}
	}
}

func TestEndEventFormatting(t *testing.T) {
	tests := []struct {
		ws     unix.WaitStatus
		code   int32
		status string
		err    bool
	}{
		{0, 0, "exit status 0", false},
		{3 << 8, 3, "exit status 3", true},
		{unix.WaitStatus(unix.SIGKILL), -1, "signal: killed", true},
		{unix.WaitStatus(unix.SIGINT), -1, "signal: interrupt", true},
		{unix.WaitStatus(unix.SIGSEGV) | 0x80, -1, "signal: segmentation fault (core dumped)", true},
		{unix.WaitStatus(unix.SIGABRT) | 0x80, -1, "signal: aborted (core dumped)", true},
		{unix.WaitStatus(unix.SIGHUP), -1, "signal: hangup", true},
		{unix.WaitStatus(unix.SIGUSR1), -1, "signal: user defined signal 1", true},
	}
	for _, tc := range tests {
		e := endEvent(tc.ws)
		if e.ExitCode != tc.code || e.Status != tc.status || (e.Error != nil) != tc.err || (e.Error != nil && *e.Error != tc.status) || e.Exited != (tc.code >= 0) {
			t.Errorf("%#x: got %v", uint32(tc.ws), e)
		}
	}
}

// envOf runs `env` through the service and returns its variables.
func envOf(t *testing.T, h *harness, c *pb.ProcessConfig, hdr map[string]string) map[string]string {
	t.Helper()
	req := connect.NewRequest(&pb.StartRequest{Process: c})
	for k, v := range hdr {
		req.Header().Set(k, v)
	}
	st, err := h.proto.Start(testCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	r := drain(st)
	if r.err != nil || r.end.GetExitCode() != 0 {
		t.Fatalf("env: %v %v %s", r.err, r.end, r.stderr)
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(r.stdout)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		out[k] = v
	}
	return out
}

func TestEnvRules(t *testing.T) {
	checkLeaks(t)
	t.Setenv("ENVD_TEST_LEAK", "1")
	t.Setenv("PATH", "/usr/bin:/bin")
	for _, wrapper := range []bool{false, true} {
		t.Run(fmt.Sprintf("wrapper=%v", wrapper), func(t *testing.T) {
			h := newHarness(t, func(o *Options) { o.ShellWrapper = wrapper })
			h.st.SetInternalEnv("E2B_SANDBOX", "true")
			h.st.ReplaceUserEnv(map[string]string{"FROM_INIT": "x", "OVERRIDE": "init"})
			c := cfg("env")
			c.Envs = map[string]string{"OVERRIDE": "req", "EXTRA": "y"}
			got := envOf(t, h, c, nil)
			want := map[string]string{
				"PATH": "/usr/bin:/bin", "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash",
				"PWD": "/root", "E2B_SANDBOX": "true", "FROM_INIT": "x", "OVERRIDE": "req", "EXTRA": "y",
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("env = %v\nwant  %v", got, want)
			}
		})
	}
	t.Run("default PATH", func(t *testing.T) {
		t.Setenv("PATH", "")
		h := newHarness(t, nil)
		if got := envOf(t, h, cfg("/usr/bin/env"), nil)["PATH"]; got != defaultPath {
			t.Fatalf("PATH = %q", got)
		}
	})
}

func TestUserAndCwd(t *testing.T) {
	checkLeaks(t)
	if out, err := exec.Command("groupadd", "-f", "envdtpg").CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("groupdel", "envdtpg").Run() })
	addUser(t, "envdtp1", "-G", "envdtpg")
	h := newHarness(t, nil)
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("envdtp1:"))
	uid, gid, groups := idOf(t, "envdtp1")

	got := envOf(t, h, sh(`echo UID=$(id -u); echo GID=$(id -g); echo GROUPS=$(id -G); echo CWD=$(pwd)`), map[string]string{"Authorization": basic})
	if got["UID"] != uid || got["GID"] != gid || got["GROUPS"] != groups || got["CWD"] != "/home/envdtp1" {
		t.Fatalf("got %v, want uid %s gid %s groups %s", got, uid, gid, groups)
	}
	env := envOf(t, h, cfg("env"), map[string]string{"Authorization": basic})
	if env["HOME"] != "/home/envdtp1" || env["USER"] != "envdtp1" || env["LOGNAME"] != "envdtp1" || env["SHELL"] != "/bin/bash" {
		t.Fatalf("env %v", env)
	}

	// Default user from state; default workdir; relative cwd is home-based.
	h.st.SetDefaultUser("envdtp1")
	if got := envOf(t, h, sh("echo U=$(id -un)"), nil)["U"]; got != "envdtp1" {
		t.Fatalf("default user: %q", got)
	}
	dir := "/home/envdtp1/work" // the user must be able to enter it
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.st.SetDefaultWorkdir(dir)
	if got := envOf(t, h, sh("echo CWD=$(pwd)"), nil)["CWD"]; got != dir {
		t.Fatalf("default workdir: %q, want %s", got, dir)
	}
	if err := os.Mkdir("/home/envdtp1/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	c := sh("echo CWD=$(pwd)")
	c.Cwd = ptr("sub")
	if got := envOf(t, h, c, nil)["CWD"]; got != "/home/envdtp1/sub" {
		t.Fatalf("relative cwd: %q", got)
	}
}

func idOf(t *testing.T, name string) (uid, gid, groups string) {
	t.Helper()
	run := func(args ...string) string {
		out, err := exec.Command("id", append(args, name)...).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	return run("-u"), run("-g"), run("-G")
}

func TestStdin(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx := testCtx(t)
	for _, c := range []struct {
		name   string
		client func() any
	}{{"proto", nil}, {"json", nil}} {
		t.Run(c.name, func(t *testing.T) {
			cl := h.proto
			if c.name == "json" {
				cl = h.json
			}
			st, pid := h.startStream(t, ctx, cl, &pb.StartRequest{Process: sh("cat; echo EOF; sleep 30")})
			for _, s := range []string{"one\n", "two\n"} {
				if _, err := cl.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(s)}}})); err != nil {
					t.Fatal(err)
				}
			}
			// StreamInput in order, then CloseStdin ends cat.
			si := cl.StreamInput(ctx)
			_ = si.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: pidSel(pid)}}})
			for i := range 50 {
				_ = si.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(fmt.Sprintf("%d\n", i))}}}}})
				if i == 10 {
					_ = si.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}})
				}
			}
			if _, err := si.CloseAndReceive(); err != nil {
				t.Fatal(err)
			}
			for range 2 { // idempotent
				if _, err := cl.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(pid)})); err != nil {
					t.Fatal(err)
				}
			}
			var out []byte
			for !bytes.HasSuffix(out, []byte("EOF\n")) && st.Receive() {
				out = append(out, st.Msg().GetEvent().GetData().GetStdout()...)
			}
			if _, err := cl.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
				t.Fatal(err)
			}
			r := drain(st)
			r.stdout = append(out, r.stdout...)
			want := "one\ntwo\n"
			for i := range 50 {
				want += fmt.Sprintf("%d\n", i)
			}
			if string(r.stdout) != want+"EOF\n" || r.end.GetStatus() != "signal: killed" {
				t.Fatalf("stdout %q end %v err %v", r.stdout, r.end, r.err)
			}
		})
	}
	t.Run("stdin false", func(t *testing.T) {
		r := h.run(t, h.proto, &pb.StartRequest{Process: sh("cat; echo done"), Stdin: ptr(false)})
		if string(r.stdout) != "done\n" {
			t.Fatalf("stdout %q", r.stdout)
		}
		_, pid := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: cfg("sleep", "30"), Stdin: ptr(false)})
		_, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
		if codeOf(err) != connect.CodeInternal || !strings.Contains(err.Error(), "stdin not enabled or closed") {
			t.Fatalf("err %v", err)
		}
	})
}

func TestListAndTags(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx := testCtx(t)
	c1 := cfg("sleep", "30")
	c1.Envs = map[string]string{"A": "1"}
	_, p1 := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: c1, Tag: ptr("t")})
	c2 := cfg("sleep", "31")
	c2.Cwd = ptr("/tmp")
	_, p2 := h.startStream(t, ctx, h.json, &pb.StartRequest{Process: c2, Tag: ptr("t")})
	resp, err := h.json.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint32]*pb.ProcessInfo{}
	for _, p := range resp.Msg.Processes {
		got[p.Pid] = p
	}
	if len(got) != 2 || got[p1].GetConfig().Cwd != nil || got[p1].GetConfig().GetEnvs()["A"] != "1" || got[p2].GetConfig().GetCwd() != "/tmp" || got[p1].GetTag() != "t" {
		t.Fatalf("list %v", resp.Msg)
	}
	// The newest process with the tag wins.
	if _, err := h.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: tagSel("t"), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "p2 gone", func() bool { return !alive(int(p2)) })
	if !alive(int(p1)) {
		t.Fatal("p1 was killed instead of the newest")
	}
}

func TestPTY(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx := testCtx(t)
	for _, cl := range []struct {
		name string
		c    func() any
	}{{"proto", nil}, {"json", nil}} {
		t.Run("resize/"+cl.name, func(t *testing.T) {
			c := h.proto
			if cl.name == "json" {
				c = h.json
			}
			st, pid := h.startStream(t, ctx, c, &pb.StartRequest{
				Process: sh(`stty size; read a; stty size; read b; echo "got $a $b"; tty`),
				Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}},
				Tag:     ptr("pty-" + cl.name),
			})
			var out []byte
			waitFor := func(s string) {
				t.Helper()
				for !bytes.Contains(out, []byte(s)) {
					if !st.Receive() {
						t.Fatalf("stream ended before %q: %q %v", s, out, st.Err())
					}
					out = append(out, st.Msg().GetEvent().GetData().GetPty()...)
				}
			}
			waitFor("24 80")
			send := func(b string) {
				if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: tagSel("pty-" + cl.name), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte(b)}}})); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 100, Rows: 30}}})); err != nil {
				t.Fatal(err)
			}
			send("x\n")
			waitFor("30 100")
			send("y\n")
			waitFor("got x y")
			waitFor("/dev/pts/")
			for st.Receive() {
				if e := st.Msg().GetEvent().GetEnd(); e != nil && e.GetStatus() != "exit status 0" {
					t.Fatalf("end %v", e)
				}
			}
		})
	}
	t.Run("ctrl-c", func(t *testing.T) {
		st, pid := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: cfg("cat"), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}})
		if _, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("hello\n")}}})); err != nil {
			t.Fatal(err)
		}
		var out []byte
		for bytes.Count(out, []byte("hello")) < 2 { // the echo and cat's copy
			if !st.Receive() {
				t.Fatalf("ended early: %q", out)
			}
			out = append(out, st.Msg().GetEvent().GetData().GetPty()...)
		}
		// ISIG turns 0x03 into SIGINT for the foreground group (flushing
		// pending output, so it is sent alone).
		if _, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte{3}}}})); err != nil {
			t.Fatal(err)
		}
		r := drain(st)
		if r.end.GetStatus() != "signal: interrupt" {
			t.Fatalf("end %v pty %q", r.end, r.pty)
		}
	})
	t.Run("early output", func(t *testing.T) {
		for range 5 {
			r := h.run(t, h.proto, &pb.StartRequest{Process: cfg("echo", "early"), Pty: &pb.PTY{}})
			if !bytes.Contains(r.pty, []byte("early")) {
				t.Fatalf("pty output lost: %q", r.pty)
			}
		}
	})
	t.Run("large chunks", func(t *testing.T) {
		r := h.run(t, h.proto, &pb.StartRequest{Process: sh("head -c 3000000 /dev/zero | tr '\\0' a"), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}})
		if len(r.pty) != 3000000 || r.maxChunk > ptyChunk {
			t.Fatalf("pty bytes %d, max chunk %d", len(r.pty), r.maxChunk)
		}
	})
}

// TestPTYSignalAmongInputBurst: a program that never reads its terminal
// fills the PTY input queue, so writes block; a SendSignal queued behind
// them must still be applied, and so must a resize.
func TestPTYSignalAmongInputBurst(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx := testCtx(t)
	st, pid := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: cfg("sleep", "1000"), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}})

	var wg sync.WaitGroup
	// Complete lines: canonical mode then keeps them (no overflow discard),
	// the input queue fills and master writes block.
	burst := bytes.Repeat([]byte("xxxxxxx\n"), 1<<10)
	var failed atomic.Int32
	// A StreamInput burst and concurrent SendInputs.
	wg.Add(1)
	go func() {
		defer wg.Done()
		si := h.proto.StreamInput(ctx)
		_ = si.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: pidSel(pid)}}})
		for range 64 {
			if si.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: burst}}}}}) != nil {
				break
			}
		}
		_, _ = si.CloseAndReceive()
	}()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: burst}}})); err != nil {
				failed.Add(1)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // let the burst block the terminal
	if _, err := h.proto.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 90, Rows: 40}}})); err != nil && codeOf(err) != connect.CodeNotFound {
		t.Fatalf("update: %v", err)
	}
	if _, err := h.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatalf("signal: %v", err)
	}
	r := drain(st)
	if r.end.GetStatus() != "signal: killed" {
		t.Fatalf("end %v err %v", r.end, r.err)
	}
	wg.Wait()
	if failed.Load() == 0 {
		t.Fatal("no input write was blocked: the test did not exercise the queue")
	}
}

// TestInputOrder: resizes interleaved with input are applied in arrival
// order, none merged away.
func TestInputOrder(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx := testCtx(t)
	st, pid := h.startStream(t, ctx, h.proto, &pb.StartRequest{
		Process: sh(`stty -echo; for i in 1 2 3 4 5; do read l; echo "L$l $(stty size)"; done`),
		Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: 10, Rows: 10}},
	})
	var out []byte
	for i := 1; i <= 5; i++ {
		if _, err := h.proto.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: uint32(10 * i), Rows: uint32(i)}}})); err != nil {
			t.Fatal(err)
		}
		if _, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte(strconv.Itoa(i) + "\n")}}})); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("L%d %d %d", i, i, 10*i)
		for !bytes.Contains(out, []byte(want)) {
			if !st.Receive() {
				t.Fatalf("ended before %q: %q", want, out)
			}
			out = append(out, st.Msg().GetEvent().GetData().GetPty()...)
		}
	}
	drain(st)
}

func writeRandomFile(t *testing.T, size int) (string, [32]byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data")
	buf := make([]byte, size)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	_, _ = r.Read(buf)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, sha256.Sum256(buf)
}

func TestLargeOutput(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	path, sum := writeRandomFile(t, 50<<20)
	for _, codec := range []string{"proto", "json"} {
		t.Run(codec, func(t *testing.T) {
			c := h.proto
			if codec == "json" {
				c = h.json
			}
			r := h.run(t, c, &pb.StartRequest{Process: sh("cat " + path + "; cat " + path + " >&2")})
			if r.err != nil || r.end.GetStatus() != "exit status 0" {
				t.Fatalf("err %v end %v", r.err, r.end)
			}
			if sha256.Sum256(r.stdout) != sum || sha256.Sum256(r.stderr) != sum {
				t.Fatalf("checksum mismatch: stdout %d bytes, stderr %d bytes", len(r.stdout), len(r.stderr))
			}
			if r.maxChunk > pipeChunk {
				t.Fatalf("chunk of %d bytes", r.maxChunk)
			}
		})
	}
}

func TestConcurrentProcesses(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h.proto
			if i%2 == 1 {
				c = h.json
			}
			st, err := c.Start(testCtx(t), connect.NewRequest(&pb.StartRequest{Process: sh(fmt.Sprintf("echo out%d; echo err%d >&2; exit %d", i, i, i%7))}))
			if err != nil {
				errs <- err
				return
			}
			r := drain(st)
			if string(r.stdout) != fmt.Sprintf("out%d\n", i) || string(r.stderr) != fmt.Sprintf("err%d\n", i) || r.end.GetExitCode() != int32(i%7) {
				errs <- fmt.Errorf("process %d: %q %q %v %v", i, r.stdout, r.stderr, r.end, r.err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestStalledSubscriber: a Connect stream that stops reading is cut after
// the write deadline while the Start stream still gets every byte.
func TestStalledSubscriber(t *testing.T) {
	checkLeaks(t)
	// Long enough that the live reader never stalls that long, even on a
	// loaded machine under -race.
	h := newHarness(t, func(o *Options) { o.WriteDeadline = 3 * time.Second })
	ctx := testCtx(t)
	path, sum := writeRandomFile(t, 64<<20)
	st, pid := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: sh("read go; cat " + path)})
	stalled, err := h.proto.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: pidSel(pid)}))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	if !stalled.Receive() || stalled.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("connect: no start: %v", stalled.Err())
	}
	if _, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("go\n")}}})); err != nil {
		t.Fatal(err)
	}
	r := drain(st)
	if sha256.Sum256(r.stdout) != sum || r.end.GetStatus() != "exit status 0" {
		t.Fatalf("live subscriber: %d bytes, end %v, err %v", len(r.stdout), r.end, r.err)
	}
	// Now read the stalled one: it got part of the output, then the cut
	// (resource_exhausted, or a broken stream once the send deadline
	// also expired), never a clean end.
	s := drain(stalled)
	if s.err == nil || len(s.stdout) >= len(r.stdout) || s.end != nil {
		t.Fatalf("stalled subscriber: %d bytes, end %v, err %v", len(s.stdout), s.end, s.err)
	}
}

// TestVanishedClient: the Start stream going away leaves the process
// running; Connect attaches again.
func TestVanishedClient(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	st, pid := h.startStream(t, ctx, h.json, &pb.StartRequest{Process: sh("i=0; while [ $i -lt 40 ]; do echo $i; i=$((i+1)); sleep 0.05; done")})
	st.Receive()
	cancel()
	st.Close()
	time.Sleep(200 * time.Millisecond)
	if !alive(int(pid)) {
		t.Fatal("process died with its client")
	}
	c, err := h.proto.Connect(testCtx(t), connect.NewRequest(&pb.ConnectRequest{Process: pidSel(pid)}))
	if err != nil {
		t.Fatal(err)
	}
	r := drain(c)
	if r.pid != pid || r.end.GetStatus() != "exit status 0" || !bytes.HasSuffix(r.stdout, []byte("39\n")) {
		t.Fatalf("reconnect: %v %q %v", r.end, r.stdout, r.err)
	}

	// A client that never reads and then disconnects.
	ctx2, cancel2 := context.WithCancel(testCtx(t))
	path, _ := writeRandomFile(t, 16<<20)
	st2, pid2 := h.startStream(t, ctx2, h.proto, &pb.StartRequest{Process: sh("cat " + path + "; sleep 0.5")})
	time.Sleep(200 * time.Millisecond)
	cancel2()
	st2.Close()
	c2, err := h.proto.Connect(testCtx(t), connect.NewRequest(&pb.ConnectRequest{Process: pidSel(pid2)}))
	if err != nil {
		t.Fatal(err)
	}
	if r := drain(c2); r.end.GetStatus() != "exit status 0" {
		t.Fatalf("after vanished reader: %v %v", r.end, r.err)
	}
}

func TestRetention(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, func(o *Options) { o.Retention = 1500 * time.Millisecond })
	ctx := testCtx(t)
	r := h.run(t, h.proto, &pb.StartRequest{Process: sh("exit 4"), Tag: ptr("ret")})
	for _, sel := range []*pb.ProcessSelector{pidSel(r.pid), tagSel("ret")} {
		c, err := h.json.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: sel}))
		if err != nil {
			t.Fatal(err)
		}
		got := drain(c)
		if got.err != nil || got.pid != r.pid || got.end.GetExitCode() != 4 || got.events != 2 {
			t.Fatalf("retained connect: %+v", got)
		}
	}
	// Not live any more: input RPCs say not_found.
	if _, err := h.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(r.pid), Signal: pb.Signal_SIGNAL_SIGKILL})); codeOf(err) != connect.CodeNotFound {
		t.Fatalf("signal to ended: %v", err)
	}
	// A new process with the tag replaces the retained one.
	_, pid2 := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: cfg("sleep", "30"), Tag: ptr("ret")})
	c, err := h.proto.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: tagSel("ret")}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Receive() || c.Msg().GetEvent().GetStart().GetPid() != pid2 {
		t.Fatalf("tag reuse: %v", c.Msg())
	}
	c.Close()
	// After the retention period: not_found.
	eventually(t, "eviction", func() bool {
		c, err := h.proto.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: pidSel(r.pid)}))
		if err != nil {
			return false
		}
		defer c.Close()
		c.Receive()
		return codeOf(c.Err()) == connect.CodeNotFound && c.Err().Error() == fmt.Sprintf("not_found: process with pid %d not found", r.pid)
	})
}

func TestProcessDeadline(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	req := connect.NewRequest(&pb.StartRequest{Process: sh("sleep 100 & sleep 100")})
	req.Header().Set("Connect-Timeout-Ms", "700")
	st, err := h.json.Start(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	// The request deadline and the process deadline expire together; the
	// stream ends with deadline_exceeded or, if the kill's end event wins
	// the race, with that end.
	r := drain(st)
	if r.pid == 0 || (codeOf(r.err) != connect.CodeDeadlineExceeded && r.end.GetStatus() != "signal: killed") {
		t.Fatalf("stream: %v, end %v", r.err, r.end)
	}
	c, err := h.proto.Connect(testCtx(t), connect.NewRequest(&pb.ConnectRequest{Process: pidSel(r.pid)}))
	if err != nil {
		t.Fatal(err)
	}
	if got := drain(c); got.end.GetStatus() != "signal: killed" {
		t.Fatalf("end %v err %v", got.end, got.err)
	}
}

func TestKillProcessGroup(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx := testCtx(t)
	for _, sig := range []pb.Signal{pb.Signal_SIGNAL_SIGKILL, pb.Signal_SIGNAL_SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			st, pid := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: cfg("bash", "-c", "sleep 100 & echo $!; sleep 100")})
			var child int
			for child == 0 && st.Receive() {
				child, _ = strconv.Atoi(strings.TrimSpace(string(st.Msg().GetEvent().GetData().GetStdout())))
			}
			if _, err := h.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: sig})); err != nil {
				t.Fatal(err)
			}
			r := drain(st)
			if !strings.HasPrefix(r.end.GetStatus(), "signal: ") {
				t.Fatalf("end %v", r.end)
			}
			eventually(t, "background child dies", func() bool { return !alive(child) })
		})
	}
	t.Run("escaped descendant holds the pipes", func(t *testing.T) {
		st, pid := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: sh(`setsid sh -c 'echo $$; exec sleep 100' & sleep 100`)})
		var child int
		for child == 0 && st.Receive() {
			child, _ = strconv.Atoi(strings.TrimSpace(string(st.Msg().GetEvent().GetData().GetStdout())))
		}
		t.Cleanup(func() { _ = unix.Kill(child, unix.SIGKILL) })
		if _, err := h.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGTERM})); err != nil {
			t.Fatal(err)
		}
		if r := drain(st); r.end.GetStatus() != "signal: terminated" {
			t.Fatalf("end %v err %v", r.end, r.err)
		}
		if !alive(child) {
			t.Fatal("escaped child should still run")
		}
	})
}

func TestKeepalive(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	for _, v := range []string{"1", "0"} {
		req := connect.NewRequest(&pb.StartRequest{Process: cfg("sleep", "2.5")})
		req.Header().Set("Keepalive-Ping-Interval", v)
		st, err := h.json.Start(testCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		if r := drain(st); r.keepalives < 1 || r.end == nil {
			t.Fatalf("interval %s: %d keepalives, end %v", v, r.keepalives, r.end)
		}
	}
}

func TestBadInput(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, nil)
	ctx := testCtx(t)
	_, pipePID := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: cfg("sleep", "60")})
	_, ptyPID := h.startStream(t, ctx, h.proto, &pb.StartRequest{Process: cfg("sleep", "60"), Pty: &pb.PTY{}})
	empty := &pb.ProcessSelector{}
	stdin := &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}
	ptyIn := &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("x")}}
	resize := &pb.PTY{Size: &pb.PTY_Size{Cols: 1, Rows: 1}}
	startErr := func(msg *pb.StartRequest, hdr ...string) error {
		req := connect.NewRequest(msg)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header().Set(hdr[i], hdr[i+1])
		}
		// No ctx deadline: the client would replace Connect-Timeout-Ms.
		st, err := h.proto.Start(context.Background(), req)
		if err != nil {
			return err
		}
		return drain(st).err
	}
	connectErr := func(sel *pb.ProcessSelector, hdr ...string) error {
		req := connect.NewRequest(&pb.ConnectRequest{Process: sel})
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header().Set(hdr[i], hdr[i+1])
		}
		st, err := h.json.Connect(ctx, req)
		if err != nil {
			return err
		}
		return drain(st).err
	}
	streamInput := func(msgs ...*pb.StreamInputRequest) error {
		si := h.proto.StreamInput(ctx)
		for _, m := range msgs {
			if si.Send(m) != nil {
				break
			}
		}
		_, err := si.CloseAndReceive()
		return err
	}
	siData := &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: stdin}}}
	tests := []struct {
		name string
		err  error
		code connect.Code
		msg  string
	}{
		{"connect empty selector", connectErr(empty), connect.CodeInvalidArgument, "process selector required"},
		{"connect nil selector", connectErr(nil), connect.CodeInvalidArgument, "process selector required"},
		{"connect unknown pid", connectErr(pidSel(999999999)), connect.CodeNotFound, "process with pid 999999999 not found"},
		{"connect unknown tag", connectErr(tagSel("nope")), connect.CodeNotFound, "process with tag nope not found"},
		{"connect bad keepalive", connectErr(pidSel(pipePID), "Keepalive-Ping-Interval", "x"), connect.CodeInvalidArgument, ""},
		{"start bad keepalive", startErr(&pb.StartRequest{Process: cfg("true")}, "Keepalive-Ping-Interval", "1.5"), connect.CodeInvalidArgument, ""},
		{"start bad timeout", startErr(&pb.StartRequest{Process: cfg("true")}, "Connect-Timeout-Ms", "abc"), connect.CodeInvalidArgument, ""},
		{"start no config", startErr(&pb.StartRequest{}), connect.CodeInvalidArgument, "process config required"},
		{"start missing cwd", startErr(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: ptr("/nonexistent/envd")}}), connect.CodeInvalidArgument, "cwd '/nonexistent/envd' does not exist"},
		{"start tilde user cwd", startErr(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Cwd: ptr("~bob/x")}}), connect.CodeInvalidArgument, ""},
		{"start unknown user", startErr(&pb.StartRequest{Process: cfg("true")}, "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("envdtp-nobody:"))), connect.CodeUnauthenticated, "invalid username: 'envdtp-nobody'"},
		{"signal unspecified", func() error {
			_, err := h.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pipePID)}))
			return err
		}(), connect.CodeInvalidArgument, "invalid signal: SIGNAL_UNSPECIFIED"},
		{"signal unknown value", func() error {
			_, err := h.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pipePID), Signal: pb.Signal(2)}))
			return err
		}(), connect.CodeInvalidArgument, ""},
		{"signal empty selector", func() error {
			_, err := h.json.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: empty, Signal: pb.Signal_SIGNAL_SIGKILL}))
			return err
		}(), connect.CodeInvalidArgument, "process selector required"},
		{"signal unknown pid", func() error {
			_, err := h.json.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(999999999), Signal: pb.Signal_SIGNAL_SIGKILL}))
			return err
		}(), connect.CodeNotFound, "process with pid 999999999 not found"},
		{"input empty", func() error {
			_, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pipePID), Input: &pb.ProcessInput{}}))
			return err
		}(), connect.CodeInvalidArgument, ""},
		{"input empty selector", func() error {
			_, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Input: stdin}))
			return err
		}(), connect.CodeInvalidArgument, "process selector required"},
		{"stdin to pty", func() error {
			_, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(ptyPID), Input: stdin}))
			return err
		}(), connect.CodeInternal, "tty assigned to process"},
		{"pty to pipe", func() error {
			_, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pipePID), Input: ptyIn}))
			return err
		}(), connect.CodeInternal, "tty not assigned"},
		{"resize pipe", func() error {
			_, err := h.proto.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pipePID), Pty: resize}))
			return err
		}(), connect.CodeInternal, "error resizing tty: tty not assigned to process"},
		{"update empty selector", func() error {
			_, err := h.proto.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Pty: resize}))
			return err
		}(), connect.CodeInvalidArgument, "process selector required"},
		{"close stdin pty", func() error {
			_, err := h.proto.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(ptyPID)}))
			return err
		}(), connect.CodeUnknown, "cannot close stdin for PTY process"},
		{"close stdin unknown tag", func() error {
			_, err := h.proto.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: tagSel("nope")}))
			return err
		}(), connect.CodeNotFound, "process with tag nope not found"},
		{"stream input data before start", streamInput(siData), connect.CodeFailedPrecondition, "no start event received"},
		{"stream input unknown pid", streamInput(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: pidSel(999999999)}}}), connect.CodeNotFound, "process with pid 999999999 not found"},
		{"stream input empty selector", streamInput(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{}}}), connect.CodeInvalidArgument, "process selector required"},
		{"stream input empty event", streamInput(&pb.StreamInputRequest{}), connect.CodeInvalidArgument, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if codeOf(tc.err) != tc.code || !strings.Contains(fmt.Sprint(tc.err), tc.msg) {
				t.Fatalf("got %v, want %v %q", tc.err, tc.code, tc.msg)
			}
		})
	}
	// Update without pty is a no-op; pids listed are still the two.
	if _, err := h.proto.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pipePID)})); err != nil {
		t.Fatal(err)
	}
	resp, _ := h.proto.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	var pids []uint32
	for _, p := range resp.Msg.GetProcesses() {
		pids = append(pids, p.Pid)
	}
	slices.Sort(pids)
	if want := []uint32{min(pipePID, ptyPID), max(pipePID, ptyPID)}; !slices.Equal(pids, want) {
		t.Fatalf("list %v want %v", pids, want)
	}
}

// TestNeverReadingClient: a client that sends Start and then neither reads
// nor closes its connection. Its handler must be freed (write deadline)
// and the process must finish normally, leaving no goroutine behind.
func TestNeverReadingClient(t *testing.T) {
	checkLeaks(t)
	h := newHarness(t, func(o *Options) { o.WriteDeadline = 500 * time.Millisecond })
	path, sum := writeRandomFile(t, 32<<20)
	body, err := proto.Marshal(&pb.StartRequest{Process: sh("read go; cat " + path), Tag: ptr("nr")})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	env := append([]byte{0, 0, 0, 0, 0}, body...)
	binary.BigEndian.PutUint32(env[1:5], uint32(len(body)))
	fmt.Fprintf(conn, "POST /process.Process/Start HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+proto\r\nConnect-Protocol-Version: 1\r\nContent-Length: %d\r\n\r\n", len(env))
	if _, err := conn.Write(env); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	var pid uint32
	eventually(t, "process listed", func() bool {
		resp, err := h.proto.List(ctx, connect.NewRequest(&pb.ListRequest{}))
		if err == nil && len(resp.Msg.Processes) == 1 {
			pid = resp.Msg.Processes[0].Pid
		}
		return pid != 0
	})
	live, err := h.proto.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: tagSel("nr")}))
	if err != nil {
		t.Fatal(err)
	}
	if !live.Receive() {
		t.Fatal(live.Err())
	}
	if _, err := h.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("go\n")}}})); err != nil {
		t.Fatal(err)
	}
	r := drain(live)
	if sha256.Sum256(r.stdout) != sum || r.end.GetStatus() != "exit status 0" {
		t.Fatalf("other subscriber: %d bytes, end %v, err %v", len(r.stdout), r.end, r.err)
	}
	// checkLeaks (at cleanup) now requires the stuck handler to be gone
	// while conn is still open: wait for it here, before conn closes.
	eventually(t, "stuck handler freed", func() bool { return handlerGone(t) })
}

// handlerGone reports whether no goroutine is inside Service.stream.
func handlerGone(t *testing.T) bool {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return !bytes.Contains(buf[:n], []byte("process.(*Service).stream"))
}
