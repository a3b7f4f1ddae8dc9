package pid1

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one file system PID 1 mounts when it is missing.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	Mode                   os.FileMode // of Target when it has to be created
}

const nsn = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// DefaultMounts is what a minimal guest needs, in mount order.
var DefaultMounts = []Mount{
	{"proc", "/proc", "proc", nsn, "", 0o555},
	{"sysfs", "/sys", "sysfs", nsn, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", nsn, "", 0o555},
}

// MountAll mounts every entry whose target is not a mount point yet.
// Errors are collected; later mounts are still attempted.
func MountAll(ms []Mount) error {
	var errs []error
	for _, m := range ms {
		mounted, err := isMountPoint(m.Target)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if mounted {
			continue
		}
		if err := os.MkdirAll(m.Target, m.Mode|0o700); err != nil {
			errs = append(errs, fmt.Errorf("mkdir %s: %w", m.Target, err))
			continue
		}
		if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err))
		}
	}
	return errors.Join(errs...)
}

// isMountPoint consults the calling thread's mountinfo; before /proc is mounted
// nothing (but the root) is mounted, which is exactly the answer.
func isMountPoint(target string) (bool, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	return mountinfoHas(bufio.NewScanner(f), target)
}

func mountinfoHas(sc *bufio.Scanner, target string) (bool, error) {
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 4 && unescapeMount(f[4]) == target {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + c - '0'
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
