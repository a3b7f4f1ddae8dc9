// Package cgroups places spawned processes into cgroup v2 groups by kind and
// freezes/thaws the workload groups.
//
// Layout under the root (default /sys/fs/cgroup), as in e2b:
//
//	ptys/    PTY sessions      cpu.weight 200, io.weight 50, memory.high = memory.max = M
//	user/    other processes   cpu.weight 50,  io.weight 10, memory.high = memory.max = M
//	socats/  envd's helpers    cpu.weight 150, io.weight 50, memory.min 5 MiB, memory.low 8 MiB
//
// where M = MemTotal − min(MemTotal/8, 128 MiB), leaving room for envd.
// _system processes stay in envd's own cgroup and are never frozen.
//
// Open returns a *V2 or, when cgroup2 is not usable, Noop; both implement
// Groups (placement via FD, freezing via Freeze/Thaw/Audit).
package cgroups

import (
	"context"
	"time"
)

// Kind says which group a process belongs to.
type Kind int

const (
	KindSystem    Kind = iota // stays in envd's own group; never frozen (tag "_system")
	KindPTY                   // interactive terminals
	KindUser                  // every other user process
	KindForwarder             // envd's own helpers (port forwarding)
)

// Manager hands out directory fds for CLONE_INTO_CGROUP.
type Manager interface {
	// FD returns an open directory fd of the group for kind, or ok=false
	// when the process should stay in envd's cgroup.
	FD(kind Kind) (fd int, ok bool)
	// Close releases the fds.
	Close() error
}

// Freezer freezes and thaws the workload for pauses (POST /freeze,
// /unfreeze, the thaw at the end of /init). All three methods share one
// freeze lock: Freeze waits for it with ctx, Thaw waits regardless.
type Freezer interface {
	// Freeze writes cgroup.freeze=1 to the workload cgroups (o.Mode) and,
	// if o.MaxWait > 0, polls cgroup.events every 2 ms until they report
	// frozen or the budget is spent. Per-cgroup errors are counted in the
	// result, not returned. The error is non-nil only when ctx ended before
	// the lock was acquired or during the wait (→ HTTP 503); cgroups already
	// written stay frozen until a thaw. A freeze that wrote at least one
	// cgroup arms a thaw watchdog (10 min by default).
	Freeze(ctx context.Context, o FreezeOptions) (FreezeResult, error)
	// Thaw writes cgroup.freeze=0 to every cgroup under the root that
	// reads 1, except those the guest had frozen itself before envd's first
	// freeze (e.g. docker pause), and disarms the watchdog. The error joins
	// per-cgroup write failures (→ HTTP 500 for /unfreeze).
	Thaw() (ThawResult, error)
	// Audit reports, while a freeze by envd is in effect, how the tree
	// looks (for X-Envd-Freeze-Audit at /init); ok=false when no freeze is
	// in effect.
	Audit() (a AuditResult, ok bool)
}

// Groups is what Open returns: placement plus freezing.
type Groups interface {
	Manager
	Freezer
}

// FreezeMode selects the set of cgroups Freeze writes.
type FreezeMode string

const (
	// FreezeLegacy freezes <root>/user and <root>/ptys.
	FreezeLegacy FreezeMode = "legacy"
	// FreezeHierarchy freezes the topmost cgroups under the root except
	// envd's own ancestor chain and the allowlist (socats, init.scope,
	// journald, rpcbind, rpc-statd), which are descended into instead.
	FreezeHierarchy FreezeMode = "hierarchy"
)

// ParseFreezeMode maps the /freeze mode query value; unknown → legacy.
func ParseFreezeMode(s string) FreezeMode {
	if s == string(FreezeHierarchy) {
		return FreezeHierarchy
	}
	return FreezeLegacy
}

// FreezeOptions are the /freeze query parameters.
type FreezeOptions struct {
	Mode FreezeMode
	// MaxCgroups bounds the hierarchy walk: ≤0 → 512, capped at 8192.
	MaxCgroups int
	// MaxWait > 0 selects report mode: wait up to MaxWait for frozen.
	MaxWait time.Duration
}

// FreezeResult is the /freeze report-mode body (protocol.md §3.9).
type FreezeResult struct {
	Mode         FreezeMode `json:"mode"`
	Visited      int        `json:"visited"`
	Allowlisted  int        `json:"allowlisted"`
	Truncated    bool       `json:"truncated"`
	PreFrozen    int        `json:"preFrozen"`
	Requested    int        `json:"requested"`
	Frozen       int        `json:"frozen"`
	NotFrozen    int        `json:"notFrozen"`
	Failed       int        `json:"failed"`
	Unobservable int        `json:"unobservable"`
	SweepMs      int64      `json:"sweepMs"`
	WaitMs       int64      `json:"waitMs"`
}

// ThawResult counts what Thaw did.
type ThawResult struct {
	Visited   int  `json:"visited"`
	Thawed    int  `json:"thawed"`
	PreFrozen int  `json:"preFrozen"` // left frozen on purpose
	Failed    int  `json:"failed"`
	Truncated bool `json:"truncated"`
}

// AuditResult is the X-Envd-Freeze-Audit header value.
type AuditResult struct {
	Visited int `json:"visited"`
	Frozen  int `json:"frozen"`
	// Escaped counts cgroups envd froze (or their descendants) that read
	// frozen 0.
	Escaped int `json:"escaped"`
	// Violations counts frozen cgroups on envd's ancestor chain or in the
	// allowlist.
	Violations int  `json:"violations"`
	Truncated  bool `json:"truncated"`
}

// Noop is the manager used when cgroup2 is absent or -no-cgroups is set.
// Its freeze touches nothing and reports the two legacy groups as
// unobservable.
type Noop struct{}

func (Noop) FD(Kind) (int, bool) { return -1, false }
func (Noop) Close() error        { return nil }

func (Noop) Freeze(ctx context.Context, o FreezeOptions) (FreezeResult, error) {
	if err := ctx.Err(); err != nil {
		return FreezeResult{}, err
	}
	return FreezeResult{Mode: FreezeLegacy, Unobservable: 2}, nil
}

func (Noop) Thaw() (ThawResult, error)  { return ThawResult{}, nil }
func (Noop) Audit() (AuditResult, bool) { return AuditResult{}, false }
