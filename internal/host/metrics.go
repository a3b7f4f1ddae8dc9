// Package host reads facts about the guest machine: CPU and memory metrics,
// disk usage, and (elsewhere in the package) MMDS metadata and the clock.
package host

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Metrics is the body of GET /metrics.
type Metrics struct {
	Timestamp   int64   `json:"ts"`
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotal    uint64  `json:"mem_total"`
	MemUsed     uint64  `json:"mem_used"`
	MemCache    uint64  `json:"mem_cache"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	DiskUsed    uint64  `json:"disk_used"`
	DiskTotal   uint64  `json:"disk_total"`
	// *PortStats adds the port forwarder's fields when set (nil: omitted).
	*PortStats
}

// PortStats are the port forwarder's counters, extra /metrics fields.
type PortStats struct {
	PortsForwarded        int    `json:"ports_forwarded"`         // ports mirrored onto the guest address
	PortsConnections      int64  `json:"ports_connections"`       // live forwarded connections
	PortsConnectionsTotal uint64 `json:"ports_connections_total"` // accepted since start-up
}

// CPUSampler reads /proc/stat once per interval in its own goroutine and
// keeps the last busy percentage, so /metrics never blocks on sampling.
type CPUSampler struct {
	interval time.Duration

	mu      sync.Mutex
	pct     float64
	last    cpuTimes
	hasLast bool
	stop    chan struct{}
	done    chan struct{}
}

// NewCPUSampler returns a stopped sampler; call Start.
func NewCPUSampler(interval time.Duration) *CPUSampler {
	return &CPUSampler{interval: interval}
}

// Start begins sampling. Calling Start on a running sampler does nothing.
func (s *CPUSampler) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		return
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	s.hasLast = false
	go s.run(s.stop, s.done)
}

// Stop ends sampling and waits for the goroutine. Used before a snapshot;
// Start after restore begins with a fresh baseline, so no delta spans the gap.
func (s *CPUSampler) Stop() {
	s.mu.Lock()
	stop, done := s.stop, s.done
	s.stop, s.done = nil, nil
	s.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-done
}

// Percent returns the busy share of all CPUs over the last interval (0–100).
func (s *CPUSampler) Percent() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pct
}

func (s *CPUSampler) run(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	s.sample()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.sample()
		}
	}
}

func (s *CPUSampler) sample() {
	cur, err := readCPUTimes()
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hasLast {
		dt := cur.total - s.last.total
		if dt > 0 {
			busy := (cur.total - cur.idle) - (s.last.total - s.last.idle)
			s.pct = math.Round(math.Max(0, math.Min(100, float64(busy)/float64(dt)*100))*100) / 100
		}
	}
	s.last, s.hasLast = cur, true
}

type cpuTimes struct{ total, idle uint64 }

// readCPUTimes sums the aggregate cpu line like gopsutil: total excludes
// guest and guest_nice (already counted in user/nice), idle includes iowait.
func readCPUTimes() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("host: unexpected /proc/stat line %q", line)
	}
	var t cpuTimes
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		if i >= 8 { // guest, guest_nice
			break
		}
		t.total += v
		if i == 3 || i == 4 { // idle, iowait
			t.idle += v
		}
	}
	return t, nil
}

// ReadMetrics builds the /metrics body from the sampler, /proc/meminfo and
// statfs("/").
func ReadMetrics(s *CPUSampler) (Metrics, error) {
	m := Metrics{Timestamp: time.Now().Unix(), CPUCount: runtime.NumCPU(), CPUUsedPct: s.Percent()}
	mem, err := readMeminfo()
	if err != nil {
		return m, err
	}
	total, free, buffers := mem["MemTotal"], mem["MemFree"], mem["Buffers"]
	cached := mem["Cached"] + mem["SReclaimable"]
	m.MemTotal, m.MemCache = total, cached
	if used := total - free - buffers - cached; total >= free+buffers+cached {
		m.MemUsed = used
	} else if avail, ok := mem["MemAvailable"]; ok && avail <= total {
		m.MemUsed = total - avail
	}
	m.MemTotalMiB, m.MemUsedMiB = m.MemTotal>>20, m.MemUsed>>20
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return m, fmt.Errorf("host: statfs /: %w", err)
	}
	bs := uint64(st.Bsize)
	m.DiskTotal = st.Blocks * bs
	m.DiskUsed = m.DiskTotal - st.Bavail*bs
	return m, nil
}

// readMeminfo returns /proc/meminfo values in bytes.
func readMeminfo() (map[string]uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(rest)
		if len(fs) == 0 {
			continue
		}
		v, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fs) > 1 && fs[1] == "kB" {
			v *= 1024
		}
		out[k] = v
	}
	return out, sc.Err()
}
