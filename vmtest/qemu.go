package vmtest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// GuestPort is envd's port inside the VM.
const GuestPort = 49983

// Config describes one VM. The same Config restores its snapshots: QEMU
// needs an identical command line on the incoming side.
type Config struct {
	Dir    string // scratch: QMP socket, console log, RAM file
	Kernel Kernel
	Initrd string
	MemMB  int // default 256
	// SharedMem keeps guest RAM in a file in /dev/shm and snapshots skip
	// it (x-ignore-shared), like Firecracker's memory file: snapshots are
	// tiny and restore maps the file. Without it RAM goes into the
	// migration stream.
	SharedMem bool
	// MMDSAddr is the host address ("127.0.0.1:port") of the MMDS
	// stand-in; the guest reaches it at 169.254.169.254:80 on eth1.
	MMDSAddr string
	// InitArgs are envd flags (passed after "--" on the kernel command line).
	InitArgs []string
}

// VM is a running (or snapshotted) QEMU microVM with envd as PID 1.
type VM struct {
	cfg      Config
	HostPort int // 127.0.0.1 port forwarded to envd
	gen      int // qemu processes started so far
	cmd      *exec.Cmd
	exited   chan struct{}
	qmp      *QMP
	memPath  string
}

// Boot starts a VM; it returns once QMP answers (not when envd is ready).
func Boot(cfg Config) (*VM, error) {
	if cfg.MemMB == 0 {
		cfg.MemMB = 256
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	v := &VM{cfg: cfg, HostPort: port}
	if cfg.SharedMem {
		f, err := os.CreateTemp("/dev/shm", "envd-vm-*.mem")
		if err != nil {
			return nil, fmt.Errorf("ram file: %w", err)
		}
		f.Close()
		v.memPath = f.Name()
	}
	if err := v.launch(false); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// URL is envd's base URL on the host.
func (v *VM) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", v.HostPort) }

// KVMUsable reports whether /dev/kvm is a real KVM (not the PVM backend
// of a nested guest, under which stock kernels hang).
func KVMUsable() bool {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func hostTSCkHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(mhz * 1000)
		}
	}
	return 0
}

func (v *VM) args(incoming bool) []string {
	c := v.cfg
	machine := "microvm,x-option-roms=off,pit=on,pic=off,isa-serial=on,rtc=on,acpi=on"
	var a []string
	if v.memPath != "" {
		machine += ",memory-backend=mem"
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", c.MemMB, v.memPath))
	}
	accel, cpu := "tcg,thread=multi,tb-size=64", "max"
	if KVMUsable() {
		accel, cpu = "kvm", "host"
	}
	kargs := []string{"console=ttyS0", "panic=-1", "quiet", "tsc=reliable",
		"ip=10.0.2.15::10.0.2.2:255.255.255.0:capsule:eth0:off"}
	if khz := hostTSCkHz(); khz > 0 {
		// microvm under TCG hangs calibrating the TSC without it.
		kargs = append(kargs, fmt.Sprintf("tsc_early_khz=%d", khz))
	}
	if c.MMDSAddr != "" {
		kargs = append(kargs, "ip=169.254.0.15:::255.255.0.0::eth1:off")
	}
	if len(c.InitArgs) > 0 {
		kargs = append(kargs, "--")
		kargs = append(kargs, c.InitArgs...)
	}
	a = append(a,
		"-M", machine, "-accel", accel, "-cpu", cpu,
		"-m", fmt.Sprintf("%dM", c.MemMB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-no-reboot", // a guest reboot ends QEMU, as it ends Firecracker
		"-chardev", "file,id=con,path="+filepath.Join(c.Dir, "console.log")+",append=on", "-serial", "chardev:con",
		"-kernel", c.Kernel.Vmlinuz, "-initrd", c.Initrd,
		"-append", strings.Join(kargs, " "),
		// restrict=on: the guest reaches nothing but the forwards.
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:%d-:%d", v.HostPort, GuestPort),
		"-device", "virtio-net-device,netdev=n0,mac=52:54:00:00:00:01",
	)
	if c.MMDSAddr != "" {
		a = append(a,
			"-netdev", "user,id=n1,restrict=on,net=169.254.0.0/16,host=169.254.0.1,dhcpstart=169.254.0.100,"+
				"guestfwd=tcp:169.254.169.254:80-cmd:busybox nc "+strings.Replace(c.MMDSAddr, ":", " ", 1),
			"-device", "virtio-net-device,netdev=n1,mac=52:54:00:00:00:02")
	}
	a = append(a, "-qmp", "unix:"+v.qmpPath()+",server=on,wait=off")
	if incoming {
		a = append(a, "-S", "-incoming", "defer")
	}
	return a
}

func (v *VM) qmpPath() string { return filepath.Join(v.cfg.Dir, "qmp.sock") }

func (v *VM) launch(incoming bool) error {
	v.gen++
	os.Remove(v.qmpPath())
	stderr, err := os.Create(filepath.Join(v.cfg.Dir, fmt.Sprintf("qemu-%d.stderr", v.gen)))
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd := exec.Command("qemu-system-x86_64", v.args(incoming)...)
	cmd.Stderr, cmd.Stdout = stderr, stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	v.cmd = cmd
	v.exited = make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		close(done)
	}(v.exited)
	q, err := DialQMP(v.qmpPath(), 30*time.Second)
	if err != nil {
		return fmt.Errorf("%w (qemu stderr: %s)", err, v.Stderr())
	}
	v.qmp = q
	return nil
}

