package vmtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
)

// TestBoot: envd as PID 1 mounts, loads modules, configures both NICs
// (MMDS answers through eth1), starts -cmd and runs processes.
func TestBoot(t *testing.T) {
	vm, took := bootVM(t, vmOpts{sharedMem: true})
	t.Logf("boot to healthy: %v", took)
	r := vm.newRPC()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	out, code, err := r.exec(ctx, "/bin/sh", "-c", "cat /proc/mounts; echo PATH=$PATH; ip -o -4 addr; cat /sys/fs/cgroup/cgroup.subtree_control; ls /sys/module | grep virtio")
	if err != nil || code != 0 {
		t.Fatalf("exec: %d %v: %s", code, err, out)
	}
	for _, want := range []string{" /proc proc", " /sys sysfs", " /dev devtmpfs", " /dev/pts devpts", "ptmxmode=666", " /dev/shm tmpfs",
		" /tmp tmpfs", " /run tmpfs", " /sys/fs/cgroup cgroup2", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"eth0    inet 10.0.2.15/24", "eth1    inet 169.254.0.15/16", "cpu", "memory", "virtio_net", "virtio_mmio"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest lacks %q:\n%s", want, out)
		}
	}
	// The MMDS stand-in answers the guest at 169.254.169.254:80 (eth1).
	out, code, err = r.exec(ctx, "/bin/sh", "-c",
		`printf 'PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n' | nc 169.254.169.254 80`)
	if err != nil || code != 0 || !strings.Contains(out, "200 OK") {
		t.Errorf("MMDS from the guest: %d %v: %q", code, err, out)
	}

	list, err := r.proc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range list.Msg.GetProcesses() {
		found = found || (p.GetTag() == "init-cmd" && p.GetConfig().GetCmd() == InitCmd)
	}
	if !found {
		t.Errorf("-cmd not listed: %v", list.Msg.GetProcesses())
	}
	sub, err := r.connectStream(t, "init-cmd")
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.waitFor("init-cmd alive", 30*time.Second); err != nil {
		t.Error(err)
	}
	sub.close()

	// Orphans are reaped by PID 1: a shell that leaves 20 background
	// children behind; none may stay a zombie.
	if _, code, err := r.exec(ctx, "/bin/sh", "-c", "for i in $(seq 20); do (sleep 0.2 &) ; done"); err != nil || code != 0 {
		t.Fatalf("orphans: %d %v", code, err)
	}
	time.Sleep(time.Second)
	out, _, err = r.exec(ctx, "/bin/sh", "-c", "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l")
	if err != nil || strings.TrimSpace(out) != "0" {
		t.Errorf("zombies left: %q %v", out, err)
	}
}
