package filesystem

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/fsuser/fsusertest"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/writectl"
)

type env struct {
	addr   string // host:port of the test server
	svc    *Service
	client filesystemconnect.FilesystemClient
	st     *state.State
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	st := state.New()
	opts.State = st
	svc := New(opts)
	path, h := filesystemconnect.NewFilesystemHandler(svc, connect.WithInterceptors(auth.UserInterceptor(st)))
	mux := http.NewServeMux()
	mux.Handle(path, writectl.Wrap(h))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		svc.Close()
	})
	return &env{addr: srv.Listener.Addr().String(), svc: svc, client: filesystemconnect.NewFilesystemClient(srv.Client(), srv.URL), st: st}
}

// req builds a request acting as user ("" = default user).
func req[T any](user string, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if user != "" {
		r.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	}
	return r
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("err = %v, want code %v", err, code)
	}
}

func TestStatEntryInfo(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	file := filepath.Join(dir, "test.txt")
	os.WriteFile(file, []byte("hello world!\n"), 0o644)
	os.Chmod(file, 0o644)
	unix.Setxattr(file, "user.e2b.author", []byte("mish"), 0)
	unix.Setxattr(file, "user.other", []byte("x"), 0)
	os.Symlink(file, filepath.Join(dir, "link"))
	os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling"))
	os.Mkdir(filepath.Join(dir, "sticky"), 0o777)
	os.Chmod(filepath.Join(dir, "sticky"), 0o777|os.ModeSticky)
	os.Symlink("sticky", filepath.Join(dir, "dirlink"))
	syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600)

	tests := []struct {
		name  string
		path  string
		check func(t *testing.T, got *pb.EntryInfo)
	}{
		{"file", file, func(t *testing.T, got *pb.EntryInfo) {
			want := &pb.EntryInfo{Name: "test.txt", Type: pb.FileType_FILE_TYPE_FILE, Path: file, Size: 13, Mode: 0o644,
				Permissions: "-rw-r--r--", Owner: "root", Group: "root", Metadata: map[string]string{"author": "mish"}}
			mt := got.ModifiedTime
			got.ModifiedTime = nil
			if !reflect.DeepEqual(got.String(), want.String()) {
				t.Fatalf("got %v\nwant %v", got, want)
			}
			st, _ := os.Stat(file)
			if !mt.AsTime().Equal(st.ModTime()) {
				t.Fatalf("mtime %v, want %v", mt.AsTime(), st.ModTime())
			}
		}},
		{"symlink", filepath.Join(dir, "link"), func(t *testing.T, got *pb.EntryInfo) {
			if got.Type != pb.FileType_FILE_TYPE_FILE || got.GetSymlinkTarget() != file || got.Mode != 0o644 ||
				got.Permissions != "Lrwxrwxrwx" || got.Size != int64(len(file)) || got.Metadata["author"] != "mish" {
				t.Fatalf("got %v", got)
			}
		}},
		{"dangling", filepath.Join(dir, "dangling"), func(t *testing.T, got *pb.EntryInfo) {
			if got.Type != pb.FileType_FILE_TYPE_UNSPECIFIED || got.Mode != 0 || got.GetSymlinkTarget() != filepath.Join(dir, "dangling") {
				t.Fatalf("got %v", got)
			}
		}},
		{"sticky dir", filepath.Join(dir, "sticky"), func(t *testing.T, got *pb.EntryInfo) {
			if got.Type != pb.FileType_FILE_TYPE_DIRECTORY || got.Permissions != "dtrwxrwxrwx" || got.Mode != 0o777 {
				t.Fatalf("got %v", got)
			}
		}},
		{"dir link", filepath.Join(dir, "dirlink"), func(t *testing.T, got *pb.EntryInfo) {
			if got.Type != pb.FileType_FILE_TYPE_DIRECTORY || got.GetSymlinkTarget() != filepath.Join(dir, "sticky") {
				t.Fatalf("got %v", got)
			}
		}},
		{"fifo", filepath.Join(dir, "fifo"), func(t *testing.T, got *pb.EntryInfo) {
			if got.Type != pb.FileType_FILE_TYPE_UNSPECIFIED || got.Permissions != "prw-------" {
				t.Fatalf("got %v", got)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.client.Stat(ctx(t), req("", &pb.StatRequest{Path: tc.path}))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, resp.Msg.Entry)
		})
	}

	errTests := []struct {
		name string
		path string
		user string
		code connect.Code
	}{
		{"missing", filepath.Join(dir, "missing"), "", connect.CodeNotFound},
		{"tilde user", "~bob/x", "", connect.CodeInvalidArgument},
		{"nul byte", "/tmp/a\x00b", "", connect.CodeInvalidArgument},
		{"long name", "/tmp/" + strings.Repeat("n", 300), "", connect.CodeInvalidArgument},
		{"unknown user", "/tmp", "envdtf-nobody", connect.CodeUnauthenticated},
	}
	for _, tc := range errTests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.Stat(ctx(t), req(tc.user, &pb.StatRequest{Path: tc.path}))
			wantCode(t, err, tc.code)
		})
	}

	t.Run("relative to home", func(t *testing.T) {
		resp, err := e.client.Stat(ctx(t), req("root", &pb.StatRequest{Path: "."}))
		if err != nil || resp.Msg.Entry.Path != "/root" {
			t.Fatalf("%v %v", resp, err)
		}
	})
}