// Exited waits up to timeout for QEMU to end by itself (guest power-off
// or reboot).
func (v *VM) Exited(timeout time.Duration) bool {
	if v.cmd == nil {
		return true
	}
	select {
	case <-v.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Stderr returns the current QEMU's stderr (for failure messages).
func (v *VM) Stderr() string {
	b, _ := os.ReadFile(filepath.Join(v.cfg.Dir, fmt.Sprintf("qemu-%d.stderr", v.gen)))
	return string(b)
}

// Console returns the guest serial console so far.
func (v *VM) Console() string {
	b, _ := os.ReadFile(filepath.Join(v.cfg.Dir, "console.log"))
	return string(b)
}

// Pause stops the vCPUs (QMP stop): all guest clocks stop with them.
func (v *VM) Pause() error { _, err := v.qmp.Run("stop", nil); return err }

// Resume continues a paused VM (QMP cont).
func (v *VM) Resume() error { _, err := v.qmp.Run("cont", nil); return err }

func (v *VM) ignoreShared() error {
	if v.memPath == "" {
		return nil
	}
	_, err := v.qmp.Run("migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}})
	return err
}

// SnapshotTimes are the phases of Snapshot and Restore.
type SnapshotTimes struct {
	Stopped time.Time     // when QMP stop returned (guest clocks frozen)
	Save    time.Duration // stop → migration completed
	Quit    time.Duration // quit → process gone
}

// Snapshot pauses the VM, saves its state to path and ends this QEMU,
// as a Firecracker pause+snapshot does. Restore brings it back.
func (v *VM) Snapshot(path string) (SnapshotTimes, error) {
	var t SnapshotTimes
	start := time.Now()
	if err := v.Pause(); err != nil {
		return t, err
	}
	t.Stopped = time.Now()
	if _, err := v.qmp.Run("migrate-set-parameters", map[string]any{"max-bandwidth": int64(10) << 30}); err != nil {
		return t, err
	}
	if err := v.ignoreShared(); err != nil {
		return t, err
	}
	if _, err := v.qmp.Run("migrate", map[string]any{"uri": "exec:cat > " + path}); err != nil {
		return t, err
	}
	if err := v.qmp.WaitMigration(60 * time.Second); err != nil {
		return t, fmt.Errorf("%w (qemu stderr: %s)", err, v.Stderr())
	}
	t.Save = time.Since(start)
	start = time.Now()
	if err := v.stopQEMU(); err != nil {
		return t, err
	}
	t.Quit = time.Since(start)
	return t, nil
}

// RestoreTimes are the phases of Restore.
type RestoreTimes struct {
	Launch time.Duration // qemu start → QMP ready
	Load   time.Duration // migrate-incoming → completed
}

// Restore starts a new QEMU with the same command line, loads path and
// continues the guest. It returns right after "cont".
func (v *VM) Restore(path string) (RestoreTimes, error) {
	var t RestoreTimes
	start := time.Now()
	if err := v.launch(true); err != nil {
		return t, err
	}
	t.Launch = time.Since(start)
	start = time.Now()
	if err := v.ignoreShared(); err != nil {
		return t, err
	}
	if _, err := v.qmp.Run("migrate-incoming", map[string]any{"uri": "exec:cat " + path}); err != nil {
		return t, err
	}
	if err := v.qmp.WaitMigration(60 * time.Second); err != nil {
		return t, fmt.Errorf("%w (qemu stderr: %s)", err, v.Stderr())
	}
	t.Load = time.Since(start)
	return t, v.Resume()
}

// stopQEMU asks QEMU to quit and waits for the process (it holds the
// forwarded port the next QEMU needs); kills it after 10 s.
func (v *VM) stopQEMU() error {
	if v.cmd == nil {
		return nil
	}
	if v.qmp != nil {
		v.qmp.Run("quit", nil)
		v.qmp.Close()
		v.qmp = nil
	}
	select {
	case <-v.exited:
	case <-time.After(10 * time.Second):
		v.cmd.Process.Kill()
		<-v.exited
	}
	v.cmd = nil
	return nil
}

// Close ends QEMU and removes the RAM file.
func (v *VM) Close() {
	if v.cmd != nil {
		if v.qmp != nil {
			v.qmp.Close()
			v.qmp = nil
		}
		v.cmd.Process.Kill()
		<-v.exited
		v.cmd = nil
	}
	if v.memPath != "" {
		os.Remove(v.memPath)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
