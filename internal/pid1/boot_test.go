package pid1

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseIPArgs(t *testing.T) {
	tests := []struct {
		cmdline string
		want    []NetConfig
		wantErr bool
	}{
		{"console=ttyS0 quiet", nil, false},
		{"ip=dhcp ip=off", nil, false},
		{"ip=169.254.0.21::169.254.0.22:255.255.255.252:capsule:eth0:off:8.8.8.8:8.8.4.4", []NetConfig{{
			Device: "eth0", Addr: netip.MustParsePrefix("169.254.0.21/30"), Gateway: netip.MustParseAddr("169.254.0.22"),
			Hostname: "capsule", DNS: []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("8.8.4.4")},
		}}, false},
		{"a ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off ip=169.254.0.15:::255.255.0.0::eth1:off", []NetConfig{
			{Device: "eth0", Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")},
			{Device: "eth1", Addr: netip.MustParsePrefix("169.254.0.15/16")},
		}, false},
		{"ip=10.0.0.2", nil, false}, // no colon: not the static syntax
		{"ip=10.0.0.2:::", []NetConfig{{Device: "eth0", Addr: netip.MustParsePrefix("10.0.0.2/32")}}, false},
		{"ip=bogus::::::", nil, true},
		{"ip=10.0.0.2:::255.0.255.0::eth0", nil, true},
		{"-- ip=10.0.0.2:::", nil, false}, // init's argv
	}
	for _, tc := range tests {
		got, err := ParseIPArgs(tc.cmdline)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err %v, wantErr %v", tc.cmdline, err, tc.wantErr)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tc.cmdline, got, tc.want)
		}
	}
}

func TestModuleOrder(t *testing.T) {
	mods := []ModuleInfo{
		{Name: "virtio_net", Depends: []string{"net_failover", "virtio", "virtio_ring"}},
		{Name: "net_failover", Depends: []string{"failover"}},
		{Name: "failover"},
		{Name: "virtio_mmio", Depends: []string{"virtio", "virtio_ring"}},
		{Name: "virtio_ring", Depends: []string{"virtio_anchor"}}, // built in
		{Name: "virtio"},
		{Name: "a", Depends: []string{"b"}}, {Name: "b", Depends: []string{"a"}}, // cycle must not hang
	}
	var names []string
	pos := map[string]int{}
	for i, m := range ModuleOrder(mods) {
		names = append(names, m.Name)
		pos[m.Name] = i
	}
	if len(names) != len(mods) {
		t.Fatalf("order %v lost modules", names)
	}
	for _, m := range mods[:6] {
		for _, d := range m.Depends {
			if p, ok := pos[d]; ok && p > pos[m.Name] {
				t.Errorf("%s loads before its dependency %s: %v", m.Name, d, names)
			}
		}
	}
}

// TestReadModuleInfo reads a real module of the kernel scripts/setup fetched.
func TestReadModuleInfo(t *testing.T) {
	matches, _ := filepath.Glob("/var/cache/envd-vmtest/current/lib/modules/*/kernel/drivers/net/virtio_net.ko")
	if len(matches) == 0 {
		t.Fatal("no cached kernel: run scripts/setup (vmtest/fetch-kernel)")
	}
	mi, err := ReadModuleInfo(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	if mi.Name != "virtio_net" || !contains(mi.Depends, "net_failover") {
		t.Errorf("got %+v", mi)
	}
	if _, err := ReadModuleInfo("/etc/passwd"); err == nil {
		t.Error("non-ELF file: no error")
	}
}

func TestMountinfoHas(t *testing.T) {
	info := `22 1 0:21 / /proc rw,nosuid - proc proc rw
25 1 0:5 / /dev rw - devtmpfs udev rw
30 25 0:26 / /mnt/with\040space rw - tmpfs tmpfs rw
`
	for target, want := range map[string]bool{"/proc": true, "/dev": true, "/dev/pts": false, "/mnt/with space": true, "/": false} {
		got, err := mountinfoHas(bufio.NewScanner(strings.NewReader(info)), target)
		if err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", target, got, err, want)
		}
	}
}

// inNewNamespace runs f on a thread of its own in fresh namespaces; the
// thread is discarded afterwards (never unlocked).
func inNewNamespace(t *testing.T, flags int, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := unix.Unshare(flags); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if flags&unix.CLONE_NEWNS != 0 {
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				t.Errorf("make / private: %v", err)
				return
			}
		}
		f()
	}()
	<-done
}

