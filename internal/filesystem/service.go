// Package filesystem implements the Filesystem service: stat, list, move,
// remove, make directories and watch, acting with the requesting user's
// rights (package fsuser): what the kernel refuses the user is
// permission_denied.
//
// Bounds e2b leaves open: a CreateWatcher watcher nobody polls for 10 min
// is removed; at most 10000 undelivered events per watcher, more is a
// watcher error ("event queue overflow"), never a silent gap; one WatchDir
// send may block 60 s before the client is dropped. ListDir skips the
// children of subdirectories the user cannot read (the entry itself is
// listed); an unreadable top directory is permission_denied.
package filesystem

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/fsuser"
	"github.com/envd-go/envd/internal/paths"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
)

// Defaults for watchers; see Options.
const (
	DefaultWatcherIdle   = 10 * time.Minute
	DefaultMaxQueued     = 10000
	DefaultWriteTimeout  = 60 * time.Second
	defaultKeepaliveSecs = 90
)

// Options are what the service needs from the rest of envd.
type Options struct {
	State  *state.State
	Logger *slog.Logger
	// WatcherIdle removes a CreateWatcher watcher that nobody polled for
	// this long (0: DefaultWatcherIdle).
	WatcherIdle time.Duration
	// MaxQueued bounds undelivered events per watcher; more is a watcher
	// error, never a silent gap (0: DefaultMaxQueued).
	MaxQueued int
	// WriteTimeout bounds one WatchDir stream send (0: DefaultWriteTimeout).
	WriteTimeout time.Duration
}

// Service implements filesystemconnect.FilesystemHandler.
type Service struct {
	filesystemconnect.UnimplementedFilesystemHandler
	opts Options

	mu       sync.Mutex
	watchers map[string]*polled
}

// New returns the Filesystem service.
func New(opts Options) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.WatcherIdle <= 0 {
		opts.WatcherIdle = DefaultWatcherIdle
	}
	if opts.MaxQueued <= 0 {
		opts.MaxQueued = DefaultMaxQueued
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	return &Service{opts: opts, watchers: map[string]*polled{}}
}

// Close releases every polled watcher. Stream watchers end with their
// streams.
func (s *Service) Close() {
	s.mu.Lock()
	ws := s.watchers
	s.watchers = map[string]*polled{}
	s.mu.Unlock()
	for _, p := range ws {
		p.stop()
	}
}

// caller is the user of one request and its resolved path(s).
type caller struct {
	user  *users.User
	creds fsuser.Creds
}

func (s *Service) caller(ctx context.Context, h http.Header) (caller, error) {
	u := auth.UserFrom(ctx)
	if u == nil {
		var err error
		if u, err = auth.RPCUser(h, s.opts.State); err != nil {
			return caller{}, err
		}
	}
	return caller{user: u, creds: fsuser.Of(u)}, nil
}

func (s *Service) resolve(c caller, p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("error resolving path '%s': path contains a NUL byte", strings.ReplaceAll(p, "\x00", `\x00`)))
	}
	r, err := paths.Resolve(p, c.user.Home, s.opts.State.DefaultWorkdir())
	if err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("error resolving path '%s': %w", p, err))
	}
	return r, nil
}

// codeOf picks the Connect code for an OS error when no specific rule
// applies: the user's missing rights are permission_denied, names the
// kernel rejects are invalid_argument, the rest internal.
func codeOf(err error) connect.Code {
	switch {
	case errors.Is(err, os.ErrPermission):
		return connect.CodePermissionDenied
	case errors.Is(err, unix.ENAMETOOLONG), errors.Is(err, unix.EINVAL):
		return connect.CodeInvalidArgument
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return connect.CodeResourceExhausted
	}
	return connect.CodeInternal
}

func fsError(err error, format string, args ...any) error {
	return connect.NewError(codeOf(err), fmt.Errorf(format+": %w", append(args, err)...))
}

// statEntry is the EntryInfo rule of §5.3 with its error mapping.
func statEntry(b *entryBuilder, p string) (*pb.EntryInfo, error) {
	e, err := b.build(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("file not found: %w", err))
		}
		return nil, fsError(err, "error getting file info")
	}
	return e, nil
}

