package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/internal/fsuser"
	"github.com/envd-go/envd/internal/writectl"
)

// keepaliveInterval reads Keepalive-Ping-Interval (seconds); missing or
// malformed means 90 s, and at least 1 s.
func keepaliveInterval(h http.Header) time.Duration {
	secs, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval"))
	if err != nil {
		secs = defaultKeepaliveSecs
	}
	return time.Duration(max(secs, 1)) * time.Second
}

// fsMagic returns the filesystem magic of path. Swappable (atomically, as
// handlers read it concurrently) so tests can fake NFS/FUSE, which cannot
// be mounted here.
var fsMagic atomic.Pointer[func(string) (int64, error)]

func init() {
	f := func(path string) (int64, error) {
		var fs unix.Statfs_t
		if err := unix.Statfs(path, &fs); err != nil {
			return 0, err
		}
		return int64(fs.Type), nil
	}
	fsMagic.Store(&f)
}

// openWatch validates the path as protocol.md §5.4 says and starts a watch.
func (s *Service) openWatch(ctx context.Context, h http.Header, path string, recursive, includeEntry, allowNet bool) (*watch, error) {
	c, err := s.caller(ctx, h)
	if err != nil {
		return nil, err
	}
	p, err := s.resolve(c, path)
	if err != nil {
		return nil, err
	}
	err = fsuser.Do(c.creds, func() error {
		st, err := os.Stat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return connect.NewError(connect.CodeNotFound, fmt.Errorf("path %s not found: %w", p, err))
		case err != nil:
			return fsError(err, "error getting file info")
		case !st.IsDir():
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %s not a directory: %w", p, unix.ENOTDIR))
		}
		if !allowNet {
			fsType, err := (*fsMagic.Load())(p)
			if err != nil {
				return fsError(err, "error checking filesystem of %s", p)
			}
			if networkFS[fsType] {
				return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cannot watch path on network filesystem: %s", p))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	w, err := startWatch(p, recursive, includeEntry, c.creds, s.opts.MaxQueued, s.opts.Logger)
	if err != nil {
		return nil, fsError(err, "error creating watcher")
	}
	return w, nil
}

func (s *Service) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	m := req.Msg
	w, err := s.openWatch(ctx, req.Header(), m.GetPath(), m.GetRecursive(), m.GetIncludeEntry(), m.GetAllowNetworkMounts())
	if err != nil {
		return err
	}
	defer w.close()

	interval := keepaliveInterval(req.Header())
	legacy := isLegacy(req.Header())
	if legacy {
		markLegacy(stream.ResponseHeader())
	}
	if err := s.send(ctx, stream, &pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	keepalive := time.NewTimer(interval)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
			}
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		case <-w.ready:
			evs, werr := w.take()
			if legacy {
				legacyEvents(evs)
			}
			// A burst leaves in one flush, not one write per event.
			release := writectl.Hold(ctx)
			for _, ev := range evs {
				if err := s.send(ctx, stream, &pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: ev}}); err != nil {
					release()
					return err
				}
			}
			if err := release(); err != nil {
				return connect.NewError(connect.CodeUnknown, fmt.Errorf("send: %w", err))
			}
			if werr != nil {
				return connect.NewError(connect.CodeInternal, fmt.Errorf("watcher error: %w", werr))
			}
			if len(evs) > 0 {
				keepalive.Reset(interval)
			}
		case <-keepalive.C:
			if err := s.send(ctx, stream, &pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
			keepalive.Reset(interval)
		}
	}
}

// send bounds each stream write so a client that stopped reading is
// dropped after WriteTimeout instead of holding the watch forever.
func (s *Service) send(ctx context.Context, stream *connect.ServerStream[pb.WatchDirResponse], msg *pb.WatchDirResponse) error {
	writectl.SetWriteDeadline(ctx, time.Now().Add(s.opts.WriteTimeout))
	if err := stream.Send(msg); err != nil {
		return connect.NewError(connect.CodeUnknown, fmt.Errorf("send: %w", err))
	}
	return nil
}

// polled is a CreateWatcher watcher: events wait in the watch queue until
// GetWatcherEvents; an idle timer removes it when nobody polls.
type polled struct {
	w     *watch
	timer *time.Timer
}

func (p *polled) stop() {
	p.timer.Stop()
	p.w.close()
}

func (s *Service) CreateWatcher(ctx context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	m := req.Msg
	w, err := s.openWatch(ctx, req.Header(), m.GetPath(), m.GetRecursive(), m.GetIncludeEntry(), m.GetAllowNetworkMounts())
	if err != nil {
		return nil, err
	}
	b := make([]byte, 12)
	rand.Read(b)
	id := "w" + hex.EncodeToString(b)
	p := &polled{w: w}
	s.mu.Lock()
	p.timer = time.AfterFunc(s.opts.WatcherIdle, func() { s.drop(id, p) })
	s.watchers[id] = p
	s.mu.Unlock()
	return connect.NewResponse(&pb.CreateWatcherResponse{WatcherId: id}), nil
}

// drop removes watcher id if it is still p (the idle timer may race with
// RemoveWatcher).
func (s *Service) drop(id string, p *polled) {
	s.mu.Lock()
	cur, ok := s.watchers[id]
	if ok && cur == p {
		delete(s.watchers, id)
	}
	s.mu.Unlock()
	if ok && cur == p {
		s.opts.Logger.Debug("watcher expired or removed", "id", id)
		p.stop()
	}
}

func (s *Service) lookup(id string) (*polled, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.watchers[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher with id %s not found", id))
	}
	p.timer.Reset(s.opts.WatcherIdle)
	return p, nil
}

func (s *Service) GetWatcherEvents(ctx context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	p, err := s.lookup(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	evs, werr := p.w.take()
	// Events queued before a failure are delivered first; the error stays
	// stored and answers every later poll.
	if len(evs) == 0 && werr != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("watcher error: %w", werr))
	}
	resp := connect.NewResponse(&pb.GetWatcherEventsResponse{Events: evs})
	if isLegacy(req.Header()) {
		legacyEvents(evs)
		markLegacy(resp.Header())
	}
	return resp, nil
}

func (s *Service) RemoveWatcher(ctx context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	id := req.Msg.GetWatcherId()
	p, err := s.lookup(id)
	if err != nil {
		return nil, err
	}
	s.drop(id, p)
	return connect.NewResponse(&pb.RemoveWatcherResponse{}), nil
}
