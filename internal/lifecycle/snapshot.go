package lifecycle

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/envd-go/envd/internal/host"
	"github.com/envd-go/envd/internal/server"
)

// SnapshotOptions are the subsystems a snapshot pauses and restore resumes.
// Nil funcs are skipped.
type SnapshotOptions struct {
	Tracker *ConnTracker
	Sampler *host.CPUSampler
	Logger  *slog.Logger
	// StopPorts/StartPorts pause and resume the port scanner and forwarder.
	StopPorts, StartPorts func()
	// CloseIdleClients drops envd's own pooled outgoing connections (MMDS):
	// after a restore their first use would fail.
	CloseIdleClients func()
	// SelfRecover is how long a prepare waits for a restore signal before
	// recovering by itself (the host resumed without snapshotting).
	// Guest time: it does not run while the VM is paused. Default 10 s.
	SelfRecover time.Duration
	// JumpThreshold is the clock offset change taken as a restore or a
	// clock step (default 1 s); JumpInterval the detector period (1 s).
	JumpThreshold, JumpInterval time.Duration
}

// Snapshot implements wrenn's POST /snapshot/prepare and the recovery that
// follows a restore. Recovery runs on the first /health or /init after a
// prepare (Recover), on a clock jump (the detector, in case prepare never
// came), or SelfRecover after a prepare that no restore followed.
type Snapshot struct {
	opts SnapshotOptions

	mu       sync.Mutex
	srv      *http.Server
	pending  bool
	timer    *time.Timer
	prepared time.Time // monotonic reading at the end of the last prepare
	stats    restoreStats
	detector *jumpDetector
}

type restoreStats struct {
	Prepares       uint64 `json:"prepares"`
	Restores       uint64 `json:"restores"`
	ClockJumps     uint64 `json:"clockJumps"`
	SelfRecoveries uint64 `json:"selfRecoveries"`
	LastTrigger    string `json:"lastTrigger"`
	LastFrom       string `json:"lastFrom"` // remote address of a request trigger
	LastClosed     int    `json:"lastClosed"`
	JumpClosed     uint64 `json:"jumpClosed"` // idle connections closed on clock jumps, total
	LastRecoverUs  int64  `json:"lastRecoverUs"`
	LastPrepareUs  int64  `json:"lastPrepareUs"`
	// LastGapUs is guest time from the end of the prepare to the start of
	// the recovery: the guest clocks stop while the VM is paused, so this
	// is host latency before the pause plus guest time after the resume.
	LastGapUs int64 `json:"lastGapUs"`
}

// NewSnapshot returns the lifecycle handler and starts its clock-jump
// detector; Close stops it. SetServer must be called before serving.
func NewSnapshot(opts SnapshotOptions) *Snapshot {
	if opts.SelfRecover <= 0 {
		opts.SelfRecover = 10 * time.Second
	}
	if opts.JumpThreshold <= 0 {
		opts.JumpThreshold = time.Second
	}
	if opts.JumpInterval <= 0 {
		opts.JumpInterval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Tracker == nil {
		opts.Tracker = NewConnTracker()
	}
	s := &Snapshot{opts: opts}
	s.detector = startJumpDetector(opts.JumpInterval, opts.JumpThreshold, s.onJump)
	return s
}

// SetServer gives the snapshot the server whose keep-alives it toggles.
func (s *Snapshot) SetServer(srv *http.Server) {
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
}

// Close stops the detector and a pending self-recovery timer.
func (s *Snapshot) Close() {
	s.detector.stop()
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
}

// Routes are the snapshot routes: /snapshot/prepare (token exempt) and
// GET /debug/conns (token protected).
func (s *Snapshot) Routes() []server.Route {
	return []server.Route{
		{Pattern: "POST /snapshot/prepare", Handler: http.HandlerFunc(s.handlePrepare)},
		{Pattern: "GET /debug/conns", Handler: http.HandlerFunc(s.handleDebug)},
	}
}

// Pending reports whether a prepare awaits its restore.
func (s *Snapshot) Pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending
}

