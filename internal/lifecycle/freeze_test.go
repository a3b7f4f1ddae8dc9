package lifecycle

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/envd-go/envd/internal/cgroups"
)

// recordingFreezer wraps Noop and records the options it was called with.
type recordingFreezer struct {
	cgroups.Noop
	got   []cgroups.FreezeOptions
	thaws int
}

func (r *recordingFreezer) Freeze(ctx context.Context, o cgroups.FreezeOptions) (cgroups.FreezeResult, error) {
	r.got = append(r.got, o)
	return r.Noop.Freeze(ctx, o)
}

func (r *recordingFreezer) Thaw() (cgroups.ThawResult, error) { r.thaws++; return r.Noop.Thaw() }

func serveFreeze(t *testing.T, z *Freeze) *httptest.Server {
	mux := http.NewServeMux()
	for _, rt := range z.Routes() {
		mux.Handle(rt.Pattern, rt.Handler)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestFreezeRoutes(t *testing.T) {
	rf := &recordingFreezer{}
	srv := serveFreeze(t, NewFreeze(rf))
	tests := []struct {
		path       string
		status     int
		bodyHas    string
		wantOpts   *cgroups.FreezeOptions
		wantThaws  int
		wantNoBody bool
	}{
		{"/freeze", 204, "", &cgroups.FreezeOptions{Mode: cgroups.FreezeLegacy}, 0, true},
		{"/freeze?maxWaitMs=0", 204, "", &cgroups.FreezeOptions{Mode: cgroups.FreezeLegacy}, 0, true},
		{"/freeze?maxWaitMs=1500&mode=hierarchy&maxCgroups=64", 200, `"unobservable":2`,
			&cgroups.FreezeOptions{Mode: cgroups.FreezeHierarchy, MaxCgroups: 64, MaxWait: 1500 * time.Millisecond}, 0, false},
		{"/freeze?mode=bogus&maxWaitMs=5", 200, `"mode":"legacy"`, &cgroups.FreezeOptions{Mode: cgroups.FreezeLegacy, MaxWait: 5 * time.Millisecond}, 0, false},
		{"/freeze?maxCgroups=x", 400, "Invalid format for parameter maxCgroups", nil, 0, false},
		{"/freeze?maxWaitMs=1.5", 400, "Invalid format for parameter maxWaitMs", nil, 0, false},
		{"/unfreeze", 204, "", nil, 1, true},
	}
	for _, tc := range tests {
		rf.got, rf.thaws = nil, 0
		resp, err := http.Post(srv.URL+tc.path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.bodyHas) || (tc.wantNoBody && len(b) > 0) {
			t.Errorf("%s: %d %q", tc.path, resp.StatusCode, b)
		}
		if tc.wantOpts != nil && (len(rf.got) != 1 || rf.got[0] != *tc.wantOpts) {
			t.Errorf("%s: freeze called with %+v, want %+v", tc.path, rf.got, *tc.wantOpts)
		}
		if tc.wantOpts == nil && len(rf.got) != 0 {
			t.Errorf("%s: freeze called", tc.path)
		}
		if rf.thaws != tc.wantThaws {
			t.Errorf("%s: %d thaws", tc.path, rf.thaws)
		}
		if tc.status == 200 {
			var res cgroups.FreezeResult
			if err := json.Unmarshal(b, &res); err != nil || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s: body %q (%v), type %q", tc.path, b, err, resp.Header.Get("Content-Type"))
			}
		}
	}
}

// TestFSFreezeUnsupported: a file system without freeze support (tmpfs)
// answers the JSON 500 to /fsfreeze; /fsthaw gets EINVAL ("not frozen"),
// which counts as success. The host's real root is never frozen by tests.
func TestFSFreezeUnsupported(t *testing.T) {
	z := NewFreeze(cgroups.Noop{})
	z.root = "/dev/shm"
	srv := serveFreeze(t, z)
	resp, err := http.Post(srv.URL+"/fsthaw", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Errorf("/fsthaw: %d", resp.StatusCode)
	}
	for _, p := range []string{"/fsfreeze"} {
		resp, err := http.Post(srv.URL+p, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 500 || body.Code != 500 || !strings.Contains(body.Message, "/dev/shm") {
			t.Errorf("%s: %d %+v", p, resp.StatusCode, body)
		}
	}
}

func TestCollapse(t *testing.T) {
	// Some heap so there is something to collapse.
	buf := make([]byte, 16<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	res, err := Collapse(context.Background())
	if err != nil {
		t.Fatalf("collapse: %v", err) // the test kernel is 6.1+
	}
	if res.Chunks != res.Collapsed+res.AlreadyHuge+res.Skipped || res.Regions == 0 {
		t.Errorf("inconsistent %+v", res)
	}
	t.Logf("%+v", res)
	_ = buf[len(buf)-1]
	srv := serveFreeze(t, NewFreeze(cgroups.Noop{}))
	resp, err := http.Post(srv.URL+"/collapse", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var got CollapseResult
	json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if resp.StatusCode != 200 || got.Chunks == 0 {
		t.Errorf("/collapse: %d %+v", resp.StatusCode, got)
	}
}
