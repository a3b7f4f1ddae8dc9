package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/ports"
)

// portsChildEnv switches the test binary into the idle child used by
// BenchmarkPortScannerIdle ("on": with a Forwarder, "off": without).
const portsChildEnv = "ENVD_BENCH_PORTS_CHILD"

// init, not TestMain, so the package's other benchmarks keep their own.
func init() {
	if mode := os.Getenv(portsChildEnv); mode != "" {
		os.Exit(portsIdleChild(mode))
	}
}

// portsIdleChild runs in its own network namespace: lo up with the guest
// address on it, five loopback-only listeners (idle), and with mode "on" a
// Forwarder mirroring them. Each line on stdin is answered with the
// process's CPU time (getrusage, µs).
func portsIdleChild(mode string) int {
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "169.254.0.21/32", "dev", "lo"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ip %v: %v %s\n", args, err, out)
			return 1
		}
	}
	for range 5 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer ln.Close()
	}
	if mode == "on" {
		f, err := ports.New(ports.Options{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		f.Start()
		defer f.Stop()
		for deadline := time.Now().Add(30 * time.Second); f.Stats().Forwarded != 5; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				fmt.Fprintln(os.Stderr, "listeners not forwarded")
				return 1
			}
		}
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		fmt.Println(ru.Utime.Nano()/1000 + ru.Stime.Nano()/1000)
	}
	return 0
}

type idleChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startIdleChild(b *testing.B, mode string) *idleChild {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), portsChildEnv+"="+mode)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &idleChild{cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	b.Cleanup(func() { in.Close(); cmd.Wait() })
	if !c.out.Scan() || c.out.Text() != "ready" {
		b.Fatalf("child %s did not start: %q", mode, c.out.Text())
	}
	return c
}

func (c *idleChild) cpu(b *testing.B) time.Duration {
	b.Helper()
	fmt.Fprintln(c.in)
	if !c.out.Scan() {
		b.Fatal("child gone")
	}
	us, err := strconv.ParseInt(c.out.Text(), 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(us) * time.Microsecond
}

// procCPU is the on-CPU time of all of pid's threads (first field of
// /proc/PID/task/*/schedstat, ns), precise where utime+stime is 10 ms ticks.
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, t := range tasks {
		s, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // thread exited
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(s))[0], 10, 64)
		total += ns
	}
	return time.Duration(total)
}

// BenchmarkPortScannerIdle measures the idle CPU cost of the port scanner:
// the same process with and without a Forwarder (1 s scans, 5 forwarded
// idle ports, sock_diag), and a whole envd in an empty namespace, over
// ENVD_BENCH_IDLE_SECONDS (default 30) seconds. Reported as CPU ms per
// second of wall time.
func BenchmarkPortScannerIdle(b *testing.B) {
	secs := 30
	if v, err := strconv.Atoi(os.Getenv("ENVD_BENCH_IDLE_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	bin := buildEnvd(b)
	for b.Loop() {
		on, off := startIdleChild(b, "on"), startIdleChild(b, "off")
		envd := exec.Command(bin, "-isnotfc", "-no-cgroups", "-port", "49983")
		envd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		if err := envd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { envd.Process.Kill(); envd.Wait() })
		time.Sleep(2 * time.Second) // past start-up work
		on0, off0, envd0 := on.cpu(b), off.cpu(b), procCPU(b, envd.Process.Pid)
		start := time.Now()
		time.Sleep(time.Duration(secs) * time.Second)
		wall := time.Since(start).Seconds()
		perSec := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / wall }
		onR, offR := perSec(on.cpu(b)-on0), perSec(off.cpu(b)-off0)
		envdR := perSec(procCPU(b, envd.Process.Pid) - envd0)
		b.ReportMetric(onR, "cpu-ms/s-scanner-on")
		b.ReportMetric(offR, "cpu-ms/s-scanner-off")
		b.ReportMetric(onR-offR, "cpu-ms/s-scanner")
		b.ReportMetric(envdR, "cpu-ms/s-envd-idle")
	}
}
