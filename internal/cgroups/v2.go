package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure the cgroup v2 manager.
type Options struct {
	// Root is the cgroup2 directory under which the groups are created
	// (default /sys/fs/cgroup). It may be a subdirectory of the mount.
	Root   string
	Logger *slog.Logger
	// MemTotal in bytes for the memory limits; 0 reads /proc/meminfo.
	MemTotal uint64
	// WatchdogDelay is how long a freeze may last without a thaw before
	// the watchdog thaws (10 min if zero).
	WatchdogDelay time.Duration
	// SelfCgroup is the directory of envd's own cgroup, never frozen. Empty:
	// derived from /proc/self/cgroup and /proc/self/mountinfo.
	SelfCgroup string
}

// group is one directory envd creates.
type group struct {
	kind  Kind
	name  string
	props func(memLimit uint64) [][2]string
}

var groups = []group{
	{KindPTY, "ptys", func(m uint64) [][2]string {
		return [][2]string{{"cpu.weight", "200"}, {"io.weight", "default 50"}, {"memory.high", u64(m)}, {"memory.max", u64(m)}}
	}},
	{KindUser, "user", func(m uint64) [][2]string {
		return [][2]string{{"memory.high", u64(m)}, {"memory.max", u64(m)}, {"cpu.weight", "50"}, {"io.weight", "default 10"}}
	}},
	{KindForwarder, "socats", func(uint64) [][2]string {
		return [][2]string{{"cpu.weight", "150"}, {"io.weight", "default 50"}, {"memory.min", "5242880"}, {"memory.low", "8388608"}}
	}},
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }

// MemoryLimit is M = T − min(T/8, 128 MiB) for total memory T.
func MemoryLimit(total uint64) uint64 {
	return total - min(total/8, 128<<20)
}

// V2 is the cgroup v2 manager.
type V2 struct {
	root string
	self string // envd's own cgroup directory, "" if unknown
	log  *slog.Logger

	mu     sync.RWMutex
	fds    map[Kind]int
	closed bool

	freezer
}

// Open builds the cgroup v2 manager, or returns Noop (logging why once)
// when root is not a usable cgroup2 directory.
func Open(o Options) Groups {
	m, err := New(o)
	if err != nil {
		log := o.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		log.Warn("cgroups unavailable; processes stay in envd's cgroup and /freeze is a no-op", "root", o.Root, "error", err)
		return Noop{}
	}
	return m
}

// New creates the groups under o.Root and opens their directories.
// Properties the kernel does not offer (a controller not enabled) or
// rejects are skipped with one log line per group; only failing to use the
// root or to create a group directory is an error.
func New(o Options) (*V2, error) {
	if o.Root == "" {
		o.Root = "/sys/fs/cgroup"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(o.Root, &st); err != nil {
		return nil, fmt.Errorf("cgroups: statfs %s: %w", o.Root, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("cgroups: %s is not a cgroup2 filesystem (magic %#x)", o.Root, st.Type)
	}
	if o.MemTotal == 0 {
		t, err := memTotal()
		if err != nil {
			return nil, err
		}
		o.MemTotal = t
	}
	log := o.Logger.With("logger", "cgroups")
	m := &V2{root: filepath.Clean(o.Root), log: log, fds: map[Kind]int{}}
	m.freezer.init(m, o.WatchdogDelay)

	m.enableControllers("cpu", "memory", "io")
	limit := MemoryLimit(o.MemTotal)
	for _, g := range groups {
		dir := filepath.Join(m.root, g.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			m.Close()
			return nil, fmt.Errorf("cgroups: create %s: %w", dir, err)
		}
		var skipped []string
		for _, p := range g.props(limit) {
			if err := writeFile(filepath.Join(dir, p[0]), p[1]); err != nil {
				skipped = append(skipped, fmt.Sprintf("%s=%s (%s)", p[0], p[1], describe(err)))
			}
		}
		if len(skipped) > 0 {
			log.Warn("cgroup properties not applied", "group", g.name, "skipped", strings.Join(skipped, ", "))
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("cgroups: open %s: %w", dir, err)
		}
		m.fds[g.kind] = fd
	}

	m.self = o.SelfCgroup
	if m.self == "" {
		self, err := ownCgroup()
		if err != nil {
			log.Warn("cannot find envd's own cgroup; hierarchy freezes fall back to legacy", "error", err)
		}
		m.self = self
	}
	log.Info("cgroups ready", "root", m.root, "memory_limit", limit, "self", m.self)
	return m, nil
}

// enableControllers writes +name to the root's cgroup.subtree_control for
// each available controller not yet enabled, one at a time so one refusal
// does not block the others.
func (m *V2) enableControllers(names ...string) {
	avail, err := os.ReadFile(filepath.Join(m.root, "cgroup.controllers"))
	if err != nil {
		m.log.Warn("cannot read cgroup.controllers", "error", err)
		return
	}
	enabled, _ := os.ReadFile(filepath.Join(m.root, "cgroup.subtree_control"))
	has := func(list []byte, n string) bool {
		for _, f := range strings.Fields(string(list)) {
			if f == n {
				return true
			}
		}
		return false
	}
	var missing []string
	for _, n := range names {
		switch {
		case has(enabled, n):
		case !has(avail, n):
			missing = append(missing, n)
		default:
			if err := writeFile(filepath.Join(m.root, "cgroup.subtree_control"), "+"+n); err != nil {
				m.log.Warn("cannot enable cgroup controller", "controller", n, "error", describe(err))
			}
		}
	}
	if len(missing) > 0 {
		m.log.Warn("cgroup controllers not available; their limits are skipped", "controllers", strings.Join(missing, " "), "root", m.root)
	}
}

// FD implements Manager.
func (m *V2) FD(kind Kind) (int, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	fd, ok := m.fds[kind]
	if !ok || m.closed {
		return -1, false
	}
	return fd, true
}

// Dir returns the directory of kind's group (ok=false for KindSystem).
func (m *V2) Dir(kind Kind) (string, bool) {
	for _, g := range groups {
		if g.kind == kind {
			return filepath.Join(m.root, g.name), true
		}
	}
	return "", false
}

// Close releases the directory fds and stops the thaw watchdog (a freeze
// in effect stays in effect). Groups are left in place.
func (m *V2) Close() error {
	m.freezer.stopWatchdog()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	for _, fd := range m.fds {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// writeFile writes v to an existing cgroup file (never creates one).
func writeFile(path, v string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(v)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return cerr
}

// describe turns a property write error into a short reason for logs.
func describe(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "absent: controller not enabled"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return "not writable"
	default:
		return err.Error()
	}
}

func memTotal() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("cgroups: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			fs := strings.Fields(rest)
			if len(fs) == 0 {
				break
			}
			kb, err := strconv.ParseUint(fs[0], 10, 64)
			if err != nil {
				break
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("cgroups: no MemTotal in /proc/meminfo")
}

// ownCgroup returns the directory of envd's cgroup: the "0::<path>" line
// of /proc/self/cgroup joined to the cgroup2 mount point it lives under.
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	var path string
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			path = p
		}
	}
	if path == "" {
		return "", errors.New("no cgroup2 entry in /proc/self/cgroup")
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	// mountinfo: id parent maj:min root mountpoint opts ... - fstype source
	for _, l := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		mroot, mpoint := f[3], f[4]
		rel, ok := strings.CutPrefix(path, mroot)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/") && mroot != "/") {
			continue
		}
		return filepath.Join(mpoint, rel), nil
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}
