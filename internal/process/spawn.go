package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/users"
)

// defaultPath is used when envd's own PATH is empty (cli.md §4.2).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// childOOMScore is every spawned process's oom_score_adj.
const childOOMScore = 100

// wrapperScript raises the shell's oom_score_adj, then execs the program
// (with ionice/nice prefixed as arguments), so the pid stays the program's.
const wrapperScript = `{ echo ` + "100" + ` >/proc/$$/oom_score_adj; } 2>/dev/null; exec "$@"`

// buildEnv returns the child's environment per cli.md §4.2: PATH, the
// user's HOME/USER/LOGNAME/SHELL, the default store, then the request.
func buildEnv(u *users.User, defaults, request map[string]string) map[string]string {
	env := make(map[string]string, 6+len(defaults)+len(request))
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	env["PATH"] = path
	env["HOME"] = u.Home
	env["USER"] = u.Name
	env["LOGNAME"] = u.Name
	if u.Shell != "" {
		env["SHELL"] = u.Shell
	}
	for k, v := range defaults {
		env[k] = v
	}
	for k, v := range request {
		env[k] = v
	}
	return env
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// spawnSpec is everything needed to fork one child.
type spawnSpec struct {
	cmd   string
	args  []string
	env   map[string]string
	dir   string
	files []uintptr // child's fds 0, 1, 2
	sys   *syscall.SysProcAttr
}

// spawner starts children either directly (execve of the resolved program,
// with nice/ionice applied as per-thread attributes inherited at fork and
// oom_score_adj inherited from envd, raised for the fork only) or through
// the /bin/sh wrapper of subsystems.md §3.1. Both give the same child
// state; the direct path saves three execs per process.
type spawner struct {
	shellOnly atomic.Bool

	// oomMu serializes the window in which envd's own oom_score_adj is
	// raised so the child inherits it.
	oomMu sync.Mutex
}

func newSpawner(shellOnly bool) *spawner {
	// Restoring envd's own oom_score_adj after the fork needs no
	// privilege: the kernel only refuses values below oom_score_adj_min,
	// which never exceeds the current value.
	sp := &spawner{}
	sp.shellOnly.Store(shellOnly)
	return sp
}

// start forks the child and returns its pid. It must run inside
// Reaper.Start (it may fork twice: a failed direct exec is retried through
// the wrapper, which then reports the shell's message and exit code).
func (sp *spawner) start(s *spawnSpec) (int, error) {
	nicePath, _ := exec.LookPath("nice")
	ionicePath, _ := exec.LookPath("ionice")
	if !sp.shellOnly.Load() {
		if prog, ok := lookPath(s.cmd, s.env["PATH"], s.dir); ok {
			pid, err := sp.direct(s, prog, nicePath != "", ionicePath != "")
			if err == nil {
				return pid, nil
			}
		}
	}
	argv := []string{"/bin/sh", "-c", wrapperScript, "--"}
	if ionicePath != "" {
		argv = append(argv, ionicePath, "-c", "2", "-n", "4")
	}
	if nicePath != "" {
		argv = append(argv, nicePath, "-n", strconv.Itoa(-ownNice()))
	}
	argv = append(argv, s.cmd)
	argv = append(argv, s.args...)
	return syscall.ForkExec("/bin/sh", argv, &syscall.ProcAttr{
		Dir: s.dir, Env: envList(s.env), Files: s.files, Sys: s.sys,
	})
}

// direct execs prog itself. The child must end up exactly as the wrapper
// would leave it: nice 0 and best-effort/4 I/O priority when those tools
// exist, oom_score_adj 100, and PWD exported (dash exports it).
func (sp *spawner) direct(s *spawnSpec, prog string, nice, ionice bool) (int, error) {
	env := s.env
	if _, ok := env["PWD"]; !ok {
		env = make(map[string]string, len(s.env)+1)
		for k, v := range s.env {
			env[k] = v
		}
		pwd := s.dir
		if real, err := filepath.EvalSymlinks(s.dir); err == nil {
			pwd = real
		}
		env["PWD"] = pwd
	}
	argv := append([]string{s.cmd}, s.args...)

	// nice and the I/O priority are per thread on Linux and inherited by a
	// child forked from that thread.
	runtime.LockOSThread()
	restored := true
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		} // else the thread dies with this goroutine
	}()
	tid := unix.Gettid()
	if nice {
		if old := ownNice(); old != 0 {
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, 0); err != nil {
				return 0, fmt.Errorf("set nice: %w", err)
			}
			defer func() {
				if unix.Setpriority(unix.PRIO_PROCESS, tid, old) != nil {
					restored = false
				}
			}()
		}
	}
	if ionice {
		const want = 2<<13 | 4 // IOPRIO_CLASS_BE, level 4
		if old, err := ioprioGet(); err == nil && old != want {
			if err := ioprioSet(want); err != nil {
				return 0, fmt.Errorf("set io priority: %w", err)
			}
			defer func() {
				if ioprioSet(old) != nil {
					restored = false
				}
			}()
		}
	}

	// oom_score_adj is per process, so envd holds the child's value only
	// for the fork itself (vfork: until the child has exec'd).
	sp.oomMu.Lock()
	defer sp.oomMu.Unlock()
	old, err := readOOMScore()
	if err != nil {
		return 0, err
	}
	if old != childOOMScore {
		if err := writeOOMScore(childOOMScore); err != nil {
			return 0, err
		}
		defer func() {
			if err := writeOOMScore(old); err != nil {
				sp.shellOnly.Store(true) // should not happen; stop raising envd's value
			}
		}()
	}
	return syscall.ForkExec(prog, argv, &syscall.ProcAttr{
		Dir: s.dir, Env: envList(env), Files: s.files, Sys: s.sys,
	})
}