func TestAsNonRootUser(t *testing.T) {
	e := newEnv(t, Options{})
	u := fsusertest.NewUser(t)
	secretDir := t.TempDir() // 0700 root
	os.WriteFile(filepath.Join(secretDir, "f"), nil, 0o600)
	os.Chmod(secretDir, 0o700)

	tests := []struct {
		name string
		call func() error
		code connect.Code
	}{
		{"stat inside root-only dir", func() error {
			_, err := e.client.Stat(ctx(t), req(u.Name, &pb.StatRequest{Path: filepath.Join(secretDir, "f")}))
			return err
		}, connect.CodePermissionDenied},
		{"list root-only dir", func() error {
			_, err := e.client.ListDir(ctx(t), req(u.Name, &pb.ListDirRequest{Path: secretDir}))
			return err
		}, connect.CodePermissionDenied},
		{"remove /etc file", func() error {
			_, err := e.client.Remove(ctx(t), req(u.Name, &pb.RemoveRequest{Path: "/etc/hostname"}))
			return err
		}, connect.CodePermissionDenied},
		{"move /etc file", func() error {
			_, err := e.client.Move(ctx(t), req(u.Name, &pb.MoveRequest{Source: "/etc/hostname", Destination: "stolen"}))
			return err
		}, connect.CodePermissionDenied},
		{"mkdir in /etc", func() error {
			_, err := e.client.MakeDir(ctx(t), req(u.Name, &pb.MakeDirRequest{Path: "/etc/envdtf-x/y"}))
			return err
		}, connect.CodePermissionDenied},
		{"watch root-only dir", func() error {
			_, err := e.client.CreateWatcher(ctx(t), req(u.Name, &pb.CreateWatcherRequest{Path: secretDir}))
			return err
		}, connect.CodePermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.call(), tc.code) })
	}
	if _, err := os.Stat("/etc/hostname"); err != nil {
		t.Fatalf("/etc/hostname: %v", err)
	}

	t.Run("creates owned by user", func(t *testing.T) {
		resp, err := e.client.MakeDir(ctx(t), req(u.Name, &pb.MakeDirRequest{Path: "a/b/c"}))
		if err != nil {
			t.Fatal(err)
		}
		got := resp.Msg.Entry
		if got.Path != u.Home+"/a/b/c" || got.Owner != u.Name || got.Group != u.Name || got.Permissions != "drwxr-xr-x" || got.Mode != 0o755 {
			t.Fatalf("got %v", got)
		}
		for _, p := range []string{"a", "a/b"} {
			var st unix.Stat_t
			unix.Stat(filepath.Join(u.Home, p), &st)
			if st.Uid != u.UID || st.Gid != u.GID {
				t.Fatalf("%s owned by %d:%d", p, st.Uid, st.Gid)
			}
		}
		mv, err := e.client.Move(ctx(t), req(u.Name, &pb.MoveRequest{Source: "a/b", Destination: "x/y/z"}))
		if err != nil {
			t.Fatal(err)
		}
		if mv.Msg.Entry.Path != u.Home+"/x/y/z" || mv.Msg.Entry.Owner != u.Name {
			t.Fatalf("moved %v", mv.Msg.Entry)
		}
		if _, err := e.client.Remove(ctx(t), req(u.Name, &pb.RemoveRequest{Path: "x"})); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(u.Home + "/x"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("x still there: %v", err)
		}
	})
}

