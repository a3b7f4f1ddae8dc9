// Package bench holds benchmarks that print the numbers quoted in closing
// notes. They assert nothing about speed.
package bench

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildEnvd builds cmd/envd once per benchmark run.
func buildEnvd(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "envd")
	build := exec.Command("go", "build", "-o", bin, "../cmd/envd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as shipped in guest images
	out, err := build.CombinedOutput()
	if err != nil {
		b.Fatalf("build envd: %v\n%s", err, out)
	}
	return bin
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// BenchmarkStartToHealthy measures exec of envd to the first 200 from
// /health, and the idle RSS after start-up.
func BenchmarkStartToHealthy(b *testing.B) {
	bin := buildEnvd(b)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	var lat []time.Duration
	var rss []int
	for b.Loop() {
		port := freePort(b)
		start := time.Now()
		cmd := exec.Command(bin, "-isnotfc", "-no-cgroups", "-port", strconv.Itoa(port))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
		for {
			res, err := client.Get(url)
			if err == nil {
				res.Body.Close()
				if res.StatusCode == 200 {
					break
				}
			}
			if time.Since(start) > 10*time.Second {
				b.Fatal("envd not healthy after 10s")
			}
			time.Sleep(200 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
		time.Sleep(300 * time.Millisecond) // let start-up settle before reading RSS
		rss = append(rss, rssKiB(cmd.Process.Pid))
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Ints(rss)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-to-healthy-p50")
	b.ReportMetric(float64(rss[len(rss)/2])/1024, "MiB-idle-rss")
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}
