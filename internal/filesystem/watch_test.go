package filesystem

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/internal/fsuser/fsusertest"
)

// stream starts WatchDir and returns a channel of its messages (after the
// start message, which it checks).
func stream(t *testing.T, e *env, user string, r *pb.WatchDirRequest, hdr map[string]string) <-chan *pb.WatchDirResponse {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	rq := req(user, r)
	for k, v := range hdr {
		rq.Header().Set(k, v)
	}
	s, err := e.client.WatchDir(c, rq)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if !s.Receive() {
		cancel()
		t.Fatalf("no start message: %v", s.Err())
	}
	if s.Msg().GetStart() == nil {
		t.Fatalf("first message %v", s.Msg())
	}
	ch := make(chan *pb.WatchDirResponse, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		for s.Receive() {
			ch <- s.Msg()
		}
	}()
	t.Cleanup(func() {
		cancel()
		s.Close()
		<-done
	})
	return ch
}

// waitEvent reads ch until an event named name of type typ arrives.
func waitEvent(t *testing.T, ch <-chan *pb.WatchDirResponse, name string, typ pb.EventType) *pb.FilesystemEvent {
	t.Helper()
	timeout := time.After(30 * time.Second)
	var seen []string
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended waiting for %s %s; saw %v", typ, name, seen)
			}
			if ev := m.GetFilesystem(); ev != nil {
				if ev.Name == name && ev.Type == typ {
					return ev
				}
				seen = append(seen, ev.Type.String()+" "+ev.Name)
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s %s; saw %v", typ, name, seen)
		}
	}
}

// next returns the next stream message, failing on end or after 30 s.
func next(t *testing.T, ch <-chan *pb.WatchDirResponse) *pb.WatchDirResponse {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("stream ended")
		}
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("timed out")
	}
	return nil
}

const (
	create = pb.EventType_EVENT_TYPE_CREATE
	write  = pb.EventType_EVENT_TYPE_WRITE
	remove = pb.EventType_EVENT_TYPE_REMOVE
	rename = pb.EventType_EVENT_TYPE_RENAME
	chmod  = pb.EventType_EVENT_TYPE_CHMOD
)

func TestWatchDirRecursive(t *testing.T) {
	e := newEnv(t, Options{})
	base := t.TempDir()
	dir := filepath.Join(base, "watched")
	outside := filepath.Join(base, "outside")
	os.Mkdir(dir, 0o755)
	os.MkdirAll(filepath.Join(outside, "tree/a/b"), 0o755)
	os.WriteFile(filepath.Join(outside, "tree/a/b/file"), []byte("x"), 0o644)

	ch := stream(t, e, "", &pb.WatchDirRequest{Path: dir, Recursive: true, IncludeEntry: true}, nil)

	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	ev := waitEvent(t, ch, "sub", create)
	if ev.Entry == nil || ev.Entry.Type != pb.FileType_FILE_TYPE_DIRECTORY {
		t.Fatalf("create sub entry %v", ev.Entry)
	}
	os.WriteFile(filepath.Join(dir, "sub/f.txt"), []byte("hello"), 0o644)
	waitEvent(t, ch, "sub/f.txt", create)
	if ev := waitEvent(t, ch, "sub/f.txt", write); ev.Entry == nil || ev.Entry.Size == 0 && ev.Entry.Name != "f.txt" {
		t.Fatalf("write entry %v", ev.Entry)
	}
	os.Chmod(filepath.Join(dir, "sub/f.txt"), 0o600)
	waitEvent(t, ch, "sub/f.txt", chmod)

	// A tree moved in already populated: synthetic CREATEs, then watched.
	if err := os.Rename(filepath.Join(outside, "tree"), filepath.Join(dir, "tree")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tree", "tree/a", "tree/a/b", "tree/a/b/file"} {
		waitEvent(t, ch, n, create)
	}
	os.WriteFile(filepath.Join(dir, "tree/a/b/file"), []byte("y"), 0o644)
	waitEvent(t, ch, "tree/a/b/file", write)

	// mkdir -p: directories appear faster than watches can be added.
	os.MkdirAll(filepath.Join(dir, "p/q/r"), 0o755)
	os.WriteFile(filepath.Join(dir, "p/q/r/deep.txt"), nil, 0o644)
	waitEvent(t, ch, "p/q/r/deep.txt", create)

	// Renamed directories keep their watches under the new name.
	os.Rename(filepath.Join(dir, "tree"), filepath.Join(dir, "tree2"))
	waitEvent(t, ch, "tree", rename)
	waitEvent(t, ch, "tree2", create)
	os.WriteFile(filepath.Join(dir, "tree2/a/b/file"), []byte("z"), 0o644)
	waitEvent(t, ch, "tree2/a/b/file", write)

	// Moved out: no more events from it.
	os.Rename(filepath.Join(dir, "tree2"), filepath.Join(outside, "gone"))
	waitEvent(t, ch, "tree2", rename)
	os.WriteFile(filepath.Join(outside, "gone/a/b/file"), []byte("w"), 0o644)
	os.RemoveAll(filepath.Join(dir, "sub"))
	waitEvent(t, ch, "sub/f.txt", remove)
	ev = waitEvent(t, ch, "sub", remove)
	if ev.Entry != nil {
		t.Fatalf("entry on remove: %v", ev.Entry)
	}
	os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644)
	for {
		m := next(t, ch)
		if ev := m.GetFilesystem(); ev != nil {
			if strings.Contains(ev.Name, "gone") || strings.HasPrefix(ev.Name, "tree2/") {
				t.Fatalf("event from moved-out tree: %v", ev)
			}
			if ev.Name == "marker" {
				break
			}
		}
	}
}

