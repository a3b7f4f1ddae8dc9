package vmtest

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
)

// TestPauseResume: stop, 10 s, cont in the same QEMU. Connections
// survive an in-place pause, so the running stream must keep flowing on
// its old connection; /init then steps the clock, which the jump detector
// sees without cutting that stream.
func TestPauseResume(t *testing.T) {
	vm, _ := bootVM(t, vmOpts{sharedMem: true})
	vm.initNow()
	r := vm.newRPC()
	sub, err := r.startStream(t, "streamer", streamerScript)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.waitFor("tick", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	idle := vm.idleConn()
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	if err := vm.Resume(); err != nil {
		t.Fatal(err)
	}
	t.Logf("cont -> healthy %v", vm.waitHealthy(60*time.Second))
	for range 20 { // drain what was buffered before the pause
		select {
		case <-sub.chunks:
		default:
		}
	}
	if err := sub.waitFor("tick", 30*time.Second); err != nil {
		t.Fatalf("stream after in-place resume: %v", err)
	}
	skew, _ := vm.clockSkew()
	if skew > -9*time.Second {
		t.Logf("guest clock before /init only %v behind (expected ~10 s)", skew)
	}
	vm.initNow()
	skew, rtt := vm.clockSkew()
	if abs(skew) > 50*time.Millisecond+rtt/2 {
		t.Errorf("skew %v after /init (rtt %v)", skew, rtt)
	}
	deadline := time.Now().Add(30 * time.Second)
	for vm.debug().ClockJumps == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the clock step by /init was not detected")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := sub.waitFor("tick", 30*time.Second); err != nil {
		t.Fatalf("stream cut by the jump detector: %v", err)
	}
	if resp, err := idle.Get(vm.URL() + "/health"); err != nil {
		t.Errorf("idle client after resume: %v", err)
	} else {
		resp.Body.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, code, err := r.exec(ctx, "/bin/echo", "ok"); err != nil || code != 0 || out != "ok\n" {
		t.Errorf("exec after resume: %q %d %v", out, code, err)
	}
}

// TestPrepareWithoutSnapshot: the host prepares, then resumes without a
// snapshot (its snapshot failed) and never calls /health: envd recovers
// by itself and serves normally.
func TestPrepareWithoutSnapshot(t *testing.T) {
	vm, _ := bootVM(t, vmOpts{sharedMem: true})
	if st := vm.do("POST", "/snapshot/prepare", nil, nil); st != 204 {
		t.Fatalf("prepare: %d", st)
	}
	if d := vm.debug(); !d.Pending {
		t.Fatalf("not pending after prepare: %+v", d)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		d := vm.debug()
		if !d.Pending {
			if d.SelfRecoveries != 1 || d.LastTrigger != "self-recovery" {
				t.Errorf("recovered, but not by itself: %+v", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still pending 60 s after prepare")
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Keep-alives are back on: two requests share one connection.
	vm.http.CloseIdleConnections()
	vm.debug()
	d := vm.debug()
	if d.Tracked != 1 {
		t.Errorf("keep-alives still off? %d connections for two sequential requests: %+v", d.Tracked, d.Conns)
	}
	r := vm.newRPC()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, code, err := r.exec(ctx, "/bin/echo", "ok"); err != nil || code != 0 || out != "ok\n" {
		t.Errorf("exec: %q %d %v", out, code, err)
	}
}

// TestVanishedClient: a snapshot without prepare (the host did not ask),
// while a subscriber streams. That subscriber is gone after the restore
// but its connection is still ESTABLISHED in the guest; a new subscriber
// must get output at once, and envd must drop the zombie by itself.
func TestVanishedClient(t *testing.T) {
	vm, _ := bootVM(t, vmOpts{sharedMem: true})
	vm.initNow()
	r := vm.newRPC()
	lost, err := r.startStream(t, "streamer", streamerScript)
	if err != nil {
		t.Fatal(err)
	}
	if err := lost.waitFor("tick", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	flood, err := r.startStream(t, "flood", floodScript)
	if err != nil {
		t.Fatal(err)
	}
	_ = flood
	// Every connection open now dies with this QEMU's user network.
	zombies := map[string]bool{}
	for _, c := range vm.debug().Conns {
		zombies[c.Remote] = true
	}
	snap := filepath.Join(vm.dir, "snapshot")
	if _, err := vm.Snapshot(snap); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // downtime the clock step after /init will show
	if _, err := vm.Restore(snap); err != nil {
		t.Fatal(err)
	}
	t.Logf("cont -> healthy %v", vm.waitHealthy(60*time.Second))
	start := time.Now()
	sub, err := vm.newRPC().connectStream(t, "streamer")
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.waitFor("tick", 30*time.Second); err != nil {
		t.Fatalf("new subscriber starved by a vanished one: %v", err)
	}
	t.Logf("new subscriber got output after %v", time.Since(start))
	vm.initNow()
	deadline := time.Now().Add(60 * time.Second)
	for {
		d := vm.debug()
		left := 0
		for _, c := range d.Conns {
			if zombies[c.Remote] {
				left++
			}
		}
		if left == 0 && d.ClockJumps > 0 {
			t.Logf("zombies gone %v after restore; %d connections tracked", time.Since(start), d.Tracked)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d zombie connections still open 60 s after restore (jumps %d): %+v", left, d.ClockJumps, d.Conns)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := sub.waitFor("tick", 30*time.Second); err != nil {
		t.Fatalf("post-restore stream cut: %v", err)
	}
}

// TestShutdown: SIGTERM to envd as PID 1 stops serving, ends every
// process and powers the VM off (PID 1 must never just exit: the kernel
// would panic).
func TestShutdown(t *testing.T) {
	vm, _ := bootVM(t, vmOpts{sharedMem: true, envdArgs: []string{"-verbose"}}) // logs on the console if it fails
	r := vm.newRPC()
	sub, err := r.startStream(t, "sleeper", "trap '' TERM; echo ready; sleep 600")
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.waitFor("ready", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r.exec(ctx, "/bin/sh", "-c", "kill -TERM 1") // envd may go before answering
	// 5 s grace, then SIGKILL for the process ignoring TERM, then power-off.
	if !vm.Exited(90 * time.Second) {
		t.Fatalf("VM still running 90 s after SIGTERM to PID 1")
	}
	if strings.Contains(vm.Console(), "Kernel panic") {
		t.Errorf("kernel panic on shutdown:\n%s", lastLines(vm.Console(), 30))
	}
}

// TestStalledSubscriber: a subscriber that stops reading (a client frozen
// or lost without a FIN) must not hold up output for another one, and
// envd must cut its connection by itself (per-subscriber queue deadline,
// server write deadline).
func TestStalledSubscriber(t *testing.T) {
	vm, _ := bootVM(t, vmOpts{sharedMem: true})
	r := vm.newRPC()
	if _, err := r.startStream(t, "flood", floodScript); err != nil {
		t.Fatal(err)
	}
	base := len(vm.debug().Conns)
	// Never read: the stream's TCP buffers fill and envd's writes block.
	stalled := vm.newRPC()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req := connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "flood"}}})
	if _, err := stalled.proc.Connect(ctx, req); err != nil {
		t.Fatal(err)
	}
	reader, err := vm.newRPC().connectStream(t, "flood")
	if err != nil {
		t.Fatal(err)
	}
	stalledAt := time.Now()
	// The reading subscriber gets output in every 2 s window for 10 s.
	for i := 0; i < 5; i++ {
		if err := reader.waitFor("\n", 2*time.Second); err != nil {
			t.Fatalf("reader starved after %d s: %v", 2*i, err)
		}
		time.Sleep(1500 * time.Millisecond)
	}
	// envd drops the stalled connection within its deadlines.
	deadline := time.Now().Add(120 * time.Second)
	for {
		if n := len(vm.debug().Conns); n <= base+1 { // the reader's remains
			t.Logf("stalled subscriber cut %v after it stopped reading", time.Since(stalledAt).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stalled subscriber still connected after 120 s: %+v", vm.debug().Conns)
		}
		time.Sleep(time.Second)
	}
}
