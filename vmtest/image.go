// Package vmtest boots envd as PID 1 in a QEMU microVM and drives its
// lifecycle (pause, snapshot, restore) over QMP, for the lifecycle tests
// and for cmd/envd-vm.
package vmtest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/envd-go/envd/internal/pid1"
)

// Kernel is an unpacked Debian cloud kernel (vmtest/fetch-kernel).
type Kernel struct {
	Vmlinuz    string
	ModulesDir string // lib/modules/<version>
	Version    string
}

// CacheDir is where vmtest/fetch-kernel unpacks kernels.
func CacheDir() string {
	if d := os.Getenv("ENVD_VM_CACHE"); d != "" {
		return d
	}
	return "/var/cache/envd-vmtest"
}

// FindKernel locates the cached kernel, fetching it when missing.
func FindKernel(repoRoot string) (Kernel, error) {
	dir := filepath.Join(CacheDir(), "current")
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		out, err := exec.Command(filepath.Join(repoRoot, "vmtest", "fetch-kernel")).CombinedOutput()
		if err != nil {
			return Kernel{}, fmt.Errorf("fetch kernel: %v: %s", err, out)
		}
	}
	vm, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(vm) != 1 || len(mods) != 1 {
		return Kernel{}, fmt.Errorf("kernel cache %s incomplete (vmlinuz %v, modules %v)", dir, vm, mods)
	}
	return Kernel{Vmlinuz: vm[0], ModulesDir: mods[0], Version: filepath.Base(mods[0])}, nil
}

// RepoRoot is the module root (where go.mod is).
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the envd module")
	}
	return filepath.Dir(gomod), nil
}

// BuildEnvd builds a static envd binary into out.
func BuildEnvd(repoRoot, out string) error { return buildStatic(repoRoot, out, "./cmd/envd") }

// AllocLoad is the guest path of the allocation-heavy Go load
// (vmtest/cmd/vmtest-alloc) when BuildInitramfs was given it.
const AllocLoad = "/usr/local/bin/vmtest-alloc"

// BuildAllocLoad builds vmtest/cmd/vmtest-alloc statically into out.
func BuildAllocLoad(repoRoot, out string) error {
	return buildStatic(repoRoot, out, "./vmtest/cmd/vmtest-alloc")
}

func buildStatic(repoRoot, out, pkg string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v: %s", pkg, err, b)
	}
	return nil
}

// InitCmd is the program the test VMs pass to envd's -cmd.
const InitCmd = "/usr/local/bin/vmtest-init-cmd"

// GuestModules are the drivers the microVM needs; their dependencies are
// added from each module's .modinfo.
var GuestModules = []string{"virtio_mmio", "virtio_pci", "virtio_net", "virtio_console", "virtio_blk"}

// BuildInitramfs writes an initramfs with envd as /init, static busybox
// with its applet links, the virtio modules and a passwd with root and
// user (uid 1000). Extra maps guest paths to host files to add.
func BuildInitramfs(out, envd string, k Kernel, extra map[string]string) error {
	f := NewInitramfs()
	if err := f.CopyFile("init", 0o755, envd); err != nil {
		return err
	}
	for guest, hostPath := range extra {
		if err := f.CopyFile(guest, 0o755, hostPath); err != nil {
			return err
		}
	}
	// Without /dev/console the kernel starts init with fds 0-2 closed.
	f.CharDev("dev/console", 0o600, 5, 1)
	f.CharDev("dev/null", 0o666, 1, 3)
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "usr/bin", "usr/sbin", "sbin", "var/tmp"} {
		f.Dir(d, 0o755, 0, 0)
	}
	f.Dir("tmp", 0o1777, 0, 0)
	f.Dir("root", 0o700, 0, 0)
	f.Dir("home/user", 0o755, 1000, 1000)
	f.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"))
	f.File("etc/group", 0o644, []byte("root:x:0:\ntty:x:5:\nuser:x:1000:\n"))
	f.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n"))
	// Started by envd's -cmd in every test VM.
	f.File(InitCmd[1:], 0o755, []byte("#!/bin/sh\nwhile :; do echo init-cmd alive; sleep 1; done\n"))

	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox-static not installed (scripts/setup): %w", err)
	}
	if !isStatic(bb) {
		return fmt.Errorf("%s is not the static busybox (install busybox-static)", bb)
	}
	if err := f.CopyFile("bin/busybox", 0o755, bb); err != nil {
		return err
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(list))
	for sc.Scan() {
		if a := sc.Text(); a != "" && a != "busybox" {
			f.Symlink("bin/"+a, "busybox")
		}
	}

	mods, err := moduleClosure(k.ModulesDir, GuestModules)
	if err != nil {
		return err
	}
	for _, m := range mods {
		if err := f.CopyFile("lib/modules/"+filepath.Base(m.Path), 0o644, m.Path); err != nil {
			return err
		}
	}

	w, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create initramfs: %w", err)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := f.WriteTo(bw); err != nil {
		w.Close()
		return fmt.Errorf("write initramfs: %w", err)
	}
	if err := bw.Flush(); err != nil {
		w.Close()
		return fmt.Errorf("write initramfs: %w", err)
	}
	return w.Close()
}

// isStatic reports whether the ELF at p has no program interpreter.
func isStatic(p string) bool {
	f, err := elf.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, ph := range f.Progs {
		if ph.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// moduleClosure finds the named modules below dir plus everything they
// depend on (dependencies not found are built into the kernel).
func moduleClosure(dir string, names []string) ([]pid1.ModuleInfo, error) {
	byName := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			byName[strings.ReplaceAll(strings.TrimSuffix(filepath.Base(p), ".ko"), "-", "_")] = p
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list modules: %w", err)
	}
	seen := map[string]bool{}
	var out []pid1.ModuleInfo
	queue := append([]string(nil), names...)
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		p, ok := byName[n]
		if seen[n] || !ok {
			continue
		}
		seen[n] = true
		mi, err := pid1.ReadModuleInfo(p)
		if err != nil {
			return nil, err
		}
		out = append(out, mi)
		queue = append(queue, mi.Depends...)
	}
	for _, n := range names {
		if !seen[n] {
			return nil, fmt.Errorf("module %s not found in %s", n, dir)
		}
	}
	return out, nil
}
