package vmtest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/gen/filesystem/filesystemconnect"
	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
)

// rpc holds Connect clients on their own HTTP/1.1 transport, as host
// agents use: no total timeout (streams), bounded dial and headers.
type rpc struct {
	tr   *http.Transport
	proc processconnect.ProcessClient
	fs   filesystemconnect.FilesystemClient
}

func (v *testVM) newRPC() *rpc {
	tr := &http.Transport{MaxIdleConnsPerHost: 4, ResponseHeaderTimeout: 30 * time.Second, IdleConnTimeout: 30 * time.Second}
	c := &http.Client{Transport: tr}
	r := &rpc{tr: tr, proc: processconnect.NewProcessClient(c, v.URL()), fs: filesystemconnect.NewFilesystemClient(c, v.URL())}
	v.t.Cleanup(tr.CloseIdleConnections)
	return r
}

// exec runs cmd args... to completion and returns its stdout and exit code.
func (r *rpc) exec(ctx context.Context, cmd string, args ...string) (string, int32, error) {
	stream, err := r.proc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: cmd, Args: args}}))
	if err != nil {
		return "", 0, err
	}
	defer stream.Close()
	var out strings.Builder
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			out.Write(d.GetStdout())
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

// subscription is an output stream (Start or Connect) read by a goroutine
// into a channel of stdout chunks; it ends when ctx is cancelled or the
// stream fails.
type subscription struct {
	pid    uint32
	chunks chan string
	done   chan error
	cancel context.CancelFunc
}

func (s *subscription) close() {
	s.cancel()
	<-s.done
}

// waitFor reads chunks until one contains want or timeout passes.
func (s *subscription) waitFor(want string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case c, ok := <-s.chunks:
			if !ok {
				return fmt.Errorf("stream ended before %q", want)
			}
			if strings.Contains(c, want) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no %q within %v", want, timeout)
		}
	}
}

func subscribe[T any](t *testing.T, open func(ctx context.Context) (*connect.ServerStreamForClient[T], error), event func(*T) *pb.ProcessEvent) (*subscription, error) {
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := open(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &subscription{chunks: make(chan string, 4096), done: make(chan error, 1), cancel: cancel}
	if !stream.Receive() {
		cancel()
		stream.Close()
		return nil, fmt.Errorf("no start event: %v", stream.Err())
	}
	s.pid = event(stream.Msg()).GetStart().GetPid()
	go func() {
		defer close(s.chunks)
		defer stream.Close()
		for stream.Receive() {
			if d := event(stream.Msg()).GetData(); d != nil {
				select {
				case s.chunks <- string(d.GetStdout()):
				default: // the test reads only what it needs
				}
			}
		}
		s.done <- stream.Err()
	}()
	t.Cleanup(func() { cancel(); <-s.chunks })
	return s, nil
}

// startStream starts a process (tagged) and subscribes to its output.
func (r *rpc) startStream(t *testing.T, tag, script string) (*subscription, error) {
	return subscribe(t, func(ctx context.Context) (*connect.ServerStreamForClient[pb.StartResponse], error) {
		req := connect.NewRequest(&pb.StartRequest{Tag: &tag, Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}})
		req.Header().Set("Keepalive-Ping-Interval", "2")
		return r.proc.Start(ctx, req)
	}, func(m *pb.StartResponse) *pb.ProcessEvent { return m.GetEvent() })
}

// connectStream subscribes to a running process by tag.
func (r *rpc) connectStream(t *testing.T, tag string) (*subscription, error) {
	return subscribe(t, func(ctx context.Context) (*connect.ServerStreamForClient[pb.ConnectResponse], error) {
		req := connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}})
		req.Header().Set("Keepalive-Ping-Interval", "2")
		return r.proc.Connect(ctx, req)
	}, func(m *pb.ConnectResponse) *pb.ProcessEvent { return m.GetEvent() })
}

// watch is a WatchDir stream delivering event names.
type watch struct {
	names  chan string
	cancel context.CancelFunc
}

func (r *rpc) watchDir(t *testing.T, dir string) (*watch, error) {
	ctx, cancel := context.WithCancel(context.Background())
	req := connect.NewRequest(&fspb.WatchDirRequest{Path: dir})
	req.Header().Set("Keepalive-Ping-Interval", "2")
	stream, err := r.fs.WatchDir(ctx, req)
	if err != nil {
		cancel()
		return nil, err
	}
	if !stream.Receive() || stream.Msg().GetStart() == nil {
		cancel()
		stream.Close()
		return nil, fmt.Errorf("watch %s: no start event: %v", dir, stream.Err())
	}
	w := &watch{names: make(chan string, 1024), cancel: cancel}
	go func() {
		defer close(w.names)
		defer stream.Close()
		for stream.Receive() {
			if ev := stream.Msg().GetFilesystem(); ev != nil {
				select {
				case w.names <- ev.GetName():
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		for range w.names {
		}
	})
	return w, nil
}

func (w *watch) waitFor(name string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case n, ok := <-w.names:
			if !ok {
				return fmt.Errorf("watch ended before %q", name)
			}
			if strings.HasSuffix(n, name) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no watch event for %q within %v", name, timeout)
		}
	}
}
