package process

import (
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
)

// table holds live processes by pid and, for the retention period, the
// ones that ended (so Connect can still report their EndEvent).
type table struct {
	retention time.Duration

	mu       sync.Mutex
	seq      uint64
	live     map[int]*proc
	retained map[int]*retained
}

type retained struct {
	p     *proc
	timer *time.Timer
}

func newTable(retention time.Duration) *table {
	return &table{retention: retention, live: map[int]*proc{}, retained: map[int]*retained{}}
}

// add registers a started process. A retained entry with the same pid or
// tag is evicted: the new process is the one those selectors mean now.
func (t *table) add(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	p.seq = t.seq
	for pid, r := range t.retained {
		if pid == p.pid || (p.hasTag && r.p.hasTag && r.p.tag == p.tag) {
			r.timer.Stop()
			delete(t.retained, pid)
		}
	}
	t.live[p.pid] = p
}

// finish moves p from the live table to the retained set.
func (t *table) finish(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[p.pid] == p {
		delete(t.live, p.pid)
	}
	if old := t.retained[p.pid]; old != nil {
		old.timer.Stop()
	}
	r := &retained{p: p}
	r.timer = time.AfterFunc(t.retention, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.retained[p.pid] == r {
			delete(t.retained, p.pid)
		}
	})
	t.retained[p.pid] = r
}

// find resolves a selector among live processes and, with withRetained,
// recently ended ones. Several matches of a tag: the newest wins.
func (t *table) find(sel *pb.ProcessSelector, withRetained bool) (*proc, error) {
	if sel == nil || sel.Selector == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errSelector)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s := sel.Selector.(type) {
	case *pb.ProcessSelector_Pid:
		if p := t.live[int(s.Pid)]; p != nil {
			return p, nil
		}
		if r := t.retained[int(s.Pid)]; withRetained && r != nil {
			return r.p, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", s.Pid))
	case *pb.ProcessSelector_Tag:
		var best *proc
		for _, p := range t.live {
			if p.hasTag && p.tag == s.Tag && (best == nil || p.seq > best.seq) {
				best = p
			}
		}
		if best == nil && withRetained {
			for _, r := range t.retained {
				if r.p.hasTag && r.p.tag == s.Tag && (best == nil || r.p.seq > best.seq) {
					best = r.p
				}
			}
		}
		if best == nil {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %s not found", s.Tag))
		}
		return best, nil
	}
	return nil, connect.NewError(connect.CodeInvalidArgument, errSelector)
}

// list returns the live processes, oldest first.
func (t *table) list() []*proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*proc, 0, len(t.live))
	for _, p := range t.live {
		out = append(out, p)
	}
	sortBySeq(out)
	return out
}

// close drops the retained set and stops its timers.
func (t *table) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for pid, r := range t.retained {
		r.timer.Stop()
		delete(t.retained, pid)
	}
}
