// Package cgroups places spawned processes into cgroup v2 groups by kind and
// freezes/thaws the workload groups.
package cgroups

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

// Noop is the manager used when cgroup2 is absent or -no-cgroups is set.
type Noop struct{}

func (Noop) FD(Kind) (int, bool) { return -1, false }
func (Noop) Close() error          { return nil }