func TestMountAll(t *testing.T) {
	dir := t.TempDir()
	pre := filepath.Join(dir, "pre")
	fresh := filepath.Join(dir, "a", "fresh")
	inNewNamespace(t, unix.CLONE_NEWNS, func() {
		os.Mkdir(pre, 0o755)
		if err := unix.Mount("tmpfs", pre, "tmpfs", 0, "size=1m"); err != nil {
			t.Errorf("premount: %v", err)
			return
		}
		os.WriteFile(filepath.Join(pre, "keep"), nil, 0o644)
		ms := []Mount{
			{"tmpfs", pre, "tmpfs", 0, "size=1m", 0o755},
			{"tmpfs", fresh, "tmpfs", unix.MS_NOSUID, "mode=1777", 0o1777},
		}
		for i := 0; i < 2; i++ { // the second pass must be a no-op
			if err := MountAll(ms); err != nil {
				t.Errorf("pass %d: %v", i, err)
			}
		}
		if _, err := os.Stat(filepath.Join(pre, "keep")); err != nil {
			t.Errorf("existing mount was replaced: %v", err)
		}
		b, _ := os.ReadFile("/proc/thread-self/mountinfo")
		if n := strings.Count(string(b), " "+fresh+" "); n != 1 {
			t.Errorf("%s mounted %d times", fresh, n)
		}
		if n := strings.Count(string(b), " "+pre+" "); n != 1 {
			t.Errorf("%s mounted %d times", pre, n)
		}
		var st unix.Stat_t
		if err := unix.Stat(fresh, &st); err != nil || st.Mode&0o7777 != 0o1777 {
			t.Errorf("fresh tmpfs mode %o, %v", st.Mode&0o7777, err)
		}
		if err := MountAll([]Mount{{"none", filepath.Join(dir, "bad"), "nosuchfs", 0, "", 0o755}}); err == nil {
			t.Error("unknown fs type: no error")
		}
	})
}

// TestConfigureNetwork applies an ip= config to lo in a network namespace
// of the test's own.
func TestConfigureNetwork(t *testing.T) {
	inNewNamespace(t, unix.CLONE_NEWNET|unix.CLONE_NEWUTS, func() {
		cfgs, err := ParseIPArgs("ip=169.254.0.21::169.254.0.22:255.255.255.252:capsule-test:lo:off")
		if err != nil {
			t.Error(err)
			return
		}
		for i := 0; i < 2; i++ { // idempotent
			if err := ConfigureNetwork(cfgs); err != nil {
				t.Errorf("pass %d: %v", i, err)
				return
			}
		}
		ifi, err := net.InterfaceByName("lo")
		if err != nil || ifi.Flags&net.FlagUp == 0 {
			t.Errorf("lo not up: %v %v", ifi, err)
			return
		}
		addrs, _ := ifi.Addrs()
		found := false
		for _, a := range addrs {
			found = found || a.String() == "169.254.0.21/30"
		}
		if !found {
			t.Errorf("address missing: %v", addrs)
		}
		routes, _ := os.ReadFile("/proc/thread-self/net/route")
		// default route: destination 00000000, gateway 169.254.0.22 little endian.
		if !strings.Contains(string(routes), "lo\t00000000\t1600FEA9") {
			t.Errorf("default route missing:\n%s", routes)
		}
		var uts unix.Utsname
		unix.Uname(&uts)
		if h := unix.ByteSliceToString(uts.Nodename[:]); h != "capsule-test" {
			t.Errorf("hostname %q", h)
		}
		deviceWait = 100 * time.Millisecond
		if err := ConfigureNetwork([]NetConfig{{Device: "nosuch0", Addr: netip.MustParsePrefix("10.1.1.1/24")}}); err == nil {
			t.Error("missing device: no error")
		}
	})
}

func TestSetDefaultPath(t *testing.T) {
	t.Setenv("PATH", "")
	SetDefaultPath()
	if got := os.Getenv("PATH"); got != DefaultPath {
		t.Errorf("PATH %q", got)
	}
	t.Setenv("PATH", "/x")
	SetDefaultPath()
	if got := os.Getenv("PATH"); got != "/x" {
		t.Errorf("PATH overwritten: %q", got)
	}
}
