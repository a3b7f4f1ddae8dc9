package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultPath is the PATH systemd and wrenn's init give envd.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// IsPID1 reports whether envd is the init process of its PID namespace.
func IsPID1() bool { return os.Getpid() == 1 }

// SetDefaultPath sets PATH to DefaultPath when it is empty or unset, so
// lookups work whether envd came from systemd, tini or the kernel.
func SetDefaultPath() {
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", DefaultPath)
	}
}

// Boot prepares a minimal guest for envd as PID 1: mounts, cgroup
// controllers, kernel modules under modulesDir and the network described by
// the kernel command line's ip= arguments. Each step is best-effort: a
// failure is logged and returned joined, later steps still run, because a
// half-prepared guest that answers /health beats a kernel panic.
func Boot(log *slog.Logger, modulesDir string) error {
	var errs []error
	if err := MountAll(DefaultMounts); err != nil {
		errs = append(errs, err)
	}
	if err := EnableControllers("/sys/fs/cgroup", "cpu", "memory", "io"); err != nil {
		errs = append(errs, err)
	}
	if n, err := LoadModules(modulesDir); err != nil {
		errs = append(errs, err)
	} else if n > 0 {
		log.Info("loaded kernel modules", "count", n)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		errs = append(errs, fmt.Errorf("read kernel command line: %w", err))
	}
	// The kernel hands unknown name=value parameters to init as environment;
	// ip= is ours, children should not inherit it.
	os.Unsetenv("ip")
	nets, err := ParseIPArgs(string(cmdline))
	if err != nil {
		errs = append(errs, err)
	}
	if err := ConfigureNetwork(nets); err != nil {
		errs = append(errs, err)
	}
	err = errors.Join(errs...)
	if err != nil {
		log.Error("pid1 boot incomplete", "error", err)
	}
	return err
}

// EnableControllers writes +ctrl for each controller to the root
// cgroup.subtree_control, one at a time so a missing one does not block the
// others. Controllers the kernel lacks are skipped.
func EnableControllers(root string, ctrls ...string) error {
	avail, err := os.ReadFile(root + "/cgroup.controllers")
	if err != nil {
		return fmt.Errorf("read cgroup controllers: %w", err)
	}
	have := strings.Fields(string(avail))
	var errs []error
	for _, c := range ctrls {
		if !contains(have, c) {
			continue
		}
		if err := os.WriteFile(root+"/cgroup.subtree_control", []byte("+"+c), 0); err != nil {
			errs = append(errs, fmt.Errorf("enable cgroup controller %s: %w", c, err))
		}
	}
	return errors.Join(errs...)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// PowerOff ends the machine; PID 1 must never exit (the kernel panics).
// Firecracker has no power-off device and ends on reboot, so restart is
// the fallback.
func PowerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {} // reboot(2) failed: still do not exit
}
