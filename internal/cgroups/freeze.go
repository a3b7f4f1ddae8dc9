package cgroups

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const (
	defaultMaxCgroups = 512
	hardMaxCgroups    = 8192
	pollInterval      = 2 * time.Millisecond
	defaultWatchdog   = 10 * time.Minute
)

// allowlist are cgroups (relative to the root) that resume depends on:
// never frozen, their ancestors are descended into.
var allowlist = []string{
	"init.scope",
	"system.slice/systemd-journald.service",
	"system.slice/rpcbind.service",
	"system.slice/rpcbind.socket",
	"system.slice/rpc-statd.service",
	"socats",
}

// freezer is the freeze state of a V2 manager.
type freezer struct {
	m    *V2
	lock chan struct{} // the freeze lock (a semaphore so Freeze can give up)

	mu sync.Mutex // guards the fields below
	// ours are cgroups envd wrote cgroup.freeze=1 to since the last thaw.
	ours map[string]bool
	// preFrozen are cgroups that read frozen before envd's first freeze.
	preFrozen     map[string]bool
	watchdog      *time.Timer
	watchdogDelay time.Duration
}

func (f *freezer) init(m *V2, delay time.Duration) {
	if delay <= 0 {
		delay = defaultWatchdog
	}
	f.m, f.lock, f.watchdogDelay = m, make(chan struct{}, 1), delay
	f.ours, f.preFrozen = map[string]bool{}, map[string]bool{}
}

func (f *freezer) stopWatchdog() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.watchdog != nil {
		f.watchdog.Stop()
		f.watchdog = nil
	}
}

// Freeze implements Freezer.
func (m *V2) Freeze(ctx context.Context, o FreezeOptions) (FreezeResult, error) {
	f := &m.freezer
	if err := ctx.Err(); err != nil {
		return FreezeResult{}, fmt.Errorf("cgroups: freeze: %w", err)
	}
	select {
	case f.lock <- struct{}{}:
	case <-ctx.Done():
		return FreezeResult{}, fmt.Errorf("cgroups: freeze lock: %w", ctx.Err())
	}
	defer func() { <-f.lock }()

	start := time.Now()
	res := FreezeResult{Mode: o.Mode}
	if res.Mode != FreezeHierarchy || m.self == "" {
		res.Mode = FreezeLegacy // without envd's own cgroup a walk could freeze envd
	}

	f.mu.Lock()
	firstFreeze := len(f.ours) == 0
	f.mu.Unlock()
	if firstFreeze {
		// Remember what the guest froze itself, so thaws leave it frozen.
		pre := map[string]bool{}
		m.walk(hardMaxCgroups, func(dir string) bool {
			if readFreeze(dir) == 1 {
				pre[dir] = true
			}
			return true
		})
		f.mu.Lock()
		f.preFrozen = pre
		f.mu.Unlock()
	}

	var targets []string
	if res.Mode == FreezeLegacy {
		for _, k := range []Kind{KindUser, KindPTY} {
			d, _ := m.Dir(k)
			targets = append(targets, d)
		}
	} else {
		targets, res.Visited, res.Allowlisted, res.Truncated = m.freezable(o.MaxCgroups)
	}

	var requested []string
	f.mu.Lock()
	for _, d := range targets {
		if f.preFrozen[d] {
			res.PreFrozen++
			continue
		}
		if err := writeFile(filepath.Join(d, "cgroup.freeze"), "1"); err != nil {
			m.log.Warn("freeze cgroup", "cgroup", d, "error", err)
			res.Failed++
			continue
		}
		f.ours[d] = true
		requested = append(requested, d)
	}
	res.Requested = len(requested)
	if res.Requested > 0 {
		if f.watchdog != nil {
			f.watchdog.Stop()
		}
		f.watchdog = time.AfterFunc(f.watchdogDelay, func() {
			m.log.Warn("freeze watchdog: no thaw in time, thawing")
			m.Thaw()
		})
	}
	f.mu.Unlock()
	res.SweepMs = time.Since(start).Milliseconds()

	if o.MaxWait <= 0 {
		return res, nil
	}
	waitStart := time.Now()
	err := m.waitFrozen(ctx, requested, o.MaxWait, &res)
	res.WaitMs = time.Since(waitStart).Milliseconds()
	return res, err
}