func (s *Snapshot) handlePrepare(w http.ResponseWriter, r *http.Request) {
	s.Prepare()
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// Prepare readies envd for a memory snapshot (lifecycle.md §4.1): port
// forwarding and CPU sampling stop, keep-alives are disabled (which also
// closes idle connections), the open connections are recorded as
// pre-snapshot, idle outgoing connections are dropped and a GC leaves a
// small heap in the snapshot. Bounded to well under the host's 3 s.
func (s *Snapshot) Prepare() {
	start := time.Now()
	bounded(s.opts.Logger, "stop ports", 1500*time.Millisecond, s.opts.StopPorts)
	if s.opts.Sampler != nil {
		s.opts.Sampler.Stop()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.SetKeepAlivesEnabled(false)
	}
	n := s.opts.Tracker.mark()
	if s.opts.CloseIdleClients != nil {
		s.opts.CloseIdleClients()
	}
	runtime.GC()
	s.pending = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(s.opts.SelfRecover, func() { s.recover("", "self-recovery") })
	s.stats.Prepares++
	s.stats.LastPrepareUs = time.Since(start).Microseconds()
	s.prepared = time.Now()
	s.opts.Logger.Info("snapshot prepared", "preSnapshotConns", n, "took", time.Since(start))
}

// Recover runs restore recovery if a prepare is pending; r is the request
// that noticed (its own connection is kept). It is the /health hook
// (server.Deps.OnHealth) and the hook /init calls. Reports whether
// recovery ran.
func (s *Snapshot) Recover(r *http.Request) bool {
	keep := ""
	if r != nil {
		keep = r.RemoteAddr
	}
	return s.recover(keep, "request")
}

// OnHealth has the server.Deps.OnHealth signature.
func (s *Snapshot) OnHealth(r *http.Request) { s.Recover(r) }

// OnInit is the /init hook (InitOptions.BeforeApply): the safety net when
// no /health came between the restore and /init. The /init's own
// connection was opened after the restore, so it is not in the
// pre-snapshot set anyway.
func (s *Snapshot) OnInit(ctx context.Context) { s.recover("", "init") }

func (s *Snapshot) recover(keep, trigger string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pending {
		return false
	}
	start := time.Now()
	s.stats.LastGapUs = start.Sub(s.prepared).Microseconds()
	s.pending = false
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	// Every connection from before the snapshot is dead on the host side;
	// close them before anything writes into them.
	n := s.opts.Tracker.closeBefore(keep, false)
	if s.srv != nil {
		s.srv.SetKeepAlivesEnabled(true)
	}
	if s.opts.CloseIdleClients != nil {
		s.opts.CloseIdleClients()
	}
	if s.opts.Sampler != nil {
		s.opts.Sampler.Start() // fresh baseline: no delta across the gap
	}
	if s.opts.StartPorts != nil {
		go s.opts.StartPorts() // rescans at once; /health must not wait for it
	}
	s.stats.Restores++
	if trigger == "self-recovery" {
		s.stats.SelfRecoveries++
	}
	s.stats.LastTrigger = trigger
	s.stats.LastFrom = keep
	s.stats.LastClosed = n
	s.stats.LastRecoverUs = time.Since(start).Microseconds()
	s.opts.Logger.Info("restore recovery", "trigger", trigger, "closedConns", n, "took", time.Since(start))
	return true
}

// onJump handles a clock jump: after a prepare it is a restore; without one
// (the host snapshotted without asking, or stepped the clock after an
// in-place pause) only idle pre-jump connections are closed — a live
// stream may well be healthy, and one that is not fails its next write
// within the server's write deadline or TCP keep-alive.
func (s *Snapshot) onJump(d time.Duration) {
	s.mu.Lock()
	s.stats.ClockJumps++
	pending := s.pending
	s.mu.Unlock()
	s.opts.Logger.Info("clock jump", "offsetChange", d, "prepared", pending)
	if pending {
		s.recover("", "clock-jump")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Tracker.mark()
	s.stats.JumpClosed += uint64(s.opts.Tracker.closeBefore("", true))
	if s.opts.CloseIdleClients != nil {
		s.opts.CloseIdleClients()
	}
	if s.opts.Sampler != nil {
		s.opts.Sampler.Stop()
		s.opts.Sampler.Start()
	}
}

// bounded runs f but stops waiting after d (f keeps running).
func bounded(log *slog.Logger, what string, d time.Duration, f func()) {
	if f == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		log.Warn("snapshot step slow, not waiting", "step", what, "after", d)
	}
}

// DebugInfo is the body of GET /debug/conns: what the VM tests assert on.
type DebugInfo struct {
	ConnStats
	restoreStats
	Pending    bool `json:"pending"`
	FDs        int  `json:"fds"`
	Goroutines int  `json:"goroutines"`
	// NowUnixNano is the guest wall clock when the answer was built, for
	// skew checks against the host.
	NowUnixNano int64 `json:"nowUnixNano"`
}

// Debug returns the current connection and restore counters.
func (s *Snapshot) Debug() DebugInfo {
	s.mu.Lock()
	d := DebugInfo{restoreStats: s.stats, Pending: s.pending}
	s.mu.Unlock()
	d.ConnStats = s.opts.Tracker.Stats()
	d.Goroutines = runtime.NumGoroutine()
	d.NowUnixNano = time.Now().UnixNano()
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		d.FDs = len(ents) - 1 // minus ReadDir's own fd
	}
	return d
}

func (s *Snapshot) handleDebug(w http.ResponseWriter, r *http.Request) {
	snapJSON(w, http.StatusOK, s.Debug())
}
