package process

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/writectl"
)

// harness is a Process service behind a real HTTP server, with a proto
// and a JSON client.
type harness struct {
	svc   *Service
	st    *state.State
	srv   *httptest.Server
	proto processconnect.ProcessClient // Connect + binary, no compression
	json  processconnect.ProcessClient // Connect + JSON, no compression (as the SDK)
	gzip  processconnect.ProcessClient // connect-go defaults: binary, gzip accepted (host agents)
}

func newHarness(t *testing.T, adjust func(*Options)) *harness {
	t.Helper()
	st := state.New()
	reaper := pid1.NewReaper(false)
	opts := Options{State: st, Reaper: reaper}
	if adjust != nil {
		adjust(&opts)
	}
	svc := New(opts)
	mux := http.NewServeMux()
	hopts := append([]connect.HandlerOption{connect.WithInterceptors(auth.UserInterceptor(st))}, HandlerOptions()...)
	path, handler := processconnect.NewProcessHandler(svc, hopts...)
	mux.Handle(path, writectl.Wrap(handler)) // as internal/server does
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		svc.Close()
		srv.CloseClientConnections()
		srv.Close()
		reaper.Close()
	})
	return &harness{
		svc:   svc,
		st:    st,
		srv:   srv,
		proto: processconnect.NewProcessClient(srv.Client(), srv.URL, connect.WithAcceptCompression("gzip", nil, nil)),
		json:  processconnect.NewProcessClient(srv.Client(), srv.URL, connect.WithProtoJSON(), connect.WithAcceptCompression("gzip", nil, nil)),
		gzip:  processconnect.NewProcessClient(srv.Client(), srv.URL),
	}
}

// result is everything one Start/Connect stream delivered.
type result struct {
	pid        uint32
	stdout     []byte
	stderr     []byte
	pty        []byte
	end        *pb.ProcessEvent_EndEvent
	keepalives int
	events     int
	maxChunk   int
	err        error
}

type eventStream interface {
	Receive() bool
	Err() error
	Close() error
}

func drain[T interface{ GetEvent() *pb.ProcessEvent }](s interface {
	Receive() bool
	Msg() T
	Err() error
	Close() error
}) result {
	var r result
	defer s.Close()
	for s.Receive() {
		r.events++
		ev := s.Msg().GetEvent()
		switch e := ev.GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			r.pid = e.Start.GetPid()
		case *pb.ProcessEvent_Data:
			var n int
			switch o := e.Data.GetOutput().(type) {
			case *pb.ProcessEvent_DataEvent_Stdout:
				r.stdout, n = append(r.stdout, o.Stdout...), len(o.Stdout)
			case *pb.ProcessEvent_DataEvent_Stderr:
				r.stderr, n = append(r.stderr, o.Stderr...), len(o.Stderr)
			case *pb.ProcessEvent_DataEvent_Pty:
				r.pty, n = append(r.pty, o.Pty...), len(o.Pty)
			}
			r.maxChunk = max(r.maxChunk, n)
		case *pb.ProcessEvent_End:
			r.end = e.End
		case *pb.ProcessEvent_Keepalive:
			r.keepalives++
		}
	}
	r.err = s.Err()
	return r
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func cfg(cmd string, args ...string) *pb.ProcessConfig {
	return &pb.ProcessConfig{Cmd: cmd, Args: args}
}

func sh(script string) *pb.ProcessConfig { return cfg("/bin/sh", "-c", script) }

// run starts msg and drains its stream.
func (h *harness) run(t *testing.T, c processconnect.ProcessClient, msg *pb.StartRequest) result {
	t.Helper()
	st, err := c.Start(testCtx(t), connect.NewRequest(msg))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	return drain(st)
}

// startStream starts msg and reads the start event.
func (h *harness) startStream(t *testing.T, ctx context.Context, c processconnect.ProcessClient, msg *pb.StartRequest) (*connect.ServerStreamForClient[pb.StartResponse], uint32) {
	t.Helper()
	st, err := c.Start(ctx, connect.NewRequest(msg))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if !st.Receive() {
		t.Fatalf("no start event: %v", st.Err())
	}
	pid := st.Msg().GetEvent().GetStart().GetPid()
	if pid == 0 {
		t.Fatalf("first event is not start: %v", st.Msg())
	}
	t.Cleanup(func() { st.Close() })
	return st, pid
}

func pidSel(pid uint32) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
}

func tagSel(tag string) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
}

func codeOf(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return connect.CodeUnknown
}

func ptr[T any](v T) *T { return &v }

// eventually polls cond for up to 30 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fdCount() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// zombies lists our own exited-but-unreaped children.
func zombies() []int {
	self := strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 2 && f[0] == "Z" && f[1] == self {
			out = append(out, pid)
		}
	}
	return out
}

// checkLeaks records goroutine and fd counts now and, at cleanup (after
// the harness is torn down, so register it first), waits for both to come
// back and for no zombie to remain.
func checkLeaks(t *testing.T) {
	t.Helper()
	http.DefaultClient.CloseIdleConnections()
	g0, f0 := runtime.NumGoroutine(), fdCount()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			g, f, z := runtime.NumGoroutine(), fdCount(), zombies()
			if g <= g0 && f <= f0 && len(z) == 0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Fatalf("leak: goroutines %d→%d, fds %d→%d, zombies %v\n%s", g0, g, f0, f, z, buf[:n])
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// addUser creates a test user (removed at cleanup).
func addUser(t *testing.T, name string, extra ...string) {
	t.Helper()
	_ = exec.Command("userdel", "-r", name).Run()
	args := append([]string{"-m", "-s", "/bin/bash"}, extra...)
	args = append(args, name)
	if out, err := exec.Command("useradd", args...).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("userdel", "-r", name).Run() })
}
