package filesystem

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	pb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/internal/fsuser"
)

// watchMask is e2b's set: no open/access/close events.
const watchMask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_DELETE_SELF |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_MOVE_SELF | unix.IN_ATTRIB

// Filesystem magics refused unless allow_network_mounts (protocol.md §5.4).
var networkFS = map[int64]bool{
	0x6969:     true, // NFS
	0xFF534D42: true, // CIFS
	0x517B:     true, // SMB
	0xFE534D42: true, // SMB2
	0x65735546: true, // FUSE
}

// errKernelOverflow keeps fsnotify's text, which clients may match.
var errKernelOverflow = errors.New("fsnotify: queue or buffer overflow")

// watch is one inotify instance for one watched directory (and, when
// recursive, every directory below it). A reader goroutine turns kernel
// events into FilesystemEvents and queues them; consumers take them. The
// reader never waits for a consumer: a full queue is a watcher error.
type watch struct {
	root         string // as addressed by the client
	recursive    bool
	includeEntry bool
	creds        fsuser.Creds
	maxQueued    int
	log          *slog.Logger

	f *os.File

	// Owned by the reader goroutine after start.
	dirs  map[int32]string // wd -> path relative to root ("" = root)
	byRel map[string]int32
	b     entryBuilder

	mu     sync.Mutex
	queue  []*pb.FilesystemEvent
	err    error
	ready  chan struct{} // signalled (cap 1) when queue or err changed
	done   chan struct{} // closed when the reader exits
	closed sync.Once
}

// startWatch validates nothing: callers check the path first. It adds the
// watches with the user's rights (inotify_add_watch needs read permission).
func startWatch(root string, recursive, includeEntry bool, creds fsuser.Creds, maxQueued int, log *slog.Logger) (*watch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	w := &watch{
		root: root, recursive: recursive, includeEntry: includeEntry,
		creds: creds, maxQueued: maxQueued, log: log,
		// Non-blocking fd: reads go through the poller, Close unblocks them.
		f:     os.NewFile(uintptr(fd), "inotify"),
		dirs:  map[int32]string{},
		byRel: map[string]int32{},
		ready: make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	err = fsuser.Do(creds, func() error {
		wd, err := w.addWatch(root, watchMask|unix.IN_ONLYDIR)
		if err != nil {
			return &os.PathError{Op: "inotify_add_watch", Path: root, Err: err}
		}
		w.track(wd, "")
		if recursive {
			return w.addTree("", false)
		}
		return nil
	})
	if err != nil {
		w.f.Close()
		return nil, err
	}
	go w.read()
	return w, nil
}

// close stops the reader and releases the inotify instance.
func (w *watch) close() {
	w.closed.Do(func() { w.f.Close() })
	<-w.done
}

// take returns and clears the queued events and the watcher error, if any.
func (w *watch) take() ([]*pb.FilesystemEvent, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queue
	w.queue = nil
	return q, w.err
}

func (w *watch) push(ev *pb.FilesystemEvent) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return false
	}
	if len(w.queue) >= w.maxQueued {
		w.err = fmt.Errorf("event queue overflow: more than %d undelivered events", w.maxQueued)
		w.signal()
		return false
	}
	w.queue = append(w.queue, ev)
	w.signal()
	return true
}

func (w *watch) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.signal()
}

func (w *watch) signal() {
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

// addWatch goes through the raw conn so a concurrent close cannot free
// (and the process reuse) the fd number in the middle of the call. Never
// use f.Fd(): it would switch the fd to blocking mode.
func (w *watch) addWatch(path string, mask uint32) (int32, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var wd int
	var werr error
	if err := rc.Control(func(fd uintptr) { wd, werr = unix.InotifyAddWatch(int(fd), path, mask) }); err != nil {
		return 0, err
	}
	return int32(wd), werr
}

func (w *watch) rmWatch(wd int32) {
	if rc, err := w.f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.InotifyRmWatch(int(fd), uint32(wd)) })
	}
}

func (w *watch) track(wd int32, rel string) {
	if old, ok := w.dirs[wd]; ok {
		delete(w.byRel, old)
	}
	w.dirs[wd] = rel
	w.byRel[rel] = wd
}

func (w *watch) abs(rel string) string {
	if rel == "" {
		return w.root
	}
	return joinPath(w.root, rel)
}

// addTree watches every directory below rel (which is watched already).
// With emit, it also queues a CREATE for each entry found: the directory
// appeared populated (mkdir -p, a tree moved in) before its watch existed.
// Must run with the user's credentials.
func (w *watch) addTree(rel string, emit bool) error {
	names, err := readNames(w.abs(rel))
	if err != nil {
		return nil // vanished or unreadable by the user: nothing to watch
	}
	for _, name := range names {
		child := joinRel(rel, name)
		var st unix.Stat_t
		if unix.Lstat(w.abs(child), &st) != nil {
			continue
		}
		if emit && !w.emit(child, pb.EventType_EVENT_TYPE_CREATE) {
			return nil
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		wd, err := w.addWatch(w.abs(child), watchMask|unix.IN_ONLYDIR|unix.IN_DONT_FOLLOW)
		switch {
		case errors.Is(err, unix.ENOSPC):
			return fmt.Errorf("inotify watch limit reached: %w", err)
		case err != nil:
			continue // gone or not readable by the user
		}
		w.track(wd, child)
		if err := w.addTree(child, emit); err != nil {
			return err
		}
	}
	return nil
}

func (w *watch) emit(rel string, t pb.EventType) bool {
	name := rel
	if name == "" {
		name = "."
	}
	ev := &pb.FilesystemEvent{Name: name, Type: t}
	if w.includeEntry && (t == pb.EventType_EVENT_TYPE_CREATE || t == pb.EventType_EVENT_TYPE_WRITE || t == pb.EventType_EVENT_TYPE_CHMOD) {
		if e, err := w.b.build(w.abs(rel)); err == nil {
			ev.Entry = e
		}
	}
	return w.push(ev)
}

func (w *watch) read() {
	defer close(w.done)
	defer w.closed.Do(func() { w.f.Close() })
	// Room for 4096 events with short names in one read.
	buf := make([]byte, 4096*(unix.SizeofInotifyEvent+16))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
				w.fail(fmt.Errorf("read inotify: %w", err))
			}
			return
		}
		w.b = entryBuilder{} // fresh id→name maps per batch
		ok := true
		if w.includeEntry && !w.creds.IsRoot() {
			// Entries are stat'ed (and their xattrs read) as the user.
			fsuser.Do(w.creds, func() error { ok = w.handle(buf[:n]); return nil })
		} else {
			ok = w.handle(buf[:n])
		}
		if !ok {
			return
		}
	}
}