// lookPath finds cmd the way the wrapper shell's exec would, in the child's
// PATH relative to the child's cwd. ok=false sends the spawn through the
// wrapper, which then produces the shell's own error.
func lookPath(cmd, path, dir string) (string, bool) {
	if cmd == "" {
		return "", false
	}
	isExec := func(p string) bool {
		fi, err := os.Stat(p)
		return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	if strings.Contains(cmd, "/") {
		p := abs(cmd)
		return p, isExec(p)
	}
	if path == "" {
		return "", false // let the shell apply its own rule
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		if p := abs(filepath.Join(d, cmd)); isExec(p) {
			return p, true
		}
	}
	return "", false
}

// ownNice is the calling thread's nice value.
func ownNice() int {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return 0
	}
	return 20 - prio // the raw syscall returns 20 - nice
}

func ioprioGet() (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, 1 /* IOPRIO_WHO_PROCESS */, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func ioprioSet(v int) error {
	if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, 1, 0, uintptr(v)); e != 0 {
		return e
	}
	return nil
}

func readOOMScore() (int, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, fmt.Errorf("read oom_score_adj: %w", err)
	}
	v, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		return 0, fmt.Errorf("parse oom_score_adj: %w", err)
	}
	return v, nil
}

func writeOOMScore(v int) error {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(v)), 0); err != nil {
		return fmt.Errorf("write oom_score_adj: %w", err)
	}
	return nil
}

// credential returns the child's uid/gid/groups. When envd is not root it
// can only run children as itself, so nothing is changed.
func credential(u *users.User) *syscall.Credential {
	if os.Geteuid() != 0 && uint32(os.Geteuid()) == u.UID {
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: slices.Clone(u.Groups)}
}

// openPTY opens a pty pair with creack/pty and returns the master as a
// non-blocking file (reads and writes go through the poller and take
// deadlines) and the slave as a raw fd for the child.
func openPTY(cols, rows uint32) (*os.File, int, error) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, -1, fmt.Errorf("open pty: %w", err)
	}
	// creack hands out blocking *os.Files; keep close-on-exec dups instead.
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(rows), Cols: uint16(cols)}); err != nil {
		return nil, -1, fmt.Errorf("set pty size: %w", err)
	}
	mfd, err := unix.FcntlInt(ptmx.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(mfd, true); err != nil {
		unix.Close(mfd)
		return nil, -1, fmt.Errorf("pty master non-blocking: %w", err)
	}
	sfd, err := unix.FcntlInt(tty.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(mfd)
		return nil, -1, fmt.Errorf("dup pty slave: %w", err)
	}
	return os.NewFile(uintptr(mfd), "ptmx"), sfd, nil
}

// setWinsize resizes the terminal through the poller-owned master fd
// (File.Fd would switch it to blocking mode).
func setWinsize(master *os.File, cols, rows uint32) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	}); err != nil {
		return err
	}
	return ioErr
}

// setPipeSize enlarges a pipe's buffer, best effort (limits may refuse).
func setPipeSize(f *os.File, size int) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size) })
	}
}

var errNoStdin = errors.New("stdin not enabled or closed")
