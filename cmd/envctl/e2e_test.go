package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// keysOf decodes one JSON object and returns its sorted keys.
func keysOf(t *testing.T, s string) []string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, s)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func hasKeys(t *testing.T, what, s string, want ...string) {
	t.Helper()
	got := strings.Join(keysOf(t, s), ",")
	for _, k := range want {
		if !strings.Contains(","+got+",", ","+k+",") {
			t.Errorf("%s JSON keys %s lack %q", what, got, k)
		}
	}
}

func TestJSONShapes(t *testing.T) {
	addr := startEnvd(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f.txt"), []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	entryKeys := []string{"name", "type", "path", "size", "mode", "permissions", "owner", "group", "modifiedTime"}

	hasKeys(t, "health", ok(t, addr, "--json", "health"), "version")
	hasKeys(t, "metrics", ok(t, addr, "--json", "metrics"),
		"ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache", "mem_total_mib", "mem_used_mib", "disk_used", "disk_total")
	hasKeys(t, "envs", ok(t, addr, "--json", "envs"), "E2B_SANDBOX")
	hasKeys(t, "stat", ok(t, addr, "--json", "stat", filepath.Join(dir, "f.txt")), entryKeys...)
	hasKeys(t, "mkdir", ok(t, addr, "--json", "mkdir", filepath.Join(dir, "d")), entryKeys...)
	hasKeys(t, "exec", ok(t, addr, "--json", "exec", "--", "echo", "hi"), "pid", "exitCode", "exited", "status", "stdout", "stderr")

	var ex struct {
		ExitCode int    `json:"exitCode"`
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
	}
	r := envctl(t, nil, "--addr", addr, "--json", "exec", "--", "/bin/sh", "-c", "echo a; echo b >&2; exit 5")
	if err := json.Unmarshal([]byte(r.stdout), &ex); err != nil || r.code != 5 || ex.ExitCode != 5 || ex.Stdout != "a\n" || ex.Stderr != "b\n" {
		t.Errorf("exec --json = %+v (exit %d, %v)", ex, r.code, err)
	}

	var entries []map[string]any
	if err := json.Unmarshal([]byte(ok(t, addr, "--json", "ls", dir)), &entries); err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0]["name"] != "d" || entries[0]["type"] != "dir" || entries[1]["name"] != "f.txt" || entries[1]["size"] != 5.0 {
		t.Errorf("ls --json = %v", entries)
	}
	var st map[string]any
	json.Unmarshal([]byte(ok(t, addr, "--json", "stat", filepath.Join(dir, "f.txt"))), &st)
	if st["type"] != "file" || st["permissions"] != "-rw-r--r--" || st["mode"] != float64(0o644) {
		t.Errorf("stat --json = %v", st)
	}
	var ps []map[string]any
	if err := json.Unmarshal([]byte(ok(t, addr, "--json", "ps")), &ps); err != nil {
		t.Errorf("ps --json: %v", err)
	}

	// Text output of the same commands, briefly.
	if out := ok(t, addr, "ls", dir); out != "d/\nf.txt\n" {
		t.Errorf("ls = %q", out)
	}
	if out := ok(t, addr, "ls", "-l", dir); !strings.Contains(out, "-rw-r--r--") || !strings.Contains(out, "root") {
		t.Errorf("ls -l = %q", out)
	}
	if out := ok(t, addr, "stat", filepath.Join(dir, "f.txt")); !strings.Contains(out, "size") || !strings.Contains(out, "5") {
		t.Errorf("stat = %q", out)
	}
	ok(t, addr, "mv", filepath.Join(dir, "f.txt"), filepath.Join(dir, "d"))
	if _, err := os.Stat(filepath.Join(dir, "d", "f.txt")); err != nil {
		t.Errorf("mv into a directory: %v", err)
	}
	ok(t, addr, "rm", filepath.Join(dir, "d"))
	if _, err := os.Stat(filepath.Join(dir, "d")); !os.IsNotExist(err) {
		t.Errorf("rm: %v", err)
	}
	if out := ok(t, addr, "metrics"); !strings.Contains(out, "cpu") || !strings.Contains(out, "disk") {
		t.Errorf("metrics = %q", out)
	}
	if out := ok(t, addr, "snapshot", "prepare"); out != "" {
		t.Errorf("snapshot prepare printed %q", out)
	}
	if out := ok(t, addr, "health"); !strings.HasPrefix(out, "ok (envd ") {
		t.Errorf("health after prepare = %q", out)
	}
}