type rawEvent struct {
	wd     int32
	mask   uint32
	cookie uint32
	name   string
}

// handle processes one read's worth of events; false stops the watcher.
func (w *watch) handle(buf []byte) bool {
	// Directories moved away inside this batch, by cookie: a matching
	// MOVED_TO renames their watches, otherwise they left the tree.
	var movedDirs map[uint32]string
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		ev := rawEvent{wd: raw.Wd, mask: raw.Mask, cookie: raw.Cookie}
		nameStart := off + unix.SizeofInotifyEvent
		nameEnd := nameStart + int(raw.Len)
		if nameEnd > len(buf) {
			break
		}
		ev.name = strings.TrimRight(string(buf[nameStart:nameEnd]), "\x00")
		off = nameEnd

		if ev.mask&unix.IN_Q_OVERFLOW != 0 {
			w.fail(errKernelOverflow)
			return false
		}
		if !w.one(ev, &movedDirs) {
			return false
		}
	}
	for _, rel := range movedDirs {
		w.untrackTree(rel)
	}
	return true
}

func (w *watch) one(ev rawEvent, movedDirs *map[uint32]string) bool {
	dir, ok := w.dirs[ev.wd]
	if !ok {
		return true // watch already removed
	}
	if ev.mask&unix.IN_IGNORED != 0 {
		if w.byRel[dir] == ev.wd {
			delete(w.byRel, dir)
		}
		delete(w.dirs, ev.wd)
		return true
	}
	if ev.mask&unix.IN_UNMOUNT != 0 {
		return true
	}
	self := ev.name == ""
	if self && dir != "" {
		// A watched subdirectory's own events: its parent reports them.
		return true
	}
	rel := dir
	if !self {
		rel = joinRel(dir, ev.name)
	}
	isDir := ev.mask&unix.IN_ISDIR != 0

	// Bookkeeping for recursive watches before emitting, so events inside
	// a moved directory carry the new path.
	var populate bool
	if w.recursive && isDir && !self {
		switch {
		case ev.mask&unix.IN_MOVED_FROM != 0:
			if *movedDirs == nil {
				*movedDirs = map[uint32]string{}
			}
			(*movedDirs)[ev.cookie] = rel
		case ev.mask&unix.IN_MOVED_TO != 0:
			if old, ok := (*movedDirs)[ev.cookie]; ok {
				delete(*movedDirs, ev.cookie)
				w.renameTree(old, rel)
			} else {
				populate = true
			}
		case ev.mask&unix.IN_CREATE != 0:
			populate = true
		}
	}

	order := []struct {
		bits uint32
		t    pb.EventType
	}{
		{unix.IN_CREATE | unix.IN_MOVED_TO, pb.EventType_EVENT_TYPE_CREATE},
		{unix.IN_MOVED_FROM | unix.IN_MOVE_SELF, pb.EventType_EVENT_TYPE_RENAME},
		{unix.IN_ATTRIB, pb.EventType_EVENT_TYPE_CHMOD},
		{unix.IN_MODIFY, pb.EventType_EVENT_TYPE_WRITE},
		{unix.IN_DELETE | unix.IN_DELETE_SELF, pb.EventType_EVENT_TYPE_REMOVE},
	}
	for _, o := range order {
		if ev.mask&o.bits != 0 && !w.emit(rel, o.t) {
			return false
		}
	}
	if populate {
		err := fsuser.Do(w.creds, func() error {
			wd, err := w.addWatch(w.abs(rel), watchMask|unix.IN_ONLYDIR|unix.IN_DONT_FOLLOW)
			if err != nil {
				if errors.Is(err, unix.ENOSPC) {
					return fmt.Errorf("inotify watch limit reached: %w", err)
				}
				return nil // gone again, or the user may not read it
			}
			w.track(wd, rel)
			return w.addTree(rel, true)
		})
		if err != nil {
			w.fail(err)
			return false
		}
	}
	w.mu.Lock()
	failed := w.err != nil
	w.mu.Unlock()
	return !failed
}

// renameTree moves the bookkeeping of old and everything below it to rel.
func (w *watch) renameTree(old, rel string) {
	for wd, p := range w.dirs {
		if p == old || strings.HasPrefix(p, old+"/") {
			np := rel + p[len(old):]
			delete(w.byRel, p)
			w.dirs[wd] = np
			w.byRel[np] = wd
		}
	}
}

// untrackTree drops the watches of a directory that left the tree.
func (w *watch) untrackTree(rel string) {
	for wd, p := range w.dirs {
		if p == rel || strings.HasPrefix(p, rel+"/") {
			w.rmWatch(wd)
			delete(w.dirs, wd)
			delete(w.byRel, p)
		}
	}
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func joinPath(dir, name string) string {
	if strings.HasSuffix(dir, "/") {
		return dir + name
	}
	return dir + "/" + name
}
