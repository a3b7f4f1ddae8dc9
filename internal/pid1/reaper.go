// Package pid1 holds what envd owes the system when it is PID 1: mounts,
// reaping of orphans, signals and shutdown. The Reaper is used in every mode
// so that exactly one place collects child exit statuses.
package pid1

import (
	"errors"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Reaper collects exit statuses of envd's children and hands each to the
// code that started the child. With reapAll (PID 1 or a subreaper) it also
// reaps orphans that were reparented to envd and discards their status.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	reapAll bool
	sigs    chan os.Signal
	done    chan struct{}
	stopped sync.WaitGroup
}

// NewReaper starts the reaper goroutine. reapAll selects wait4(-1) reaping
// of every child; otherwise only children registered through Start are
// waited for, so other code in the process can still use os/exec freely.
func NewReaper(reapAll bool) *Reaper {
	r := &Reaper{
		waiters: map[int]chan unix.WaitStatus{},
		reapAll: reapAll,
		sigs:    make(chan os.Signal, 1),
		done:    make(chan struct{}),
	}
	signal.Notify(r.sigs, unix.SIGCHLD)
	r.stopped.Add(1)
	go r.loop()
	return r
}

// Start runs start, which must create exactly one child and return its pid,
// and returns a channel that receives the child's wait status once. Reaping
// is held off while start runs so a child that exits at once is not missed.
func (r *Reaper) Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	if pid <= 0 {
		return 0, nil, errors.New("reaper: start returned no pid")
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	// The SIGCHLD of a child that already exited may have been consumed by
	// a pass that ran before registration; make sure another pass follows.
	select {
	case r.sigs <- unix.SIGCHLD:
	default:
	}
	return pid, ch, nil
}

// Children returns the pids registered through Start that have not been
// reaped yet.
func (r *Reaper) Children() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	pids := make([]int, 0, len(r.waiters))
	for pid := range r.waiters {
		pids = append(pids, pid)
	}
	return pids
}

// Close stops the reaper goroutine. Registered waiters never receive a status.
func (r *Reaper) Close() {
	signal.Stop(r.sigs)
	close(r.done)
	r.stopped.Wait()
}

func (r *Reaper) loop() {
	defer r.stopped.Done()
	for {
		select {
		case <-r.done:
			return
		case <-r.sigs:
			r.reap()
		}
	}
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reapAll {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil || pid <= 0 {
				return
			}
			r.deliver(pid, ws)
		}
	}
	for pid := range r.waiters {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		for err == unix.EINTR {
			got, err = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
		if got == pid {
			r.deliver(pid, ws)
		} else if err == unix.ECHILD {
			// Someone else reaped it; report it as killed rather than hang.
			r.deliver(pid, unix.WaitStatus(unix.SIGKILL))
		}
	}
}

// deliver is called with r.mu held. Only exits and deaths count; stop and
// continue notifications are not requested (no WUNTRACED).
func (r *Reaper) deliver(pid int, ws unix.WaitStatus) {
	ch, ok := r.waiters[pid]
	if !ok {
		return // an orphan reparented to us
	}
	delete(r.waiters, pid)
	ch <- ws
}
