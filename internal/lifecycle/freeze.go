package lifecycle

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/cgroups"
	"github.com/envd-go/envd/internal/server"
)

// Freeze serves e2b's pause helpers: /freeze and /unfreeze on the workload
// cgroups (through the cgroups Freezer, which owns the freeze lock),
// /fsfreeze and /fsthaw on the root file system, and /collapse of envd's
// heap into huge pages (protocol.md §3.9–3.12).
type Freeze struct {
	freezer cgroups.Freezer
	fsLock  chan struct{} // one fsfreeze/fsthaw at a time
	root    string        // file system fsfreeze acts on
}

// NewFreeze returns the handlers; f is the cgroup manager (Noop works and
// reports everything unobservable).
func NewFreeze(f cgroups.Freezer) *Freeze {
	return &Freeze{freezer: f, fsLock: make(chan struct{}, 1), root: "/"}
}

// Routes are the five e2b routes, all token protected.
func (z *Freeze) Routes() []server.Route {
	return []server.Route{
		{Pattern: "POST /freeze", Handler: http.HandlerFunc(z.handleFreeze)},
		{Pattern: "POST /unfreeze", Handler: http.HandlerFunc(z.handleUnfreeze)},
		{Pattern: "POST /fsfreeze", Handler: http.HandlerFunc(z.handleFSFreeze)},
		{Pattern: "POST /fsthaw", Handler: http.HandlerFunc(z.handleFSThaw)},
		{Pattern: "POST /collapse", Handler: http.HandlerFunc(z.handleCollapse)},
	}
}

// badParam writes e2b's plain-text 400 for a malformed typed parameter.
func badParam(w http.ResponseWriter, name string, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, "Invalid format for parameter %s: %v", name, err)
}

func (z *Freeze) handleFreeze(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	o := cgroups.FreezeOptions{Mode: cgroups.ParseFreezeMode(q.Get("mode"))}
	if v := q.Get("maxCgroups"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			badParam(w, "maxCgroups", err)
			return
		}
		o.MaxCgroups = n
	}
	report := false
	if v := q.Get("maxWaitMs"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			badParam(w, "maxWaitMs", err)
			return
		}
		if n > 0 {
			report, o.MaxWait = true, time.Duration(n)*time.Millisecond
		}
	}
	res, err := z.freezer.Freeze(r.Context(), o)
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if !report {
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	snapJSON(w, http.StatusOK, res)
}

func (z *Freeze) handleUnfreeze(w http.ResponseWriter, r *http.Request) {
	if _, err := z.freezer.Thaw(); err != nil {
		apierror.Write(w, http.StatusInternalServerError, fmt.Sprintf("failed to unfreeze: %v", err))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// FIFREEZE and FITHAW from linux/fs.h.
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

func (z *Freeze) handleFSFreeze(w http.ResponseWriter, r *http.Request) {
	select {
	case z.fsLock <- struct{}{}:
	case <-r.Context().Done():
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	defer func() { <-z.fsLock }()
	z.fsIoctl(w, fiFreeze, unix.EBUSY, "freeze")
}

func (z *Freeze) handleFSThaw(w http.ResponseWriter, r *http.Request) {
	z.fsLock <- struct{}{} // a rollback thaw waits regardless of cancellation
	defer func() { <-z.fsLock }()
	z.fsIoctl(w, fiThaw, unix.EINVAL, "thaw")
}

// fsIoctl runs FIFREEZE/FITHAW on the root; ok is the errno that means
// "already in that state".
func (z *Freeze) fsIoctl(w http.ResponseWriter, req uint, ok unix.Errno, what string) {
	f, err := os.Open(z.root)
	if err == nil {
		err = unix.IoctlSetInt(int(f.Fd()), req, 0)
		f.Close()
	}
	if err != nil && !errors.Is(err, ok) {
		apierror.Write(w, http.StatusInternalServerError, fmt.Sprintf("failed to %s filesystem %s: %v", what, z.root, err))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// CollapseResult is the /collapse body.
type CollapseResult struct {
	Regions     int   `json:"regions"`
	Chunks      int   `json:"chunks"`
	Collapsed   int   `json:"collapsed"`
	AlreadyHuge int   `json:"alreadyHuge"`
	Skipped     int   `json:"skipped"`
	ElapsedMs   int64 `json:"elapsedMs"`
}

func (z *Freeze) handleCollapse(w http.ResponseWriter, r *http.Request) {
	res, err := Collapse(r.Context())
	if err != nil {
		apierror.Write(w, http.StatusInternalServerError, err.Error())
		return
	}
	snapJSON(w, http.StatusOK, res)
}

const hugePage = 2 << 20

// Collapse asks the kernel (MADV_COLLAPSE, Linux 6.1+) to back envd's
// anonymous read-write mappings with 2 MiB pages, chunk by chunk, so a
// snapshot's memory file has fewer, larger pages to fault back in.
// Chunks that fail (not collapsible, memory pressure) are skipped; a
// kernel without MADV_COLLAPSE is an error.
func Collapse(ctx context.Context) (CollapseResult, error) {
	start := time.Now()
	var res CollapseResult
	regions, err := anonRegions()
	if err != nil {
		return res, err
	}
	hugeBefore := anonHugeBytes()
	einval := 0
	for _, rg := range regions {
		lo := (rg[0] + hugePage - 1) &^ (hugePage - 1)
		if lo+hugePage > rg[1] {
			continue
		}
		res.Regions++
		for a := lo; a+hugePage <= rg[1]; a += hugePage {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.Chunks++
			// Raw syscall: the range is envd's own memory, never touched here.
			_, _, e := unix.Syscall(unix.SYS_MADVISE, a, hugePage, unix.MADV_COLLAPSE)
			switch {
			case e == 0:
				res.Collapsed++
			case e == unix.EINVAL:
				einval++
				res.Skipped++
			default:
				res.Skipped++
			}
		}
	}
	if res.Chunks > 0 && einval == res.Chunks {
		return res, fmt.Errorf("MADV_COLLAPSE not supported by this kernel: %w", unix.EINVAL)
	}
	if before, after := hugeBefore, anonHugeBytes(); before > 0 && after >= before {
		// Chunks that were huge already show up as "collapsed" too; the
		// smaps delta tells how many were new.
		newly := int((after - before) / hugePage)
		if newly < res.Collapsed {
			res.AlreadyHuge = res.Collapsed - newly
			res.Collapsed = newly
		}
	}
	res.ElapsedMs = time.Since(start).Milliseconds()
	return res, nil
}

// anonRegions lists envd's private anonymous rw mappings from
// /proc/self/maps as [start, end) pairs.
func anonRegions() ([][2]uintptr, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("read maps: %w", err)
	}
	defer f.Close()
	var out [][2]uintptr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// address perms offset dev inode [path]; anonymous = no path.
		if len(fs) < 5 || len(fs) > 5 || !strings.HasPrefix(fs[1], "rw") || fs[1][3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil {
			out = append(out, [2]uintptr{uintptr(a), uintptr(b)})
		}
	}
	return out, sc.Err()
}

func anonHugeBytes() uint64 {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "AnonHugePages:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
