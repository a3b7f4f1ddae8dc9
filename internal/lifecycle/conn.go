package lifecycle

import (
	"net"
	"net/http"
	"sort"
	"sync"
	"time"
)

// TCP keep-alive on accepted sockets, so a connection whose peer vanished
// (a zombie after a restore that escaped tracking) is reset within about
// Idle + Count*Interval of guest time.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3}

// ConnTracker records every server connection through http.Server's
// ConnState hook, with the snapshot epoch it was opened in, so restore
// can close exactly the connections that existed before the snapshot.
// It never hijacks: it keeps the net.Conn and closes it.
type ConnTracker struct {
	mu     sync.Mutex
	conns  map[net.Conn]*connEntry
	epoch  uint64
	closed uint64 // pre-snapshot connections closed by restores, total
}

type connEntry struct {
	epoch  uint64
	state  http.ConnState
	opened time.Time
}

// NewConnTracker returns an empty tracker in epoch 1.
func NewConnTracker() *ConnTracker {
	return &ConnTracker{conns: map[net.Conn]*connEntry{}, epoch: 1}
}

// ConnState is the http.Server.ConnState hook.
func (t *ConnTracker) ConnState(c net.Conn, s http.ConnState) {
	if s == http.StateNew {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetKeepAliveConfig(keepAlive)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case http.StateClosed, http.StateHijacked:
		delete(t.conns, c)
	case http.StateNew:
		t.conns[c] = &connEntry{epoch: t.epoch, state: s, opened: time.Now()}
	default:
		if e, ok := t.conns[c]; ok {
			e.state = s
		}
	}
}

// mark starts a new epoch: every connection open now becomes
// pre-snapshot. It returns how many there are.
func (t *ConnTracker) mark() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.epoch++
	return len(t.conns)
}

// closeBefore closes the connections opened before the current epoch,
// except the one whose remote address is keep (the request that triggered
// recovery) and, with idleOnly, except those not idle. It returns how many
// it closed.
func (t *ConnTracker) closeBefore(keep string, idleOnly bool) int {
	t.mu.Lock()
	var victims []net.Conn
	for c, e := range t.conns {
		if e.epoch >= t.epoch || (keep != "" && c.RemoteAddr().String() == keep) {
			continue
		}
		if idleOnly && e.state != http.StateIdle {
			continue
		}
		victims = append(victims, c)
		// Forget it now: Close makes the server report StateClosed, but
		// only once its serving goroutine notices.
		delete(t.conns, c)
	}
	t.closed += uint64(len(victims))
	t.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
	return len(victims)
}

// ConnInfo describes one tracked connection.
type ConnInfo struct {
	Remote      string `json:"remote"`
	State       string `json:"state"`
	Epoch       uint64 `json:"epoch"`
	PreSnapshot bool   `json:"preSnapshot"`
	AgeMs       int64  `json:"ageMs"`
}

// ConnStats is the tracker part of GET /debug/conns.
type ConnStats struct {
	Epoch             uint64     `json:"epoch"`
	Tracked           int        `json:"tracked"`
	PreSnapshotOpen   int        `json:"preSnapshotOpen"`
	ClosedPreSnapshot uint64     `json:"closedPreSnapshot"`
	Conns             []ConnInfo `json:"conns"`
}

// Stats returns the current connections, oldest first.
func (t *ConnTracker) Stats() ConnStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := ConnStats{Epoch: t.epoch, Tracked: len(t.conns), ClosedPreSnapshot: t.closed, Conns: []ConnInfo{}}
	now := time.Now()
	for c, e := range t.conns {
		pre := e.epoch < t.epoch
		if pre {
			st.PreSnapshotOpen++
		}
		st.Conns = append(st.Conns, ConnInfo{Remote: c.RemoteAddr().String(), State: e.state.String(), Epoch: e.epoch, PreSnapshot: pre, AgeMs: now.Sub(e.opened).Milliseconds()})
	}
	sort.Slice(st.Conns, func(i, j int) bool { return st.Conns[i].AgeMs > st.Conns[j].AgeMs })
	return st
}
