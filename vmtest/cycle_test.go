package vmtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// Workload kept running across every snapshot: a process streaming lines,
// one flooding output through envd, and two allocating a lot of memory
// (dd's big buffers, and a Go program that verifies every buffer it wrote
// while its heap is collected and scavenged, vmtest/cmd/vmtest-alloc).
const (
	streamerScript = `i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.05; done`
	floodScript    = `while :; do seq 1 20000; done`
	allocScript    = `while :; do dd if=/dev/zero of=/dev/null bs=24M count=2 2>/dev/null; done`
)

func startWorkload(t *testing.T, r *rpc) {
	t.Helper()
	for tag, script := range map[string]string{"streamer": streamerScript, "flood": floodScript, "alloc": allocScript, "goalloc": "exec " + AllocLoad} {
		sub, err := r.startStream(t, tag, script)
		if err != nil {
			t.Fatalf("start %s: %v", tag, err)
		}
		if tag == "streamer" {
			if err := sub.waitFor("tick", 60*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// clockSkew is guest wall clock minus host wall clock, from /debug/conns,
// with the request's round trip as the error bound.
// The sample with the smallest round trip of five is used, as NTP does.
func (v *testVM) clockSkew() (skew, rtt time.Duration) {
	v.t.Helper()
	rtt = time.Hour
	for range 5 {
		before := time.Now()
		d := v.debug()
		after := time.Now()
		if r := after.Sub(before); r < rtt {
			mid := before.Add(r / 2)
			skew, rtt = time.Unix(0, d.NowUnixNano).Sub(mid), r
		}
	}
	return skew, rtt
}

// idleConn opens a keep-alive connection and leaves it idle in the pool.
func (v *testVM) idleConn() *http.Client {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Hour}}
	resp, err := c.Get(v.URL() + "/health")
	if err != nil {
		v.t.Fatalf("idle conn: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	v.t.Cleanup(c.CloseIdleConnections)
	return c
}

type cycleResult struct {
	healthy    time.Duration // cont → first /health 200
	prepare    time.Duration
	snapshot   SnapshotTimes
	restore    RestoreTimes
	skew       time.Duration
	fds, gor   int
	closedPre  int
	recoverUs  int64
	guestAfter time.Duration // guest time from cont to recovery start (≈)
	skewBefore time.Duration // before /init
	initTook   time.Duration
	execRTT    time.Duration
	streamWait time.Duration
}

// TestSnapshotCycles runs ENVD_VM_CYCLES (default 20) prepare → snapshot →
// restore → /health → /init cycles with guest RAM in a shared file, as
// Firecracker keeps it (ENVD_VM_FULL_SNAPSHOT=1: RAM in the stream).
func TestSnapshotCycles(t *testing.T) {
	runCycles(t, envInt("ENVD_VM_CYCLES", 20), os.Getenv("ENVD_VM_FULL_SNAPSHOT") == "")
}

// TestSnapshotCyclesFullRAM: a few cycles with all of guest RAM in the
// migration stream, a restore that rebuilds memory from the file.
func TestSnapshotCyclesFullRAM(t *testing.T) {
	runCycles(t, 3, false)
}

func runCycles(t *testing.T, n int, sharedMem bool) {
	vm, boot := bootVM(t, vmOpts{sharedMem: sharedMem})
	t.Logf("boot to healthy: %v", boot)
	vm.initNow()
	r := vm.newRPC()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	out, code, err := r.exec(ctx, "/bin/echo", "hello")
	cancel()
	if err != nil || code != 0 || out != "hello\n" {
		t.Fatalf("exec before snapshots: %q %d %v", out, code, err)
	}
	if _, code, err := r.exec(context.Background(), "/bin/mkdir", "-p", "/tmp/watched"); err != nil || code != 0 {
		t.Fatalf("mkdir: %d %v", code, err)
	}
	startWorkload(t, r)

	snap := filepath.Join(vm.dir, "snapshot")
	var results []cycleResult
	failed, reinits := 0, 0
	var closedTotal uint64
	defer func() {
		var hs []time.Duration
		for _, c := range results {
			hs = append(hs, c.healthy)
		}
		line := fmt.Sprintf("cycles: %d ok, %d failed; restore->healthy p50 %d ms p99 %d ms; pre-snapshot connections closed: %d",
			len(results)-failed, failed+(n-len(results)), pct(hs, 50).Milliseconds(), pct(hs, 99).Milliseconds(), closedTotal)
		t.Log(line)
		fmt.Println(line)
		t.Logf("cycles needing a second /init for the 50 ms clock bound: %d", reinits)
	}()

	for i := 0; i < n; i++ {
		var res cycleResult
		cr := vm.newRPC()
		// Open before the snapshot: a subscriber to the streamer, an idle
		// keep-alive connection and a directory watch.
		sub, err := cr.connectStream(t, "streamer")
		if err != nil {
			t.Fatalf("cycle %d: connect streamer: %v", i, err)
		}
		if err := sub.waitFor("tick", 30*time.Second); err != nil {
			t.Fatalf("cycle %d: streamer before snapshot: %v", i, err)
		}
		idle := vm.idleConn()
		w, err := cr.watchDir(t, "/tmp/watched")
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}

		start := time.Now()
		if st := vm.do("POST", "/snapshot/prepare", nil, nil); st != 204 {
			t.Fatalf("cycle %d: prepare: status %d", i, st)
		}
		res.prepare = time.Since(start)
		prepared := time.Now()
		vm.http.CloseIdleConnections() // as wrenn's host does before pausing
		if res.snapshot, err = vm.Snapshot(snap); err != nil {
			t.Fatalf("cycle %d: snapshot: %v", i, err)
		}
		if res.restore, err = vm.Restore(snap); err != nil {
			t.Fatalf("cycle %d: restore: %v", i, err)
		}
		res.healthy = vm.waitHealthy(60 * time.Second)
		res.skewBefore, _ = vm.clockSkew()
		initStart := time.Now()
		vm.initNow()
		res.initTook = time.Since(initStart)

		bad := false
		fail := func(format string, args ...any) {
			t.Errorf("cycle %d: "+format, append([]any{i}, args...)...)
			bad = true
		}
		skew, rtt := vm.clockSkew()
		if abs(skew) > 50*time.Millisecond+rtt/2 {
			// envd steps only when more than 50 ms behind the timestamp
			// as it arrives, so the slow first request after a restore
			// can leave the clock 50 ms + its one-way delay behind. A
			// second /init (warm path) closes that gap; count how often.
			t.Logf("cycle %d: skew %v after the first /init (%v before, /init took %v): second /init",
				i, skew, res.skewBefore, res.initTook)
			reinits++
			vm.initNow()
			skew, rtt = vm.clockSkew()
		}
		res.skew = skew
		if abs(skew) > 50*time.Millisecond+rtt/2 {
			fail("guest clock off by %v after /init (rtt %v; %v before, /init took %v)", skew, rtt, res.skewBefore, res.initTook)
		}
		d := vm.debug()
		res.fds, res.gor, res.closedPre, res.recoverUs = d.FDs, d.Goroutines, d.LastClosed, d.LastRecoverUs
		res.guestAfter = time.Duration(d.LastGapUs)*time.Microsecond - res.snapshot.Stopped.Sub(prepared)
		closedTotal = d.ClosedPreSnapshot
		if d.PreSnapshotOpen != 0 {
			fail("%d pre-snapshot connections still open: %+v", d.PreSnapshotOpen, d.Conns)
		}
		// At least the watch stream: it is silent, so only envd's recovery
		// can end it (prepare itself closed the idle connection when it
		// turned keep-alives off). The streaming subscriber is usually
		// closed by recovery too, but slirp resets a connection the guest
		// writes to ~0.5 s after cont, which can come first on a slow
		// restore; PreSnapshotOpen == 0 above covers it either way.
		if d.LastClosed < 1 {
			fail("restore closed only %d pre-snapshot connections", d.LastClosed)
		}
		if d.Pending {
			fail("restore still pending after /health and /init")
		}

		start = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, code, err := cr.exec(ctx, "/bin/echo", "after", strconv.Itoa(i))
		cancel()
		res.execRTT = time.Since(start)
		if err != nil || code != 0 || out != fmt.Sprintf("after %d\n", i) {
			fail("exec after restore: %q %d %v", out, code, err)
		}
		// The pre-snapshot idle connection is dead; the client must get a
		// fresh one without hanging.
		if resp, err := idle.Get(vm.URL() + "/health"); err != nil {
			fail("idle client after restore: %v", err)
		} else {
			resp.Body.Close()
		}
		start = time.Now()
		nsub, err := vm.newRPC().connectStream(t, "streamer")
		if err != nil {
			fail("reconnect streamer: %v", err)
		} else {
			if err := nsub.waitFor("tick", 30*time.Second); err != nil {
				fail("streamer after restore: %v", err)
			}
			res.streamWait = time.Since(start)
			nsub.close()
		}
		// The Go allocation load survived, with no corrupt buffer.
		if gsub, err := vm.newRPC().connectStream(t, "goalloc"); err != nil {
			fail("goalloc gone after restore (corruption?): %v", err)
		} else {
			if err := gsub.waitFor("alloc ok", 30*time.Second); err != nil {
				fail("goalloc after restore: %v", err)
			}
			gsub.close()
		}
		nw, err := cr.watchDir(t, "/tmp/watched")
		if err != nil {
			fail("watch after restore: %v", err)
		} else {
			name := fmt.Sprintf("f%d", i)
			if _, code, err := cr.exec(context.Background(), "/bin/touch", "/tmp/watched/"+name); err != nil || code != 0 {
				fail("touch: %d %v", code, err)
			} else if err := nw.waitFor(name, 30*time.Second); err != nil {
				fail("%v", err)
			}
			nw.cancel()
		}
		sub.close()
		w.cancel()
		idle.CloseIdleConnections()
		cr.tr.CloseIdleConnections()
		if bad {
			failed++
		}
		results = append(results, res)
		t.Logf("cycle %d: prepare %v, save %v, quit %v, launch %v, load %v, cont->healthy %v (guest cont->recover ~%v, recover %d us, closed %d), skew %v, exec %v, stream %v, fds %d, goroutines %d",
			i, ms(res.prepare), ms(res.snapshot.Save), ms(res.snapshot.Quit), ms(res.restore.Launch), ms(res.restore.Load), ms(res.healthy),
			ms(res.guestAfter), res.recoverUs, res.closedPre, res.skew.Round(100*time.Microsecond), ms(res.execRTT), ms(res.streamWait), res.fds, res.gor)
	}
	checkNoGrowth(t, results)
}

// checkNoGrowth compares envd's fd and goroutine counts early and late in
// the run: a leak per cycle shows as steady growth.
func checkNoGrowth(t *testing.T, rs []cycleResult) {
	if len(rs) < 4 {
		return
	}
	third := len(rs) / 3
	minOf := func(rs []cycleResult, f func(cycleResult) int) int {
		m := f(rs[0])
		for _, r := range rs {
			m = min(m, f(r))
		}
		return m
	}
	early, late := rs[:third+1], rs[len(rs)-third-1:]
	fd := func(r cycleResult) int { return r.fds }
	gr := func(r cycleResult) int { return r.gor }
	if e, l := minOf(early, fd), minOf(late, fd); l > e+4 {
		t.Errorf("envd fds grow across cycles: %d early, %d late", e, l)
	}
	if e, l := minOf(early, gr), minOf(late, gr); l > e+10 {
		t.Errorf("envd goroutines grow across cycles: %d early, %d late", e, l)
	}
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func ms(d time.Duration) string {
	return strings.TrimSuffix(fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000), "")
}