func TestWatchDirFlat(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	ch := stream(t, e, "", &pb.WatchDirRequest{Path: dir}, map[string]string{"Keepalive-Ping-Interval": "1"})
	os.WriteFile(filepath.Join(dir, "sub/inner"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "top"), []byte("x"), 0o644)
	ev := waitEvent(t, ch, "top", create)
	if ev.Entry != nil {
		t.Fatalf("entry without include_entry: %v", ev.Entry)
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m := <-ch:
			if ev := m.GetFilesystem(); ev != nil && strings.HasPrefix(ev.Name, "sub/") {
				t.Fatalf("flat watch reported %v", ev)
			}
			if m.GetKeepalive() != nil {
				return
			}
		case <-timeout:
			t.Fatal("no keepalive")
		}
	}
}

func TestWatchValidation(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	tests := []struct {
		path string
		code connect.Code
	}{
		{filepath.Join(dir, "missing"), connect.CodeNotFound},
		{filepath.Join(dir, "file"), connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		_, err := e.client.CreateWatcher(ctx(t), req("", &pb.CreateWatcherRequest{Path: tc.path}))
		wantCode(t, err, tc.code)
		s, err := e.client.WatchDir(ctx(t), req("", &pb.WatchDirRequest{Path: tc.path}))
		if err == nil {
			s.Receive()
			err = s.Err()
			s.Close()
		}
		wantCode(t, err, tc.code)
	}
	_, err := e.client.GetWatcherEvents(ctx(t), req("", &pb.GetWatcherEventsRequest{WatcherId: "nope"}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = e.client.RemoveWatcher(ctx(t), req("", &pb.RemoveWatcherRequest{WatcherId: "nope"}))
	wantCode(t, err, connect.CodeNotFound)
}

// poll calls GetWatcherEvents until cond is met by the collected events.
func poll(t *testing.T, e *env, id string, cond func([]*pb.FilesystemEvent) bool) []*pb.FilesystemEvent {
	t.Helper()
	var all []*pb.FilesystemEvent
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := e.client.GetWatcherEvents(ctx(t), req("", &pb.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, resp.Msg.Events...)
		if cond(all) {
			return all
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("condition not met; events %v", all)
	return nil
}

func TestPolledWatcher(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	resp, err := e.client.CreateWatcher(ctx(t), req("", &pb.CreateWatcherRequest{Path: dir, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Msg.WatcherId
	os.MkdirAll(filepath.Join(dir, "a/b"), 0o755)
	os.WriteFile(filepath.Join(dir, "a/b/c"), nil, 0o644)
	poll(t, e, id, func(evs []*pb.FilesystemEvent) bool {
		for _, ev := range evs {
			if ev.Name == "a/b/c" && ev.Type == create {
				return true
			}
		}
		return false
	})
	if _, err := e.client.RemoveWatcher(ctx(t), req("", &pb.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.GetWatcherEvents(ctx(t), req("", &pb.GetWatcherEventsRequest{WatcherId: id}))
	wantCode(t, err, connect.CodeNotFound)
}

func TestPolledWatcherOverflow(t *testing.T) {
	e := newEnv(t, Options{MaxQueued: 5})
	dir := t.TempDir()
	resp, err := e.client.CreateWatcher(ctx(t), req("", &pb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Msg.WatcherId
	for i := 0; i < 20; i++ {
		os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644)
	}
	deadline := time.Now().Add(30 * time.Second)
	var got int
	for time.Now().Before(deadline) {
		r, err := e.client.GetWatcherEvents(ctx(t), req("", &pb.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			wantCode(t, err, connect.CodeInternal)
			if !strings.Contains(err.Error(), "overflow") || got != 5 {
				t.Fatalf("err %v after %d events", err, got)
			}
			return
		}
		got += len(r.Msg.Events)
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no overflow error")
}

func TestPolledWatcherExpires(t *testing.T) {
	e := newEnv(t, Options{WatcherIdle: 200 * time.Millisecond})
	resp, err := e.client.CreateWatcher(ctx(t), req("", &pb.CreateWatcherRequest{Path: t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		_, err := e.client.GetWatcherEvents(ctx(t), req("", &pb.GetWatcherEventsRequest{WatcherId: resp.Msg.WatcherId}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return
		}
	}
	t.Fatal("watcher did not expire")
}

func TestWatchAsUser(t *testing.T) {
	e := newEnv(t, Options{})
	u := fsusertest.NewUser(t)
	private := filepath.Join(u.Home, "private")
	os.Mkdir(private, 0o700) // root-owned inside the user's home
	ch := stream(t, e, u.Name, &pb.WatchDirRequest{Path: "~", Recursive: true, IncludeEntry: true}, nil)
	os.WriteFile(filepath.Join(private, "secret"), nil, 0o600)
	os.WriteFile(filepath.Join(u.Home, "visible"), nil, 0o644)
	for {
		m := next(t, ch)
		if ev := m.GetFilesystem(); ev != nil {
			if strings.HasPrefix(ev.Name, "private/") {
				t.Fatalf("user saw %v", ev)
			}
			if ev.Name == "visible" && ev.Type == create {
				if ev.Entry == nil || ev.Entry.Owner != "root" || ev.Entry.Path != filepath.Join(u.Home, "visible") {
					t.Fatalf("entry %v", ev.Entry)
				}
				return
			}
		}
	}
}

// inotifyFDs counts this process's open inotify instances.
func inotifyFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

func waitInotify(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for inotifyFDs(t) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d inotify fds, want %d", inotifyFDs(t), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchersReleased(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	base := inotifyFDs(t)

	c, cancel := context.WithCancel(context.Background())
	s, err := e.client.WatchDir(c, req("", &pb.WatchDirRequest{Path: dir, Recursive: true}))
	if err != nil || !s.Receive() {
		t.Fatalf("watch: %v %v", err, s.Err())
	}
	waitInotify(t, base+1)
	cancel()
	s.Close()
	waitInotify(t, base)

	resp, err := e.client.CreateWatcher(ctx(t), req("", &pb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	waitInotify(t, base+1)
	e.client.RemoveWatcher(ctx(t), req("", &pb.RemoveWatcherRequest{WatcherId: resp.Msg.WatcherId}))
	waitInotify(t, base)
}

// A WatchDir client that stops reading is dropped once a send blocks past
// WriteTimeout, and its watch is released.
func TestWatchDirDropsStalledClient(t *testing.T) {
	e := newEnv(t, Options{WriteTimeout: 300 * time.Millisecond, MaxQueued: 1 << 30})
	dir := t.TempDir()
	name := filepath.Join(dir, strings.Repeat("n", 200))
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	base := inotifyFDs(t)

	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := []byte(fmt.Sprintf(`{"path":%q,"includeEntry":true}`, dir))
	env := append([]byte{0, 0, 0, 0, 0}, msg...)
	binary.BigEndian.PutUint32(env[1:], uint32(len(msg)))
	fmt.Fprintf(conn, "POST /filesystem.Filesystem/WatchDir HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\nContent-Length: %d\r\n\r\n", len(env))
	conn.Write(env)
	waitInotify(t, base+1)

	// Every write is one WRITE event of about 700 bytes; nobody reads.
	deadline := time.Now().Add(60 * time.Second)
	for inotifyFDs(t) != base {
		if time.Now().After(deadline) {
			t.Fatal("stalled client still holds its watch")
		}
		for range 2000 {
			f.Write([]byte("x"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchNetworkMounts(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	real := fsMagic.Load()
	t.Cleanup(func() { fsMagic.Store(real) })
	for _, magic := range []int64{0x6969, 0xFF534D42, 0x517B, 0xFE534D42, 0x65735546} {
		fake := func(string) (int64, error) { return magic, nil }
		fsMagic.Store(&fake)
		_, err := e.client.CreateWatcher(ctx(t), req("", &pb.CreateWatcherRequest{Path: dir}))
		wantCode(t, err, connect.CodeInvalidArgument)
		if !strings.Contains(err.Error(), "cannot watch path on network filesystem: "+dir) {
			t.Fatalf("message %v", err)
		}
		resp, err := e.client.CreateWatcher(ctx(t), req("", &pb.CreateWatcherRequest{Path: dir, AllowNetworkMounts: true}))
		if err != nil {
			t.Fatalf("allowed: %v", err)
		}
		e.client.RemoveWatcher(ctx(t), req("", &pb.RemoveWatcherRequest{WatcherId: resp.Msg.WatcherId}))
	}
}
