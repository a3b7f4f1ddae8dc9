package envdclient

import (
	"context"
	"os"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/filesystem"
)

// File types as Entry.Type reports them.
const (
	TypeFile      = "file"
	TypeDirectory = "dir"
	TypeSymlink   = "symlink"
	TypeOther     = "" // fifo, socket, device, broken symlink
)

// Entry is a file or directory in the guest (envd's EntryInfo).
type Entry struct {
	Name          string            `json:"name"`
	Type          string            `json:"type"`
	Path          string            `json:"path"`
	Size          int64             `json:"size"`
	Mode          os.FileMode       `json:"mode"` // permission bits only
	Permissions   string            `json:"permissions"`
	Owner         string            `json:"owner"`
	Group         string            `json:"group"`
	ModTime       time.Time         `json:"modifiedTime"`
	SymlinkTarget string            `json:"symlinkTarget,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
}

// IsDir reports whether the entry (or its symlink target) is a directory.
func (e Entry) IsDir() bool { return e.Type == TypeDirectory }

func fileType(t pb.FileType) string {
	switch t {
	case pb.FileType_FILE_TYPE_FILE:
		return TypeFile
	case pb.FileType_FILE_TYPE_DIRECTORY:
		return TypeDirectory
	case pb.FileType_FILE_TYPE_SYMLINK:
		return TypeSymlink
	}
	return TypeOther
}

func entry(e *pb.EntryInfo) *Entry {
	if e == nil {
		return nil
	}
	out := &Entry{
		Name: e.GetName(), Type: fileType(e.GetType()), Path: e.GetPath(), Size: e.GetSize(),
		Mode: os.FileMode(e.GetMode()) & os.ModePerm, Permissions: e.GetPermissions(),
		Owner: e.GetOwner(), Group: e.GetGroup(), SymlinkTarget: e.GetSymlinkTarget(),
		Metadata: e.GetMetadata(),
	}
	if e.GetModifiedTime() != nil {
		out.ModTime = e.GetModifiedTime().AsTime()
	}
	return out
}

// Stat describes path (a final symlink is not followed).
func (c *Client) Stat(ctx context.Context, path string) (*Entry, error) {
	resp, err := c.fs.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: path}))
	if err != nil {
		return nil, wrap("Stat", err)
	}
	return entry(resp.Msg.GetEntry()), nil
}

// ListDir lists path down to depth levels (0 means 1), depth-first in
// lexical order.
func (c *Client) ListDir(ctx context.Context, path string, depth uint32) ([]Entry, error) {
	resp, err := c.fs.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: path, Depth: depth}))
	if err != nil {
		return nil, wrap("ListDir", err)
	}
	out := make([]Entry, 0, len(resp.Msg.GetEntries()))
	for _, e := range resp.Msg.GetEntries() {
		out = append(out, *entry(e))
	}
	return out, nil
}

// MakeDir creates path and missing parents; ErrAlreadyExists if it exists.
func (c *Client) MakeDir(ctx context.Context, path string) (*Entry, error) {
	resp, err := c.fs.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: path}))
	if err != nil {
		return nil, wrap("MakeDir", err)
	}
	return entry(resp.Msg.GetEntry()), nil
}

// Move renames src to dst (creating dst's parents).
func (c *Client) Move(ctx context.Context, src, dst string) (*Entry, error) {
	resp, err := c.fs.Move(ctx, connect.NewRequest(&pb.MoveRequest{Source: src, Destination: dst}))
	if err != nil {
		return nil, wrap("Move", err)
	}
	return entry(resp.Msg.GetEntry()), nil
}

// Remove deletes path recursively; a missing path is not an error.
func (c *Client) Remove(ctx context.Context, path string) error {
	_, err := c.fs.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: path}))
	return wrap("Remove", err)
}

// Event types as Event.Type reports them.
const (
	EventCreate = "create"
	EventWrite  = "write"
	EventRemove = "remove"
	EventRename = "rename"
	EventChmod  = "chmod"
)

// Event is a filesystem change under a watched directory.
type Event struct {
	Name  string `json:"name"` // relative to the watched directory
	Type  string `json:"type"`
	Entry *Entry `json:"entry,omitempty"`
}

func event(e *pb.FilesystemEvent) Event {
	t := ""
	switch e.GetType() {
	case pb.EventType_EVENT_TYPE_CREATE:
		t = EventCreate
	case pb.EventType_EVENT_TYPE_WRITE:
		t = EventWrite
	case pb.EventType_EVENT_TYPE_REMOVE:
		t = EventRemove
	case pb.EventType_EVENT_TYPE_RENAME:
		t = EventRename
	case pb.EventType_EVENT_TYPE_CHMOD:
		t = EventChmod
	}
	return Event{Name: e.GetName(), Type: t, Entry: entry(e.GetEntry())}
}

// WatchOptions tune Watch and CreateWatcher.
type WatchOptions struct {
	Recursive          bool
	IncludeEntry       bool
	AllowNetworkMounts bool
}

// Watcher is a WatchDir stream.
type Watcher struct {
	s      *connect.ServerStreamForClient[pb.WatchDirResponse]
	wd     *watchdog
	cancel context.CancelFunc
}

// Watch starts watching dir and returns once envd confirmed the watch.
// ctx governs the stream; its deadline ends the watch.
func (c *Client) Watch(ctx context.Context, dir string, o WatchOptions) (*Watcher, error) {
	sctx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(c.streamIdle(), cancel)
	wd.arm()
	s, err := c.fsStream.WatchDir(sctx, connect.NewRequest(&pb.WatchDirRequest{
		Path: dir, Recursive: o.Recursive, IncludeEntry: o.IncludeEntry, AllowNetworkMounts: o.AllowNetworkMounts,
	}))
	if err != nil {
		wd.disarm()
		cancel()
		return nil, wd.check("WatchDir", err)
	}
	w := &Watcher{s: s, wd: wd, cancel: cancel}
	ok := s.Receive()
	wd.disarm()
	if !ok {
		err := s.Err()
		w.closeStream()
		if err != nil {
			return nil, wd.check("WatchDir", err)
		}
		return nil, protocolError("WatchDir", "stream ended before the start event")
	}
	if s.Msg().GetStart() == nil {
		w.closeStream()
		return nil, protocolError("WatchDir", "first message is not a start event")
	}
	return w, nil
}

// Next blocks for the next event, skipping keepalives. It returns an
// error when the stream ends; after Close that error matches ErrCanceled.
func (w *Watcher) Next() (Event, error) {
	for {
		w.wd.arm()
		ok := w.s.Receive()
		w.wd.disarm()
		if !ok {
			err := w.s.Err()
			w.s.Close()
			if err != nil {
				return Event{}, w.wd.check("WatchDir", err)
			}
			return Event{}, protocolError("WatchDir", "stream ended")
		}
		if fe := w.s.Msg().GetFilesystem(); fe != nil {
			return event(fe), nil
		}
	}
}

// Close ends the watch. It may be called from another goroutine to
// unblock Next.
func (w *Watcher) Close() error {
	w.cancel()
	return nil
}

// closeStream cancels and releases the stream; only for the goroutine that
// reads it.
func (w *Watcher) closeStream() {
	w.cancel()
	w.s.Close()
}

// CreateWatcher starts a polled watcher and returns its id.
func (c *Client) CreateWatcher(ctx context.Context, dir string, o WatchOptions) (string, error) {
	resp, err := c.fs.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{
		Path: dir, Recursive: o.Recursive, IncludeEntry: o.IncludeEntry, AllowNetworkMounts: o.AllowNetworkMounts,
	}))
	if err != nil {
		return "", wrap("CreateWatcher", err)
	}
	return resp.Msg.GetWatcherId(), nil
}

// WatcherEvents returns and clears the events a polled watcher collected.
func (c *Client) WatcherEvents(ctx context.Context, id string) ([]Event, error) {
	resp, err := c.fs.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: id}))
	if err != nil {
		return nil, wrap("GetWatcherEvents", err)
	}
	out := make([]Event, 0, len(resp.Msg.GetEvents()))
	for _, e := range resp.Msg.GetEvents() {
		out = append(out, event(e))
	}
	return out, nil
}

// RemoveWatcher stops a polled watcher.
func (c *Client) RemoveWatcher(ctx context.Context, id string) error {
	_, err := c.fs.RemoveWatcher(ctx, connect.NewRequest(&pb.RemoveWatcherRequest{WatcherId: id}))
	return wrap("RemoveWatcher", err)
}