// treeSums maps every regular file under root (relative path) to its
// SHA-256, and every directory to "dir".
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			sums[rel] = "dir"
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h := sha256.Sum256(b)
		sums[rel] = hex.EncodeToString(h[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

func TestCpRoundTrip(t *testing.T) {
	addr := startEnvd(t)
	src := filepath.Join(t.TempDir(), "tree")
	files := map[string]int{
		"a.bin":               1<<20 + 3,
		"empty":               0,
		"sub/b.txt":           100,
		"sub/deeper/c.bin":    256 << 10,
		"sub/deeper/d e.txt":  7,
		"other/only-dir/.dot": 1,
	}
	for rel, size := range files {
		p := filepath.Join(src, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, size)
		rand.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(src, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := treeSums(t, src)

	// Upload: "remote" is this machine, under a guest path of its own.
	remoteRoot := t.TempDir()
	remote := filepath.Join(remoteRoot, "up")
	if r := envctl(t, nil, "--addr", addr, "cp", src, "remote:"+remote); r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("cp upload: %+v (quiet off a terminal)", r)
	}
	if got := treeSums(t, remote); !equalSums(got, want) {
		t.Fatalf("uploaded tree differs:\n got %v\nwant %v", got, want)
	}

	// Download into an existing directory: lands under the source's name.
	back := t.TempDir()
	if r := envctl(t, nil, "--addr", addr, "cp", "remote:"+remote, back); r.code != 0 {
		t.Fatalf("cp download: %+v", r)
	}
	if got := treeSums(t, filepath.Join(back, "up")); !equalSums(got, want) {
		t.Fatalf("downloaded tree differs:\n got %v\nwant %v", got, want)
	}

	// Single files, both directions, into a directory and onto a name.
	ok(t, addr, "cp", filepath.Join(src, "a.bin"), "remote:"+remoteRoot+"/")
	ok(t, addr, "cp", "remote:"+filepath.Join(remoteRoot, "a.bin"), filepath.Join(back, "renamed.bin"))
	if got := treeSums(t, back)["renamed.bin"]; got != want["a.bin"] {
		t.Errorf("single-file round trip: %s, want %s", got, want["a.bin"])
	}
	if r := envctl(t, nil, "--addr", addr, "cp", "remote:"+filepath.Join(remoteRoot, "missing"), back); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("cp of a missing remote file: %+v", r)
	}
}

func equalSums(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// tmux drives envctl shell on a real terminal.
type tmux struct {
	t      *testing.T
	socket string
}

func (m *tmux) run(args ...string) string {
	m.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", m.socket, "-f", "/dev/null"}, args...)...).CombinedOutput()
	if err != nil {
		m.t.Fatalf("tmux %v: %v %s", args, err, out)
	}
	return string(out)
}

func (m *tmux) screen() string { return m.run("capture-pane", "-p", "-J", "-t", "s") }

func (m *tmux) send(keys ...string) { m.run(append([]string{"send-keys", "-t", "s"}, keys...)...) }

// waitScreen waits until the pane shows s (bounded), and returns the screen.
func (m *tmux) waitScreen(s string) string {
	m.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		scr := m.screen()
		if strings.Contains(scr, s) {
			return scr
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("screen never showed %q:\n%s", s, scr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestShellInTmux(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatalf("tmux is needed (scripts/setup installs it): %v", err)
	}
	addr := startEnvd(t)
	b := make([]byte, 4)
	rand.Read(b)
	m := &tmux{t: t, socket: "envdtc-" + hex.EncodeToString(b)}
	// A plain local sh as the pane's program: it leaves the terminal alone,
	// so what stty reports after envctl exits is what envctl left behind.
	m.run("new-session", "-d", "-s", "s", "-x", "80", "-y", "24",
		"env -i PATH=/usr/bin:/bin TERM=xterm-256color PS1='local$ ' /bin/sh")
	t.Cleanup(func() { exec.Command("tmux", "-L", m.socket, "kill-server").Run() })
	m.waitScreen("local$")

	m.send("clear; "+envctlBin+" --addr "+addr+" shell -e 'PS1=envd\\164c$ ' -- /bin/bash --norc --noprofile -i", "Enter")
	m.waitScreen("envdtc$")

	m.send("echo hello-$((6*7))", "Enter")
	m.waitScreen("hello-42")
	m.send("stty size", "Enter")
	m.waitScreen("24 80")

	// Resize the window: tmux changes the pane's size, envctl gets
	// SIGWINCH and resizes the remote PTY.
	m.run("resize-window", "-t", "s", "-x", "100", "-y", "30")
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(m.screen(), "30 100") {
		if time.Now().After(deadline) {
			t.Fatalf("remote never saw the resize:\n%s", m.screen())
		}
		m.send("clear; stty size", "Enter")
		time.Sleep(300 * time.Millisecond)
	}

	// Ctrl-C reaches the remote foreground job, not envctl.
	m.send("clear; sleep 100", "Enter")
	time.Sleep(300 * time.Millisecond)
	m.send("C-c")
	m.send("echo after-$((1+1))int", "Enter")
	m.waitScreen("after-2int")

	m.send("exit 3", "Enter")
	m.waitScreen("local$")
	m.send("echo rc=$?", "Enter")
	m.waitScreen("rc=3")
	m.send("clear; stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)' | sort | tr '\\n' , ; echo EN$((0))D", "Enter")
	scr := m.waitScreen("EN0D")
	if !strings.Contains(scr, "echo,icanon,EN0D") {
		t.Fatalf("terminal not restored after envctl exit:\n%s", scr)
	}
}
