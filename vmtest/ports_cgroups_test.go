package vmtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
)

// runCollect starts a process (optionally on a PTY, optionally tagged) and
// returns everything it printed (stdout and PTY) and its exit code.
func (r *rpc) runCollect(ctx context.Context, req *pb.StartRequest) (string, int32, error) {
	stream, err := r.proc.Start(ctx, connect.NewRequest(req))
	if err != nil {
		return "", 0, err
	}
	defer stream.Close()
	var out strings.Builder
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			out.Write(d.GetStdout())
			out.Write(d.GetPty())
		}
		if e := ev.GetEnd(); e != nil {
			return out.String(), e.GetExitCode(), nil
		}
	}
	if err := stream.Err(); err != nil {
		return out.String(), 0, err
	}
	return out.String(), 0, fmt.Errorf("stream ended without an end event")
}

func (r *rpc) sh(ctx context.Context, t *testing.T, script string) string {
	t.Helper()
	out, code, err := r.exec(ctx, "/bin/sh", "-c", script)
	if err != nil || code != 0 {
		t.Fatalf("%s: exit %d %v: %s", script, code, err, out)
	}
	return out
}

// TestPortsAndCgroupsInGuest runs in one VM (1 GiB, so the workload limit
// M = T − 128 MiB leaves envd and the initramfs their reserve):
// port forwarding on the real guest address, cgroup placement by kind,
// and the memory limit of the user group.
func TestPortsAndCgroupsInGuest(t *testing.T) {
	vm, took := bootVM(t, vmOpts{memMB: 1024})
	t.Logf("boot to healthy: %v", took)
	r := vm.newRPC()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t.Run("loopback server reachable through the guest address", func(t *testing.T) {
		// Give the guest its external address on the slirp network that
		// also carries MMDS, and let the host reach <guest>:8080 there.
		r.sh(ctx, t, "ip addr add 169.254.0.21/16 dev eth1")
		hostPort, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		res, err := vm.qmp.Run("human-monitor-command", map[string]any{
			"command-line": fmt.Sprintf("hostfwd_add n1 tcp:127.0.0.1:%d-169.254.0.21:8080", hostPort)})
		if err != nil || strings.Contains(strings.ToLower(string(res)), "error") || strings.Contains(string(res), "could not") {
			t.Fatalf("hostfwd_add: %s %v", res, err)
		}
		sub, err := r.startStream(t, "userweb",
			"mkdir -p /tmp/www && echo envd-port-test > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www")
		if err != nil {
			t.Fatal(err)
		}
		url := fmt.Sprintf("http://127.0.0.1:%d/index.html", hostPort)
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		get := func() (string, error) {
			resp, err := client.Get(url)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return string(b), err
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			body, err := get()
			if err == nil && body == "envd-port-test\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("user server on 127.0.0.1:8080 not reachable via 169.254.0.21: %q %v", body, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		var m map[string]any
		if st := vm.do("GET", "/metrics", nil, &m); st != 200 || m["ports_forwarded"] == nil || m["ports_forwarded"].(float64) < 1 {
			t.Errorf("/metrics %d: %v", st, m)
		}

		// The server exits: the forward goes away.
		if _, err := r.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
			Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: sub.pid}}, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
			t.Fatal(err)
		}
		deadline = time.Now().Add(60 * time.Second)
		for {
			if _, err := get(); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("still reachable after the server was killed")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("processes land in their cgroups", func(t *testing.T) {
		envdCg := strings.TrimSpace(r.sh(ctx, t, "cat /proc/1/cgroup"))
		system := "_system"
		tests := []struct {
			name string
			req  *pb.StartRequest
			want string
		}{
			{"user", &pb.StartRequest{}, "0::/user"},
			{"pty", &pb.StartRequest{Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}}, "0::/ptys"},
			{"_system", &pb.StartRequest{Tag: &system}, envdCg},
		}
		for _, tc := range tests {
			tc.req.Process = &pb.ProcessConfig{Cmd: "/bin/cat", Args: []string{"/proc/self/cgroup"}}
			out, code, err := r.runCollect(ctx, tc.req)
			if err != nil || code != 0 {
				t.Fatalf("%s: exit %d %v: %s", tc.name, code, err, out)
			}
			if got := strings.TrimSpace(out); got != tc.want {
				t.Errorf("%s process in %q, want %q", tc.name, got, tc.want)
			}
		}

		// Properties (subsystems.md §2.1).
		memTotalKB, _ := strconv.ParseUint(strings.Fields(r.sh(ctx, t, "grep MemTotal /proc/meminfo"))[1], 10, 64)
		total := memTotalKB * 1024
		limit := strconv.FormatUint(total-min(total/8, 128<<20), 10)
		for file, want := range map[string]string{
			"user/memory.max": limit, "user/memory.high": limit, "user/cpu.weight": "50", "user/io.weight": "default 10",
			"ptys/memory.max": limit, "ptys/cpu.weight": "200", "ptys/io.weight": "default 50",
			"socats/cpu.weight": "150", "socats/memory.min": "5242880", "socats/memory.low": "8388608",
		} {
			out, code, err := r.exec(ctx, "/bin/cat", "/sys/fs/cgroup/"+file)
			if err != nil || code != 0 {
				t.Errorf("%s: exit %d %v", file, code, err)
				continue
			}
			if got := strings.TrimSpace(out); got != want {
				t.Errorf("%s = %q, want %q", file, got, want)
			}
		}
	})

	t.Run("memory bomb in the user group dies, envd survives", func(t *testing.T) {
		// Seven 200 MiB buffers exceed the user limit M (~844 MiB here).
		// Which OOM killer acts depends on the kernel's reserve: with THP
		// the min watermark (~44 MiB) plus per-cpu lists can eat the
		// 128 MiB headroom, and the global killer fires a few MiB before
		// the group's memory.max. Either way only user-group tasks may die,
		// the group may never exceed its limit, and envd must live on.
		out, _, err := r.exec(ctx, "/bin/sh", "-c",
			"for i in 1 2 3 4 5 6 7; do dd if=/dev/zero of=/dev/null bs=200M count=3 2>/dev/null & done; wait; echo done")
		if err != nil {
			t.Fatalf("bomb: %v (%s)", err, out)
		}
		events := r.sh(ctx, t, "cat /sys/fs/cgroup/user/memory.events")
		field := func(text, name string) int64 {
			for _, l := range strings.Split(text, "\n") {
				if v, ok := strings.CutPrefix(l, name+" "); ok {
					n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					return n
				}
			}
			return -1
		}
		if field(events, "oom_kill") < 1 {
			t.Errorf("no user-group task was OOM-killed:\n%s", events)
		}
		peak, _ := strconv.ParseInt(strings.TrimSpace(r.sh(ctx, t, "cat /sys/fs/cgroup/user/memory.peak")), 10, 64)
		max, _ := strconv.ParseInt(strings.TrimSpace(r.sh(ctx, t, "cat /sys/fs/cgroup/user/memory.max")), 10, 64)
		if peak <= 0 || peak > max {
			t.Errorf("user group peak %d, limit %d", peak, max)
		}
		kills := r.sh(ctx, t, "dmesg | grep -o 'oom-kill:.*' || true")
		for _, l := range strings.Split(strings.TrimSpace(kills), "\n") {
			if !strings.Contains(l, "task_memcg=/user,") {
				t.Errorf("OOM killed a task outside the user group: %s", l)
			}
		}
		t.Logf("peak %d of limit %d; group limit hit %d times; kills:\n%s", peak, max, field(events, "max"), kills)
		vm.waitHealthy(30 * time.Second)
		if got := strings.TrimSpace(r.sh(ctx, t, "echo alive")); got != "alive" {
			t.Errorf("envd cannot run processes after the bomb: %q", got)
		}
	})
}
