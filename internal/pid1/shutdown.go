package pid1

import (
	"errors"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"
)

// Shutdown ends what envd started, after the server stopped accepting:
// SIGTERM to every child's process group (to every process when envd is
// PID 1), up to grace for them to exit, SIGKILL for the rest, then sync.
// As PID 1 it then powers the machine off and does not return, because
// PID 1 exiting panics the kernel.
func Shutdown(log *slog.Logger, r *Reaper, grace time.Duration) {
	pid1 := IsPID1()
	signalAll(r, pid1, unix.SIGTERM)
	if !waitGone(r, pid1, grace) {
		log.Warn("children still running after grace, killing", "grace", grace)
		signalAll(r, pid1, unix.SIGKILL)
		waitGone(r, pid1, 2*time.Second)
	}
	unix.Sync()
	if pid1 {
		log.Info("powering off")
		PowerOff()
	}
}

func signalAll(r *Reaper, pid1 bool, sig unix.Signal) {
	if pid1 {
		_ = unix.Kill(-1, sig) // everyone but init itself
		return
	}
	for _, pid := range r.Children() {
		// Children normally lead their own group (setsid/setpgid); the
		// plain kill covers one that does not.
		_ = unix.Kill(-pid, sig)
		_ = unix.Kill(pid, sig)
	}
}

// waitGone polls until no child is left or d passed. As PID 1 every
// orphan is a child, so "no child" means no user process is left.
func waitGone(r *Reaper, pid1 bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if pid1 {
			var si unix.Siginfo
			// WNOWAIT leaves the zombie to the reaper goroutine.
			err := unix.Waitid(unix.P_ALL, 0, &si, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
			if errors.Is(err, unix.ECHILD) {
				return true
			}
		} else if len(r.Children()) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
