// Package fsuser runs filesystem operations with a user's rights instead of
// root's: per-operation fsuid/fsgid and supplementary groups, switched on one
// locked OS thread only.
//
// Go's syscall.Setuid/Setgroups change every thread of the process, so they
// are never used here; the raw syscalls below act on the calling thread.
// While switched, the kernel checks permissions against the user and drops
// the filesystem capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER...),
// and files or directories created get the user's ownership.
package fsuser

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/users"
)

// Creds is who an operation acts as.
type Creds struct {
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups (may include GID)
}

// Of returns the credentials of u.
func Of(u *users.User) Creds {
	return Creds{UID: u.UID, GID: u.GID, Groups: u.Groups}
}

// IsRoot reports whether c needs no switch.
func (c Creds) IsRoot() bool { return c.UID == 0 }

// ErrRestore means a thread could not be switched back to root; the thread
// was left locked so the runtime discards it.
var ErrRestore = errors.New("fsuser: restoring root credentials failed")

// Do runs fn with c's filesystem rights and returns its error. Root skips
// the switch. fn runs on a dedicated goroutine locked to its OS thread:
// anything fn starts on other goroutines runs as root, so fn must do its
// permission-relevant syscalls itself. A panic in fn is re-raised in the
// caller after the thread was restored.
func Do(c Creds, fn func() error) error {
	if c.IsRoot() {
		return fn()
	}
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		saved, err := unix.Getgroups()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("fsuser: getgroups: %w", err)}
			return
		}
		var res result
		if err := become(c); err != nil {
			res.err = err
		} else {
			func() {
				defer func() { res.panic = recover() }()
				res.err = fn()
			}()
		}
		if err := restore(saved); err != nil {
			// Never unlock: the goroutine exits locked and the runtime
			// terminates the thread instead of reusing it with user rights.
			done <- result{err: errors.Join(ErrRestore, err)}
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

func become(c Creds) error {
	groups := c.Groups
	if len(groups) == 0 {
		groups = []uint32{c.GID}
	}
	if err := setgroups(groups); err != nil {
		return fmt.Errorf("fsuser: setgroups: %w", err)
	}
	if err := setfs(unix.SYS_SETFSGID, c.GID); err != nil {
		return fmt.Errorf("fsuser: setfsgid %d: %w", c.GID, err)
	}
	if err := setfs(unix.SYS_SETFSUID, c.UID); err != nil {
		return fmt.Errorf("fsuser: setfsuid %d: %w", c.UID, err)
	}
	return nil
}

// restore switches the thread back to root. fsuid first: it brings back
// the capabilities the other calls need.
func restore(groups []int) error {
	if err := setfs(unix.SYS_SETFSUID, 0); err != nil {
		return fmt.Errorf("setfsuid 0: %w", err)
	}
	if err := setfs(unix.SYS_SETFSGID, 0); err != nil {
		return fmt.Errorf("setfsgid 0: %w", err)
	}
	g := make([]uint32, len(groups))
	for i, v := range groups {
		g[i] = uint32(v)
	}
	if err := setgroups(g); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	return nil
}

// setgroups changes the supplementary groups of the calling thread only.
func setgroups(g []uint32) error {
	var p unsafe.Pointer
	if len(g) > 0 {
		p = unsafe.Pointer(&g[0])
	}
	_, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(g)), uintptr(p), 0)
	if e != 0 {
		return e
	}
	return nil
}

// setfs calls setfsuid/setfsgid, which report no errors: a second call
// returns the id now in force, which must be the one asked for.
func setfs(trap uintptr, id uint32) error {
	unix.RawSyscall(trap, uintptr(id), 0, 0)
	cur, _, _ := unix.RawSyscall(trap, uintptr(id), 0, 0)
	if uint32(cur) != id {
		return fmt.Errorf("id is %d, want %d", uint32(cur), id)
	}
	return nil
}

// ErrNotDir reports a path component that exists but is not a directory.
var ErrNotDir = errors.New("path is a file")

// MkdirAll creates dir and its missing parents (mode 0755, umask applies)
// and chowns each directory it created to uid:gid; existing directories are
// left alone. Call it inside Do so the kernel checks the user's rights. It
// reports whether dir itself was created.
func MkdirAll(dir string, uid, gid uint32) (bool, error) {
	var st unix.Stat_t
	err := unix.Stat(dir, &st)
	if err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return false, fmt.Errorf("%w: %s", ErrNotDir, dir)
		}
		return false, nil
	}
	// ENOTDIR: some parent is a file; the walk up names which one.
	if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
		return false, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if parent := parentDir(dir); parent != dir {
		if _, err := MkdirAll(parent, uid, gid); err != nil {
			return false, err
		}
	}
	if err := unix.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// Lost a race with another creator: fine if it is a directory.
			if serr := unix.Stat(dir, &st); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				return false, nil
			}
			return false, fmt.Errorf("%w: %s", ErrNotDir, dir)
		}
		return false, &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	// Only the group can differ from what the kernel set (setgid parents);
	// the owner may always give a file to one of its own groups.
	if err := unix.Lchown(dir, int(uid), int(gid)); err != nil {
		return true, &os.PathError{Op: "chown", Path: dir, Err: err}
	}
	return true, nil
}

func parentDir(p string) string {
	i := len(p) - 1
	for i > 0 && p[i] == '/' {
		i--
	}
	for i >= 0 && p[i] != '/' {
		i--
	}
	for i > 0 && p[i] == '/' {
		i--
	}
	if i < 0 {
		return "."
	}
	return p[:i+1]
}
