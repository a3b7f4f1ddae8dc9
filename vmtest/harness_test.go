package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd-go/envd/internal/host/mmdstest"
)

// The envd binary and initramfs are built once per test binary.
var image struct {
	once   sync.Once
	dir    string
	kernel Kernel
	initrd string
	err    error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if image.dir != "" {
		os.RemoveAll(image.dir)
	}
	os.Exit(code)
}

func buildImage(t *testing.T) (Kernel, string) {
	t.Helper()
	image.once.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			image.err = err
			return
		}
		image.kernel, image.err = FindKernel(root)
		if image.err != nil {
			return
		}
		image.dir, image.err = os.MkdirTemp("", "envd-vmtest-image-")
		if image.err != nil {
			return
		}
		envd := os.Getenv("ENVD_VM_BINARY") // a prebuilt static envd, for iterating
		if envd == "" {
			envd = filepath.Join(image.dir, "envd")
			if image.err = BuildEnvd(root, envd); image.err != nil {
				return
			}
		}
		alloc := filepath.Join(image.dir, "vmtest-alloc")
		if image.err = BuildAllocLoad(root, alloc); image.err != nil {
			return
		}
		image.initrd = filepath.Join(image.dir, "initramfs.cpio")
		image.err = BuildInitramfs(image.initrd, envd, image.kernel, map[string]string{AllocLoad: alloc})
	})
	if image.err != nil {
		t.Fatalf("build VM image: %v", image.err)
	}
	return image.kernel, image.initrd
}

type vmOpts struct {
	sharedMem bool
	memMB     int
	envdArgs  []string // extra envd flags
}

type testVM struct {
	*VM
	t    *testing.T
	mmds *mmdstest.Server
	http *http.Client
	dir  string
}

// bootVM boots a VM with an MMDS stand-in and waits for /health.
func bootVM(t *testing.T, o vmOpts) (*testVM, time.Duration) {
	t.Helper()
	k, initrd := buildImage(t)
	mmds := mmdstest.New()
	t.Cleanup(mmds.Close)
	mmds.SetFields("sbx-vmtest", "tpl-vmtest", "", "")
	dir, err := os.MkdirTemp("/dev/shm", "envd-vmtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	start := time.Now()
	vm, err := Boot(Config{Dir: dir, Kernel: k, Initrd: initrd, MemMB: o.memMB, SharedMem: o.sharedMem,
		MMDSAddr: strings.TrimPrefix(mmds.URL, "http://"), InitArgs: append([]string{"-cmd", InitCmd}, o.envdArgs...)})
	if err != nil {
		t.Fatal(err)
	}
	tv := &testVM{VM: vm, t: t, mmds: mmds, dir: dir,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("guest console:\n%s", lastLines(vm.Console(), 60))
			t.Logf("qemu stderr:\n%s", vm.Stderr())
		}
		tv.http.CloseIdleConnections()
		vm.Close()
	})
	tv.waitHealthy(60 * time.Second)
	return tv, time.Since(start)
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitHealthy polls /health on fresh connections until it answers 200.
func (v *testVM) waitHealthy(timeout time.Duration) time.Duration {
	v.t.Helper()
	start := time.Now()
	// A generous per-attempt timeout: an abandoned /health that reaches
	// envd later would count as the restore signal of a later prepare.
	c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	for time.Since(start) < timeout {
		resp, err := c.Get(v.URL() + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return time.Since(start)
			}
			last = fmt.Errorf("status %d", resp.StatusCode)
		} else {
			last = err
		}
		time.Sleep(5 * time.Millisecond)
	}
	v.t.Fatalf("envd not healthy after %v: %v", timeout, last)
	return 0
}

// do sends one request and decodes a JSON answer into out (if non-nil).
func (v *testVM) do(method, path string, body io.Reader, out any) int {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, v.URL()+path, body)
	resp, err := v.http.Do(req)
	if err != nil {
		v.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			v.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

// debugInfo is the part of GET /debug/conns the tests read.
type debugInfo struct {
	Tracked           int    `json:"tracked"`
	PreSnapshotOpen   int    `json:"preSnapshotOpen"`
	ClosedPreSnapshot uint64 `json:"closedPreSnapshot"`
	Restores          uint64 `json:"restores"`
	SelfRecoveries    uint64 `json:"selfRecoveries"`
	LastTrigger       string `json:"lastTrigger"`
	LastFrom          string `json:"lastFrom"`
	LastClosed        int    `json:"lastClosed"`
	LastRecoverUs     int64  `json:"lastRecoverUs"`
	LastGapUs         int64  `json:"lastGapUs"`
	Pending           bool   `json:"pending"`
	FDs               int    `json:"fds"`
	Goroutines        int    `json:"goroutines"`
	ClockJumps        uint64 `json:"clockJumps"`
	NowUnixNano       int64  `json:"nowUnixNano"`
	Conns             []struct {
		Remote      string `json:"remote"`
		State       string `json:"state"`
		PreSnapshot bool   `json:"preSnapshot"`
	} `json:"conns"`
}

func (v *testVM) debug() debugInfo {
	v.t.Helper()
	var d debugInfo
	if st := v.do("GET", "/debug/conns", nil, &d); st != 200 {
		v.t.Fatalf("/debug/conns: status %d", st)
	}
	return d
}

// lateTimestamp is an /init body that reads the host clock when the
// transport starts sending it, i.e. after the connection is set up: the
// timestamp is then stale only by the body's one-way trip.
type lateTimestamp struct{ r io.Reader }

func (l *lateTimestamp) Read(p []byte) (int, error) {
	if l.r == nil {
		l.r = strings.NewReader(fmt.Sprintf(`{"timestamp":%q}`, time.Now().UTC().Format(time.RFC3339Nano)))
	}
	return l.r.Read(p)
}

// initNow posts /init the way e2b's orchestrator does: a fresh timestamp
// per attempt, short attempts retried every 5 ms for up to 10 s, then one
// patient attempt. e2b uses 50 ms attempts; here the MMDS stand-in the
// token check consults is reached through a process QEMU spawns per
// connection, so /init itself takes longer than in Firecracker and the
// attempts get 500 ms. envd adds the time /init spent to the timestamp,
// so the skew does not depend on it.
func (v *testVM) initNow() {
	v.t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	attempt := func(timeout time.Duration) (int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", v.URL()+"/init", &lateTimestamp{})
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := attempt(500 * time.Millisecond); err == nil && st == 204 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st, err := attempt(30 * time.Second); err != nil || st != 204 {
		v.t.Fatalf("/init: %d %v", st, err)
	}
	v.t.Logf("/init: no 500 ms attempt succeeded in 10 s")
}