func TestMakeDirMoveRemove(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644)

	if _, err := e.client.MakeDir(ctx(t), req("", &pb.MakeDirRequest{Path: dir})); connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("existing dir: %v", err)
	}
	_, err := e.client.MakeDir(ctx(t), req("", &pb.MakeDirRequest{Path: filepath.Join(dir, "file")}))
	wantCode(t, err, connect.CodeInvalidArgument)
	_, err = e.client.MakeDir(ctx(t), req("", &pb.MakeDirRequest{Path: filepath.Join(dir, "file", "sub")}))
	if connect.CodeOf(err) != connect.CodeInternal || !strings.Contains(err.Error(), "path is a file: "+filepath.Join(dir, "file")) {
		t.Fatalf("mkdir under a file: %v", err)
	}

	// Metadata travels with the inode.
	unix.Setxattr(filepath.Join(dir, "file"), "user.e2b.k", []byte("v"), 0)
	mv, err := e.client.Move(ctx(t), req("", &pb.MoveRequest{Source: filepath.Join(dir, "file"), Destination: filepath.Join(dir, "new/deeper/file2")}))
	if err != nil {
		t.Fatal(err)
	}
	if mv.Msg.Entry.Name != "file2" || mv.Msg.Entry.Metadata["k"] != "v" {
		t.Fatalf("moved %v", mv.Msg.Entry)
	}
	_, err = e.client.Move(ctx(t), req("", &pb.MoveRequest{Source: filepath.Join(dir, "file"), Destination: filepath.Join(dir, "x")}))
	wantCode(t, err, connect.CodeNotFound)

	if _, err := e.client.Remove(ctx(t), req("", &pb.RemoveRequest{Path: filepath.Join(dir, "new")})); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Remove(ctx(t), req("", &pb.RemoveRequest{Path: filepath.Join(dir, "never-existed")})); err != nil {
		t.Fatalf("remove missing: %v", err)
	}
	// Removing a symlink removes the link, not the target.
	os.WriteFile(filepath.Join(dir, "target"), nil, 0o644)
	os.Symlink(filepath.Join(dir, "target"), filepath.Join(dir, "l"))
	e.client.Remove(ctx(t), req("", &pb.RemoveRequest{Path: filepath.Join(dir, "l")}))
	if _, err := os.Stat(filepath.Join(dir, "target")); err != nil {
		t.Fatal(err)
	}
}

func names(es []*pb.EntryInfo, base string) []string {
	var out []string
	for _, e := range es {
		out = append(out, strings.TrimPrefix(e.Path, base+"/"))
	}
	return out
}