// waitFrozen polls cgroup.events of each requested cgroup until all report
// frozen 1 or budget is spent, then classifies them into res.
func (m *V2) waitFrozen(ctx context.Context, dirs []string, budget time.Duration, res *FreezeResult) error {
	deadline := time.Now().Add(budget)
	pending := append([]string(nil), dirs...)
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		rest := pending[:0]
		for _, d := range pending {
			switch frozen, err := readFrozen(d); {
			case errors.Is(err, fs.ErrNotExist):
				res.Unobservable++
			case err != nil:
				res.Failed++
			case frozen:
				res.Frozen++
			default:
				rest = append(rest, d)
			}
		}
		pending = rest
		if len(pending) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			res.NotFrozen += len(pending)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroups: waiting for frozen: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Thaw implements Freezer.
func (m *V2) Thaw() (ThawResult, error) {
	f := &m.freezer
	f.lock <- struct{}{}
	defer func() { <-f.lock }()

	f.mu.Lock()
	if f.watchdog != nil {
		f.watchdog.Stop()
		f.watchdog = nil
	}
	pre := f.preFrozen
	clear(f.ours)
	f.mu.Unlock()

	var res ThawResult
	var errs []error
	res.Truncated = !m.walk(hardMaxCgroups, func(dir string) bool {
		res.Visited++
		if readFreeze(dir) != 1 {
			return true
		}
		if pre[dir] {
			res.PreFrozen++
			return true
		}
		if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "0"); err != nil {
			res.Failed++
			errs = append(errs, err)
			return true
		}
		res.Thawed++
		return true
	})
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("cgroups: thaw: %w", err)
	}
	return res, nil
}

// Audit implements Freezer.
func (m *V2) Audit() (AuditResult, bool) {
	f := &m.freezer
	f.mu.Lock()
	ours := make([]string, 0, len(f.ours))
	for d := range f.ours {
		ours = append(ours, d)
	}
	f.mu.Unlock()
	if len(ours) == 0 {
		return AuditResult{}, false
	}
	under := func(dir string, set []string) bool {
		for _, d := range set {
			if dir == d || strings.HasPrefix(dir, d+"/") {
				return true
			}
		}
		return false
	}
	var allow []string
	for _, a := range allowlist {
		allow = append(allow, filepath.Join(m.root, a))
	}
	var a AuditResult
	a.Truncated = !m.walk(hardMaxCgroups, func(dir string) bool {
		a.Visited++
		frozen, err := readFrozen(dir)
		if err != nil {
			return true
		}
		if frozen {
			a.Frozen++
			if m.onSelfChain(dir) || under(dir, allow) {
				a.Violations++
			}
		} else if under(dir, ours) {
			a.Escaped++
		}
		return true
	})
	return a, true
}

// freezable walks the tree and returns the topmost cgroups a hierarchy
// freeze may write.
func (m *V2) freezable(maxCgroups int) (targets []string, visited, allowlisted int, truncated bool) {
	if maxCgroups <= 0 {
		maxCgroups = defaultMaxCgroups
	}
	maxCgroups = min(maxCgroups, hardMaxCgroups)
	var visit func(dir string) bool
	visit = func(dir string) bool {
		for _, child := range subdirs(dir) {
			if visited >= maxCgroups {
				truncated = true
				return false
			}
			visited++
			rel, _ := filepath.Rel(m.root, child)
			switch {
			case isAllowlisted(rel):
				allowlisted++
			case m.onSelfChain(child) || isAllowlistAncestor(rel):
				if !visit(child) {
					return false
				}
			default:
				targets = append(targets, child)
			}
		}
		return true
	}
	visit(m.root)
	return targets, visited, allowlisted, truncated
}

func isAllowlisted(rel string) bool {
	for _, a := range allowlist {
		if rel == a {
			return true
		}
	}
	return false
}

func isAllowlistAncestor(rel string) bool {
	for _, a := range allowlist {
		if strings.HasPrefix(a, rel+"/") {
			return true
		}
	}
	return false
}

// onSelfChain reports whether dir is envd's cgroup or one of its ancestors.
func (m *V2) onSelfChain(dir string) bool {
	return m.self != "" && (m.self == dir || strings.HasPrefix(m.self, dir+"/"))
}

// walk calls fn for every cgroup below the root (not the root itself),
// depth first, at most limit of them; false if it stopped early.
func (m *V2) walk(limit int, fn func(dir string) bool) bool {
	n := 0
	var visit func(dir string) bool
	visit = func(dir string) bool {
		for _, child := range subdirs(dir) {
			if n >= limit {
				return false
			}
			n++
			if !fn(child) || !visit(child) {
				return false
			}
		}
		return true
	}
	return visit(m.root)
}

func subdirs(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// readFreeze returns the cgroup's own cgroup.freeze value (0 or 1), or -1.
func readFreeze(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze"))
	if err != nil {
		return -1
	}
	switch string(bytes.TrimSpace(b)) {
	case "1":
		return 1
	case "0":
		return 0
	}
	return -1
}

// readFrozen returns the "frozen" field of cgroup.events: whether the
// cgroup and all its descendants have stopped.
func readFrozen(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "frozen "); ok {
			return strings.TrimSpace(v) == "1", nil
		}
	}
	return false, fmt.Errorf("no frozen field in %s/cgroup.events", dir)
}
