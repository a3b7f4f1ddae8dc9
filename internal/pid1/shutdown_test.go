package pid1

import (
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestShutdown (not PID 1): children get SIGTERM, one that ignores it is
// killed after the grace period, and Shutdown returns.
func TestShutdown(t *testing.T) {
	r := NewReaper(false)
	t.Cleanup(r.Close)
	start := func(script string) <-chan unix.WaitStatus {
		_, ch, err := r.Start(func() (int, error) {
			p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", script},
				&os.ProcAttr{Files: []*os.File{nil, nil, os.Stderr}, Sys: &syscall.SysProcAttr{Setpgid: true}})
			if err != nil {
				return 0, err
			}
			return p.Pid, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	polite := start("sleep 60")
	stubborn := start("trap '' TERM; while :; do sleep 0.05; done")
	time.Sleep(100 * time.Millisecond) // let the trap be installed
	begin := time.Now()
	Shutdown(slog.New(slog.DiscardHandler), r, 500*time.Millisecond)
	if took := time.Since(begin); took > 20*time.Second {
		t.Errorf("shutdown took %v", took)
	}
	for name, ch := range map[string]<-chan unix.WaitStatus{"polite": polite, "stubborn": stubborn} {
		select {
		case ws := <-ch:
			want := unix.SIGTERM
			if name == "stubborn" {
				want = unix.SIGKILL
			}
			if !ws.Signaled() || ws.Signal() != want {
				t.Errorf("%s: %v, want %v", name, ws, want)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s still running after Shutdown", name)
		}
	}
}
