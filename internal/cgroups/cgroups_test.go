package cgroups

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cgroup2Mount returns a cgroup2 mount point: /sys/fs/cgroup on a unified
// host, the hybrid layout's /sys/fs/cgroup/unified, any other cgroup2 mount
// in mountinfo, or a fresh mount made for the test.
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return "/sys/fs/cgroup"
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if f := strings.Fields(pre); ok && strings.HasPrefix(post, "cgroup2 ") && len(f) >= 5 {
			return f[4]
		}
	}
	dir := t.TempDir()
	if err := unix.Mount("none", dir, "cgroup2", 0, ""); err != nil {
		t.Fatalf("no cgroup2 mount and cannot mount one: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// testRoot creates a private sub-hierarchy and removes it (killing what
// runs in it) at cleanup.
func testRoot(t *testing.T) string {
	t.Helper()
	root := filepath.Join(cgroup2Mount(t), fmt.Sprintf("envd-cgtest-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, root) })
	return root
}

func removeTree(t *testing.T, root string) {
	writeFile(filepath.Join(root, "cgroup.kill"), "1")
	var dirs []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		writeFile(filepath.Join(dirs[i], "cgroup.freeze"), "0")
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := os.Remove(dirs[i])
			if err == nil || os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("remove %s: %v", dirs[i], err)
				break
			}
			time.Sleep(10 * time.Millisecond) // killed tasks leave asynchronously
		}
	}
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestManager(t *testing.T, o Options) (*V2, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	o.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.MemTotal == 0 {
		o.MemTotal = 1 << 30
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, lb
}

// spawn starts sleep in the group for kind (or envd's own for system).
func spawn(t *testing.T, m Manager, kind Kind) int {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if fd, ok := m.FD(kind); ok {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("spawn into %v: %v", kind, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// spawnIn starts sleep in an arbitrary cgroup directory.
func spawnIn(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	t.Fatalf("no cgroup2 line for %d: %s", pid, b)
	return ""
}

func TestMemoryLimit(t *testing.T) {
	tests := []struct{ total, want uint64 }{
		{256 << 20, 224 << 20},     // T/8 = 32 MiB
		{1 << 30, 1<<30 - 128<<20}, // T/8 = 128 MiB exactly
		{4 << 30, 4<<30 - 128<<20}, // capped at 128 MiB
		{0, 0},
	}
	for _, tc := range tests {
		if got := MemoryLimit(tc.total); got != tc.want {
			t.Errorf("MemoryLimit(%d) = %d, want %d", tc.total, got, tc.want)
		}
	}
}

func TestNewNotCgroup2(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(Options{Root: dir}); err == nil || !strings.Contains(err.Error(), "not a cgroup2") {
		t.Fatalf("New on tmpfs: %v", err)
	}
	lb := &logBuf{}
	g := Open(Options{Root: dir, Logger: slog.New(slog.NewTextHandler(lb, nil))})
	if _, ok := g.(Noop); !ok {
		t.Fatalf("Open on tmpfs gave %T", g)
	}
	if n := strings.Count(lb.String(), "cgroups unavailable"); n != 1 {
		t.Errorf("fallback logged %d times:\n%s", n, lb)
	}
	if _, err := New(Options{Root: filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("New on a missing root succeeded")
	}
}

func TestGroupsAndProperties(t *testing.T) {
	root := testRoot(t)
	m, logs := newTestManager(t, Options{Root: root, MemTotal: 2 << 30})
	limit := u64(MemoryLimit(2 << 30))
	tests := []struct {
		kind  Kind
		dir   string
		props map[string]string
	}{
		{KindPTY, "ptys", map[string]string{"cpu.weight": "200", "io.weight": "default 50", "memory.high": limit, "memory.max": limit}},
		{KindUser, "user", map[string]string{"cpu.weight": "50", "io.weight": "default 10", "memory.high": limit, "memory.max": limit}},
		{KindForwarder, "socats", map[string]string{"cpu.weight": "150", "io.weight": "default 50", "memory.min": "5242880", "memory.low": "8388608"}},
	}
	for _, tc := range tests {
		t.Run(tc.dir, func(t *testing.T) {
			dir := filepath.Join(root, tc.dir)
			if d, _ := m.Dir(tc.kind); d != dir {
				t.Errorf("Dir = %s, want %s", d, dir)
			}
			if _, ok := m.FD(tc.kind); !ok {
				t.Fatal("no fd")
			}
			for name, want := range tc.props {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if os.IsNotExist(err) {
					// Controller not available here: the skip must be logged.
					if !strings.Contains(logs.String(), name+"="+want) {
						t.Errorf("%s absent but its skip is not logged:\n%s", name, logs)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.TrimSpace(string(b)); got != want && !strings.HasPrefix(got, want+"\n") {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		})
	}
	if fd, ok := m.FD(KindSystem); ok || fd != -1 {
		t.Errorf("FD(system) = %d, %v", fd, ok)
	}
	// Creating again over existing groups works (envd restart).
	m2, _ := newTestManager(t, Options{Root: root})
	m2.Close()
	if _, ok := m2.FD(KindUser); ok {
		t.Error("FD after Close")
	}
}

func TestPlacement(t *testing.T) {
	root := testRoot(t)
	m, _ := newTestManager(t, Options{Root: root})
	mount := cgroup2Mount(t)
	rel := strings.TrimPrefix(root, mount)
	self := cgroupOf(t, os.Getpid())
	tests := []struct {
		kind Kind
		want string
	}{
		{KindPTY, rel + "/ptys"},
		{KindUser, rel + "/user"},
		{KindForwarder, rel + "/socats"},
		{KindSystem, self},
	}
	for _, tc := range tests {
		if got := cgroupOf(t, spawn(t, m, tc.kind)); got != tc.want {
			t.Errorf("kind %v: process in %q, want %q", tc.kind, got, tc.want)
		}
	}
}

func TestOwnCgroup(t *testing.T) {
	got, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	procs, err := os.ReadFile(filepath.Join(got, "cgroup.procs"))
	if err != nil {
		t.Fatalf("own cgroup %s: %v", got, err)
	}
	if !bytes.Contains(append([]byte("\n"), procs...), fmt.Appendf(nil, "\n%d\n", os.Getpid())) {
		t.Errorf("pid %d not in %s/cgroup.procs", os.Getpid(), got)
	}
}

func frozen(t *testing.T, dir string) bool {
	t.Helper()
	f, err := readFrozen(dir)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestFreezeLegacy(t *testing.T) {
	root := testRoot(t)
	m, _ := newTestManager(t, Options{Root: root, WatchdogDelay: time.Hour})
	spawn(t, m, KindUser)
	spawn(t, m, KindPTY)
	spawn(t, m, KindForwarder)
	ctx := context.Background()

	if _, ok := m.Audit(); ok {
		t.Error("audit reports a freeze before any")
	}
	res, err := m.Freeze(ctx, FreezeOptions{Mode: FreezeLegacy, MaxWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want := FreezeResult{Mode: FreezeLegacy, Requested: 2, Frozen: 2}
	res.SweepMs, res.WaitMs = 0, 0
	if res != want {
		t.Errorf("freeze result %+v, want %+v", res, want)
	}
	user, _ := m.Dir(KindUser)
	ptys, _ := m.Dir(KindPTY)
	socats, _ := m.Dir(KindForwarder)
	if !frozen(t, user) || !frozen(t, ptys) || frozen(t, socats) {
		t.Errorf("frozen: user %v ptys %v socats %v", frozen(t, user), frozen(t, ptys), frozen(t, socats))
	}
	a, ok := m.Audit()
	if !ok || a.Frozen != 2 || a.Escaped != 0 || a.Violations != 0 || a.Visited != 3 {
		t.Errorf("audit %+v %v", a, ok)
	}
	th, err := m.Thaw()
	if err != nil {
		t.Fatal(err)
	}
	if th.Thawed != 2 || th.PreFrozen != 0 {
		t.Errorf("thaw %+v", th)
	}
	waitThawed(t, user)
	waitThawed(t, ptys)
	if _, ok := m.Audit(); ok {
		t.Error("audit reports a freeze after thaw")
	}

	// Without a wait budget: issued, not observed.
	res, err = m.Freeze(ctx, FreezeOptions{})
	if err != nil || res.Requested != 2 || res.Frozen+res.NotFrozen != 0 {
		t.Errorf("no-wait freeze %+v %v", res, err)
	}
	if _, err := m.Thaw(); err != nil {
		t.Fatal(err)
	}
}

func waitThawed(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for readFreeze(dir) != 0 || frozen(t, dir) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still frozen", dir)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFreezePreFrozen(t *testing.T) {
	root := testRoot(t)
	m, _ := newTestManager(t, Options{Root: root, WatchdogDelay: time.Hour})
	user, _ := m.Dir(KindUser)
	ptys, _ := m.Dir(KindPTY)
	nested := filepath.Join(user, "docker")
	if err := os.Mkdir(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	// The guest froze ptys and a container inside user itself.
	for _, d := range []string{ptys, nested} {
		if err := writeFile(filepath.Join(d, "cgroup.freeze"), "1"); err != nil {
			t.Fatal(err)
		}
	}
	res, err := m.Freeze(context.Background(), FreezeOptions{MaxWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.PreFrozen != 1 || res.Requested != 1 || res.Frozen != 1 {
		t.Errorf("freeze %+v", res)
	}
	// A second freeze before any thaw must not take envd's own freeze for
	// the guest's.
	res, err = m.Freeze(context.Background(), FreezeOptions{MaxWait: 30 * time.Second})
	if err != nil || res.PreFrozen != 1 || res.Requested != 1 {
		t.Errorf("second freeze %+v %v", res, err)
	}
	th, err := m.Thaw()
	if err != nil {
		t.Fatal(err)
	}
	if th.Thawed != 1 || th.PreFrozen != 2 {
		t.Errorf("thaw %+v", th)
	}
	if readFreeze(user) != 0 || readFreeze(ptys) != 1 || readFreeze(nested) != 1 {
		t.Errorf("after thaw: user %d ptys %d nested %d", readFreeze(user), readFreeze(ptys), readFreeze(nested))
	}
}

func TestFreezeHierarchy(t *testing.T) {
	root := testRoot(t)
	for _, d := range []string{"svc/envd", "svc/other", "init.scope", "system.slice/systemd-journald.service", "system.slice/foo.service", "system.slice/foo.service/sub"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self := filepath.Join(root, "svc/envd")
	m, _ := newTestManager(t, Options{Root: root, SelfCgroup: self, WatchdogDelay: time.Hour})
	for _, d := range []string{"svc/envd", "svc/other", "system.slice/foo.service/sub", "init.scope", "user"} {
		spawnIn(t, filepath.Join(root, d))
	}
	res, err := m.Freeze(context.Background(), FreezeOptions{Mode: FreezeHierarchy, MaxWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Visited: init.scope ptys socats svc svc/envd svc/other system.slice
	// journald foo.service user.
	want := FreezeResult{Mode: FreezeHierarchy, Visited: 10, Allowlisted: 3, Requested: 4, Frozen: 4}
	res.SweepMs, res.WaitMs = 0, 0
	if res != want {
		t.Errorf("freeze %+v, want %+v", res, want)
	}
	for d, want := range map[string]int{
		"ptys": 1, "user": 1, "svc/other": 1, "system.slice/foo.service": 1,
		"svc": 0, "svc/envd": 0, "socats": 0, "init.scope": 0, "system.slice": 0, "system.slice/systemd-journald.service": 0,
	} {
		if got := readFreeze(filepath.Join(root, d)); got != want {
			t.Errorf("%s: cgroup.freeze %d, want %d", d, got, want)
		}
	}
	a, ok := m.Audit()
	if !ok || a.Escaped != 0 || a.Violations != 0 {
		t.Errorf("audit %+v", a)
	}
	// A violation: the guest freezes envd's own group.
	writeFile(filepath.Join(self, "cgroup.freeze"), "1")
	deadline := time.Now().Add(30 * time.Second)
	for a, _ = m.Audit(); a.Violations != 1 && time.Now().Before(deadline); a, _ = m.Audit() {
		time.Sleep(5 * time.Millisecond)
	}
	if a.Violations != 1 {
		t.Errorf("audit after freezing envd's group: %+v", a)
	}
	if th, err := m.Thaw(); err != nil || th.Thawed != 5 {
		t.Errorf("thaw %+v %v", th, err)
	}

	// Truncation.
	res, err = m.Freeze(context.Background(), FreezeOptions{Mode: FreezeHierarchy, MaxCgroups: 2})
	if err != nil || !res.Truncated || res.Visited != 2 || res.Requested != 1 {
		t.Errorf("truncated freeze %+v %v", res, err)
	}
	m.Thaw()

	// Without knowing its own cgroup, the manager falls back to legacy.
	m.self = ""
	res, err = m.Freeze(context.Background(), FreezeOptions{Mode: FreezeHierarchy})
	if err != nil || res.Mode != FreezeLegacy || res.Requested != 2 {
		t.Errorf("fallback freeze %+v %v", res, err)
	}
	m.Thaw()
}

func TestFreezeWatchdog(t *testing.T) {
	root := testRoot(t)
	m, logs := newTestManager(t, Options{Root: root, WatchdogDelay: 200 * time.Millisecond})
	spawn(t, m, KindUser)
	if _, err := m.Freeze(context.Background(), FreezeOptions{MaxWait: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	user, _ := m.Dir(KindUser)
	waitThawed(t, user)
	if !strings.Contains(logs.String(), "watchdog") {
		t.Errorf("watchdog thaw not logged:\n%s", logs)
	}
}

func TestFreezeLockAndCancel(t *testing.T) {
	root := testRoot(t)
	m, _ := newTestManager(t, Options{Root: root, WatchdogDelay: time.Hour})
	m.lock <- struct{}{} // someone else holds the freeze lock
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.Freeze(ctx, FreezeOptions{}); err == nil {
		t.Fatal("freeze without the lock succeeded")
	}
	thawed := make(chan struct{})
	go func() { m.Thaw(); close(thawed) }()
	select {
	case <-thawed:
		t.Fatal("thaw ran while the lock was held")
	case <-time.After(50 * time.Millisecond):
	}
	<-m.lock
	<-thawed
	user, _ := m.Dir(KindUser)
	if readFreeze(user) != 0 {
		t.Error("user frozen by a freeze that never got the lock")
	}
}

func TestNoop(t *testing.T) {
	var g Groups = Noop{}
	if _, ok := g.FD(KindUser); ok {
		t.Error("Noop FD ok")
	}
	res, err := g.Freeze(context.Background(), FreezeOptions{Mode: FreezeHierarchy, MaxWait: time.Second})
	if err != nil || res != (FreezeResult{Mode: FreezeLegacy, Unobservable: 2}) {
		t.Errorf("Noop freeze %+v %v", res, err)
	}
	if _, ok := g.Audit(); ok {
		t.Error("Noop audit ok")
	}
	if ParseFreezeMode("hierarchy") != FreezeHierarchy || ParseFreezeMode("bogus") != FreezeLegacy {
		t.Error("ParseFreezeMode")
	}
}
