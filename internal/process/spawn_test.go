package process

import (
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/users"
)

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"prog": 0o755, "noexec": 0o644} {
		if err := os.WriteFile(dir+"/"+name, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(dir+"/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		cmd, path, cwd, want string
		ok                   bool
	}{
		{"prog", dir, "/", dir + "/prog", true},
		{"prog", "/nonexistent:" + dir, "/", dir + "/prog", true},
		{"noexec", dir, "/", "", false},
		{"sub", dir, "/", "", false},
		{"./prog", "", dir, dir + "/prog", true},
		{"prog", ":" + "/nonexistent", dir, dir + "/prog", true}, // empty PATH entry = cwd, as in sh
		{"prog", "", dir, "", false},                             // empty PATH: left to the shell
		{dir + "/prog", "/nonexistent", "/", dir + "/prog", true},
		{"", dir, "/", "", false},
		{"envd-missing", "/usr/bin:/bin", "/", "", false},
	}
	for _, tc := range tests {
		got, ok := lookPath(tc.cmd, tc.path, tc.cwd)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("lookPath(%q, %q, %q) = %q, %v; want %q, %v", tc.cmd, tc.path, tc.cwd, got, ok, tc.want, tc.ok)
		}
	}
}

func TestBuildEnv(t *testing.T) {
	t.Setenv("PATH", "/p")
	u := &users.User{Name: "u", Home: "/h", Shell: "/bin/zsh"}
	got := envList(buildEnv(u, map[string]string{"D": "1", "HOME": "/override-by-default"}, map[string]string{"D": "2", "R": "3"}))
	want := []string{"D=2", "HOME=/override-by-default", "LOGNAME=u", "PATH=/p", "R=3", "SHELL=/bin/zsh", "USER=u"}
	if !slices.Equal(got, want) {
		t.Fatalf("env %v, want %v", got, want)
	}
	u.Shell = ""
	if _, ok := buildEnv(u, nil, nil)["SHELL"]; ok {
		t.Fatal("empty passwd shell must not set SHELL")
	}
}

// TestDirectMatchesWrapper: both spawn paths leave the child with the same
// oom_score_adj, nice, I/O priority, groups and environment, and envd's own
// oom_score_adj is unchanged afterwards.
func TestDirectMatchesWrapper(t *testing.T) {
	reaper := pid1.NewReaper(false)
	t.Cleanup(reaper.Close)
	u, err := users.Lookup("root")
	if err != nil {
		t.Fatal(err)
	}
	before, err := readOOMScore()
	if err != nil {
		t.Fatal(err)
	}
	probe := func(shell bool) string {
		sp := newSpawner(shell)
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		spec := &spawnSpec{
			cmd:   "sh",
			args:  []string{"-c", `cat /proc/self/oom_score_adj; ionice -p $$; nice; id -G; env | sort`},
			env:   buildEnv(u, map[string]string{"X": "1"}, nil),
			dir:   "/",
			files: []uintptr{0, w.Fd(), w.Fd()},
			sys:   &syscall.SysProcAttr{Credential: credential(u), Setpgid: true},
		}
		_, ws, err := reaper.Start(func() (int, error) { return sp.start(spec) })
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		out, _ := readAll(r)
		<-ws
		return out
	}
	direct, wrapped := probe(false), probe(true)
	if direct != wrapped {
		t.Fatalf("direct:\n%s\nwrapper:\n%s", direct, wrapped)
	}
	if !strings.HasPrefix(direct, "100\nbest-effort: prio 4\n0\n") {
		t.Fatalf("child state:\n%s", direct)
	}
	if after, _ := readOOMScore(); after != before {
		t.Fatalf("envd oom_score_adj %d → %d", before, after)
	}
}

func readAll(f *os.File) (string, error) {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String(), nil
		}
	}
}

// BenchmarkSpawn compares the spawn paths without RPC: fork+exec+reap of
// /bin/true raw, direct and through the wrapper, interleaved.
func BenchmarkSpawn(b *testing.B) {
	reaper := pid1.NewReaper(false)
	b.Cleanup(reaper.Close)
	u, _ := users.Lookup("root")
	direct, shell := newSpawner(false), newSpawner(true)
	spec := func() *spawnSpec {
		return &spawnSpec{cmd: "/bin/true", env: buildEnv(u, nil, nil), dir: "/", files: []uintptr{0, 1, 2},
			sys: &syscall.SysProcAttr{Credential: credential(u), Setpgid: true}}
	}
	run := func(f func() (int, error)) time.Duration {
		t0 := time.Now()
		_, ws, err := reaper.Start(f)
		if err != nil {
			b.Fatal(err)
		}
		<-ws
		return time.Since(t0)
	}
	var raw, dir, sh, osexec []time.Duration
	for b.Loop() {
		s := spec()
		raw = append(raw, run(func() (int, error) {
			return syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{Dir: "/", Env: envList(s.env), Files: s.files, Sys: s.sys})
		}))
		dir = append(dir, run(func() (int, error) { return direct.start(spec()) }))
		sh = append(sh, run(func() (int, error) { return shell.start(spec()) }))
		t0 := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		osexec = append(osexec, time.Since(t0))
	}
	p50 := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds()) / 1000
	}
	b.ReportMetric(p50(osexec), "osexec-p50-ms")
	b.ReportMetric(p50(raw), "forkexec-p50-ms")
	b.ReportMetric(p50(dir), "direct-p50-ms")
	b.ReportMetric(p50(sh), "shell-p50-ms")
	b.ReportMetric(0, "ns/op")
}

// TestIgnoredSignalsReset: a signal envd inherited as ignored reaches the
// children with its default disposition. Run in a child test binary that
// starts with SIGINT and SIGPIPE ignored.
func TestIgnoredSignalsReset(t *testing.T) {
	if os.Getenv("ENVD_TEST_IGNORED_CHILD") == "1" {
		if !signal.Ignored(syscall.SIGINT) {
			t.Fatal("child did not start with SIGINT ignored")
		}
		h := newHarness(t, nil)
		r := h.run(t, h.proto, &pb.StartRequest{Process: sh("grep SigIgn /proc/self/status")})
		mask, err := strconv.ParseUint(strings.Fields(string(r.stdout))[1], 16, 64)
		if err != nil {
			t.Fatalf("parse %q: %v", r.stdout, err)
		}
		if mask&(1<<(syscall.SIGINT-1)) != 0 || mask&(1<<(syscall.SIGPIPE-1)) != 0 {
			t.Fatalf("child SigIgn %x", mask)
		}
		return
	}
	// A shell launching us in the background with SIGINT/SIGPIPE ignored.
	cmd := exec.Command("/bin/sh", "-c", `trap "" INT PIPE; exec "$0" -test.run '^TestIgnoredSignalsReset$' -test.count=1`, os.Args[0])
	cmd.Env = append(os.Environ(), "ENVD_TEST_IGNORED_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
