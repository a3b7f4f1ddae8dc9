package pid1

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func startSh(t *testing.T, r *Reaper, script string) (int, <-chan unix.WaitStatus) {
	t.Helper()
	pid, ch, err := r.Start(func() (int, error) {
		p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", script}, &os.ProcAttr{Files: []*os.File{nil, nil, os.Stderr}})
		if err != nil {
			return 0, err
		}
		return p.Pid, nil
	})
	if err != nil {
		t.Fatalf("start %q: %v", script, err)
	}
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	return pid, ch
}

func waitStatus(t *testing.T, ch <-chan unix.WaitStatus) unix.WaitStatus {
	t.Helper()
	select {
	case ws := <-ch:
		return ws
	case <-time.After(60 * time.Second):
		t.Fatal("no wait status within 60 s")
		return 0
	}
}

func TestReaperExitStatuses(t *testing.T) {
	for _, reapAll := range []bool{false, true} {
		t.Run(fmt.Sprintf("reapAll=%v", reapAll), func(t *testing.T) {
			if reapAll {
				// Orphans of our children now come to this process, as to PID 1.
				if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
					t.Fatalf("set subreaper: %v", err)
				}
				t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
			}
			r := NewReaper(reapAll)
			t.Cleanup(r.Close)
			tests := []struct {
				script string
				code   int
				signal unix.Signal
			}{
				{"exit 0", 0, 0},
				{"exit 7", 7, 0},
				{"kill -TERM $$", 0, unix.SIGTERM},
				{"sleep 0.2; exit 42", 42, 0},
			}
			var wg sync.WaitGroup
			for i := 0; i < 5; i++ {
				for _, tc := range tests {
					_, ch := startSh(t, r, tc.script)
					wg.Add(1)
					go func() {
						defer wg.Done()
						ws := <-ch
						switch {
						case tc.signal != 0 && (!ws.Signaled() || ws.Signal() != tc.signal):
							t.Errorf("%q: status %v, want signal %v", tc.script, ws, tc.signal)
						case tc.signal == 0 && (!ws.Exited() || ws.ExitStatus() != tc.code):
							t.Errorf("%q: status %v, want exit %d", tc.script, ws, tc.code)
						}
					}()
				}
			}
			wg.Wait()
			if n := len(r.Children()); n != 0 {
				t.Errorf("%d children still registered", n)
			}
		})
	}
}

// TestReaperReapsOrphans: with reapAll, grandchildren orphaned to us are
// reaped, while the exit status of a registered child started at the same
// time still reaches its waiter.
func TestReaperReapsOrphans(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("set subreaper: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	r := NewReaper(true)
	t.Cleanup(r.Close)

	// The parent prints its background children's pids and exits; they
	// become our orphans and exit a moment later.
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	pid, ch, err := r.Start(func() (int, error) {
		p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "for i in 1 2 3 4 5; do (sleep 0.3; exit 3) & echo $!; done; exit 5"},
			&os.ProcAttr{Files: []*os.File{nil, wr, os.Stderr}})
		if err != nil {
			return 0, err
		}
		return p.Pid, nil
	})
	wr.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, long := startSh(t, r, "sleep 0.6; exit 9")
	if ws := waitStatus(t, ch); ws.ExitStatus() != 5 {
		t.Errorf("parent %d: status %v, want exit 5", pid, ws)
	}
	out := make([]byte, 4096)
	n, _ := rd.Read(out)
	orphans := strings.Fields(string(out[:n]))
	if len(orphans) != 5 {
		t.Fatalf("orphan pids %q", out[:n])
	}
	if ws := waitStatus(t, long); ws.ExitStatus() != 9 {
		t.Errorf("registered child: status %v, want exit 9 (status stolen?)", ws)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range orphans {
		p, _ := strconv.Atoi(s)
		for !gone(p) {
			if time.Now().After(deadline) {
				t.Fatalf("orphan %d not reaped", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// gone reports whether pid no longer exists, not even as a zombie.
func gone(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err != nil
}