func TestListDir(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	for _, p := range []string{"subdir2/a", "subdir1/b/deep", "subdir1/a"} {
		os.MkdirAll(filepath.Join(dir, p), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "file1.txt"), nil, 0o644)
	os.Symlink(dir, filepath.Join(dir, "zlink"))
	link := dir + "-link"
	os.Symlink(dir, link)
	t.Cleanup(func() { os.Remove(link) })

	tests := []struct {
		path  string
		depth uint32
		want  []string
	}{
		{dir, 0, []string{"file1.txt", "subdir1", "subdir2", "zlink"}},
		{dir, 2, []string{"file1.txt", "subdir1", "subdir1/a", "subdir1/b", "subdir2", "subdir2/a", "zlink"}},
		{dir, 5, []string{"file1.txt", "subdir1", "subdir1/a", "subdir1/b", "subdir1/b/deep", "subdir2", "subdir2/a", "zlink"}},
		{link, 1, []string{"file1.txt", "subdir1", "subdir2", "zlink"}},
		{dir + "/./subdir1/", 1, []string{"a", "b"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s depth %d", filepath.Base(tc.path), tc.depth), func(t *testing.T) {
			resp, err := e.client.ListDir(ctx(t), req("", &pb.ListDirRequest{Path: tc.path, Depth: tc.depth}))
			if err != nil {
				t.Fatal(err)
			}
			if got := names(resp.Msg.Entries, filepath.Clean(tc.path)); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}

	loop := filepath.Join(dir, "loop")
	os.Symlink(loop, loop)
	errTests := []struct {
		path string
		code connect.Code
	}{
		{filepath.Join(dir, "file1.txt"), connect.CodeInvalidArgument},
		{filepath.Join(dir, "missing"), connect.CodeNotFound},
		{loop, connect.CodeFailedPrecondition},
	}
	for _, tc := range errTests {
		_, err := e.client.ListDir(ctx(t), req("", &pb.ListDirRequest{Path: tc.path}))
		wantCode(t, err, tc.code)
	}
}

func TestListDirLarge(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	const n = 20000
	for i := 0; i < n; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%05d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	resp, err := e.client.ListDir(ctx(t), req("", &pb.ListDirRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	es := resp.Msg.Entries
	if len(es) != n {
		t.Fatalf("%d entries", len(es))
	}
	for i, en := range es {
		if en.Name != fmt.Sprintf("f%05d", i) || en.Owner != "root" || en.Type != pb.FileType_FILE_TYPE_FILE {
			t.Fatalf("entry %d: %v", i, en)
		}
	}
}

func TestLegacySDK(t *testing.T) {
	e := newEnv(t, Options{})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	r := req("", &pb.ListDirRequest{Path: dir})
	r.Header().Set("User-Agent", "connect-python")
	resp, err := e.client.ListDir(ctx(t), r)
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Msg.Entries[0]
	if resp.Header().Get("X-E2B-Legacy-SDK") != "true" || got.Name != "f" || got.Size != 0 || got.Permissions != "" || got.ModifiedTime != nil {
		t.Fatalf("legacy entry %v, header %v", got, resp.Header())
	}
	full, _ := e.client.Stat(ctx(t), req("", &pb.StatRequest{Path: filepath.Join(dir, "f")}))
	if full.Msg.Entry.Size != 1 || full.Header().Get("X-E2B-Legacy-SDK") != "" {
		t.Fatalf("normal entry %v", full.Msg.Entry)
	}
}

// An empty Remove path must not resolve to the workdir (or home) and delete
// it: the workdir here is a temp dir, so a regression costs only that dir.
func TestRemoveEmptyPathRefused(t *testing.T) {
	e := newEnv(t, Options{})
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "keep"), []byte("x"), 0o644)
	e.st.SetDefaultWorkdir(work)
	_, err := e.client.Remove(ctx(t), req("", &pb.RemoveRequest{Path: ""}))
	wantCode(t, err, connect.CodeInvalidArgument)
	if _, err := os.Stat(filepath.Join(work, "keep")); err != nil {
		t.Fatalf("workdir content gone: %v", err)
	}
}