func (s *Service) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	c, err := s.caller(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	p, err := s.resolve(c, req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	var e *pb.EntryInfo
	err = fsuser.Do(c.creds, func() (err error) {
		e, err = statEntry(&entryBuilder{}, p)
		return err
	})
	if err != nil {
		return nil, err
	}
	resp := connect.NewResponse(&pb.StatResponse{Entry: e})
	if isLegacy(req.Header()) {
		resp.Msg.Entry = legacyEntry(e)
		markLegacy(resp.Header())
	}
	return resp, nil
}

func (s *Service) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	c, err := s.caller(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	p, err := s.resolve(c, req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	var e *pb.EntryInfo
	err = fsuser.Do(c.creds, func() error {
		st, err := os.Stat(p)
		switch {
		case err == nil && st.IsDir():
			return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory already exists: %s", p))
		case err == nil:
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path already exists but it is not a directory: %s", p))
		case !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTDIR):
			// ENOTDIR: a component is a file; MkdirAll names it below.
			return fsError(err, "error getting file info")
		}
		if _, err := fsuser.MkdirAll(p, c.user.UID, c.user.GID); err != nil {
			if errors.Is(err, fsuser.ErrNotDir) {
				return connect.NewError(connect.CodeInternal, err)
			}
			return fsError(err, "error creating directory")
		}
		e, err = statEntry(&entryBuilder{}, p)
		return err
	})
	if err != nil {
		return nil, err
	}
	resp := connect.NewResponse(&pb.MakeDirResponse{Entry: e})
	if isLegacy(req.Header()) {
		resp.Msg.Entry = legacyEntry(e)
		markLegacy(resp.Header())
	}
	return resp, nil
}

func (s *Service) Move(ctx context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	c, err := s.caller(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	src, err := s.resolve(c, req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := s.resolve(c, req.Msg.GetDestination())
	if err != nil {
		return nil, err
	}
	var e *pb.EntryInfo
	err = fsuser.Do(c.creds, func() error {
		if _, err := fsuser.MkdirAll(filepath.Dir(dst), c.user.UID, c.user.GID); err != nil {
			if errors.Is(err, fsuser.ErrNotDir) {
				return connect.NewError(connect.CodeInternal, fmt.Errorf("error creating destination directory: %w", err))
			}
			return fsError(err, "error creating destination directory")
		}
		if err := os.Rename(src, dst); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return connect.NewError(connect.CodeNotFound, fmt.Errorf("source file not found: %w", err))
			}
			return fsError(err, "error renaming")
		}
		e, err = statEntry(&entryBuilder{}, dst)
		return err
	})
	if err != nil {
		return nil, err
	}
	resp := connect.NewResponse(&pb.MoveResponse{Entry: e})
	if isLegacy(req.Header()) {
		resp.Msg.Entry = legacyEntry(e)
		markLegacy(resp.Header())
	}
	return resp, nil
}

func (s *Service) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	c, err := s.caller(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	// An empty path would resolve to the workdir or home and delete it whole:
	// never what a caller meant, so it is refused, as is the root directory.
	if req.Msg.GetPath() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("path is required"))
	}
	p, err := s.resolve(c, req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if filepath.Clean(p) == "/" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("refusing to remove /"))
	}
	err = fsuser.Do(c.creds, func() error {
		if err := os.RemoveAll(p); err != nil {
			return fsError(err, "error removing file or directory")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

func (s *Service) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	c, err := s.caller(ctx, req.Header())
	if err != nil {
		return nil, err
	}
	p, err := s.resolve(c, req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	var entries []*pb.EntryInfo
	err = fsuser.Do(c.creds, func() (err error) {
		entries, err = listDir(ctx, p, depth)
		return err
	})
	if err != nil {
		return nil, err
	}
	resp := connect.NewResponse(&pb.ListDirResponse{Entries: entries})
	if isLegacy(req.Header()) {
		for i, e := range entries {
			entries[i] = legacyEntry(e)
		}
		markLegacy(resp.Header())
	}
	return resp, nil
}

func listDir(ctx context.Context, p string, depth int) ([]*pb.EntryInfo, error) {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("path not found: %w", err))
		case errors.Is(err, unix.ELOOP), strings.Contains(err.Error(), "too many links"):
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("symlink loop: %w", err))
		}
		return nil, fsError(err, "error resolving path %s", p)
	}
	st, err := os.Stat(real)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("path not found: %w", err))
		}
		return nil, fsError(err, "error getting file info")
	}
	if !st.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path is not a directory: %s", p))
	}
	w := &walker{ctx: ctx, depth: depth}
	if err := w.dir(real, p, 1, true); err != nil {
		return nil, err
	}
	return w.out, nil
}

// walker lists a tree depth-first in lexical order. Per directory level it
// holds only that directory's names; everything else is the response.
type walker struct {
	ctx   context.Context
	depth int
	b     entryBuilder
	out   []*pb.EntryInfo
}

func (w *walker) dir(real, shown string, level int, top bool) error {
	if err := w.ctx.Err(); err != nil {
		return connect.NewError(connect.CodeCanceled, err)
	}
	dir, names, err := openNames(real)
	if err != nil {
		switch {
		case !top && (errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR)):
			return nil // vanished during the walk
		case !top && errors.Is(err, os.ErrPermission):
			return nil // the user may see the entry but not inside it
		case errors.Is(err, os.ErrPermission):
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("error reading directory %s: %w", shown, err))
		}
		return connect.NewError(connect.CodeInternal, fmt.Errorf("error reading directory %s: %w", shown, err))
	}
	defer dir.Close()
	dirfd := int(dir.Fd())
	for _, name := range names {
		var st unix.Stat_t
		// One string for both when the path has no symlinks (the usual
		// case): 20k entries, 20k fewer allocations.
		shownPath := filepath.Join(shown, name) // cleaned, as e2b reports it
		abs := shownPath
		if real != shown {
			abs = joinPath(real, name)
		}
		// Relative to the open directory: no path walk per entry.
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return connect.NewError(connect.CodeInternal, fmt.Errorf("error reading directory %s: lstat %s: %w", shown, abs, err))
		}
		e := w.b.fromStat(abs, &st)
		e.Name, e.Path = name, shownPath
		w.out = append(w.out, e)
		if level < w.depth && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := w.dir(abs, e.Path, level+1, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// openNames returns the open directory and its sorted entry names.
func openNames(dir string) (*os.File, []string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	sort.Strings(names)
	return f, names, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}
