package envdclient_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envd-go/envd/envdclient"
)

func TestFilesystemCalls(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)
	dir := t.TempDir()

	sub := filepath.Join(dir, "a", "b")
	ent, err := c.MakeDir(ctx, sub)
	if err != nil {
		t.Fatalf("MakeDir: %v", err)
	}
	if !ent.IsDir() || ent.Path != sub || ent.Name != "b" || ent.Permissions != "drwxr-xr-x" {
		t.Errorf("MakeDir entry = %+v", ent)
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "f.txt"), []byte("hello"), 0o640); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stat(ctx, filepath.Join(dir, "a", "f.txt"))
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if st.Type != envdclient.TypeFile || st.Size != 5 || st.Mode != 0o640 || st.Owner != "root" || st.ModTime.IsZero() {
		t.Errorf("Stat entry = %+v", st)
	}
	list, err := c.ListDir(ctx, dir, 3)
	if err != nil {
		t.Fatalf("ListDir: %v", err)
	}
	var got []string
	for _, en := range list {
		got = append(got, strings.TrimPrefix(en.Path, dir+"/"))
	}
	if want := "a a/b a/f.txt"; strings.Join(got, " ") != want {
		t.Errorf("ListDir depth 3 = %q, want %q", got, want)
	}
	moved, err := c.Move(ctx, filepath.Join(dir, "a", "f.txt"), filepath.Join(dir, "new", "g.txt"))
	if err != nil {
		t.Fatalf("Move: %v", err)
	}
	if moved.Name != "g.txt" || moved.Size != 5 {
		t.Errorf("Move entry = %+v", moved)
	}
	if err := c.Remove(ctx, filepath.Join(dir, "a")); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
		t.Errorf("after Remove: %v", err)
	}
	if err := c.Remove(ctx, filepath.Join(dir, "missing")); err != nil {
		t.Errorf("Remove of a missing path: %v (want success)", err)
	}
}

func TestFilesystemErrors(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"stat missing", func() error { _, err := c.Stat(ctx, filepath.Join(dir, "nope")); return err }, envdclient.ErrNotFound},
		{"list missing", func() error { _, err := c.ListDir(ctx, filepath.Join(dir, "nope"), 1); return err }, envdclient.ErrNotFound},
		{"list a file", func() error { _, err := c.ListDir(ctx, file, 1); return err }, envdclient.ErrInvalidArgument},
		{"mkdir existing", func() error { _, err := c.MakeDir(ctx, dir); return err }, envdclient.ErrAlreadyExists},
		{"mkdir over file", func() error { _, err := c.MakeDir(ctx, file); return err }, envdclient.ErrInvalidArgument},
		{"move missing", func() error { _, err := c.Move(ctx, filepath.Join(dir, "nope"), filepath.Join(dir, "x")); return err }, envdclient.ErrNotFound},
		{"watch missing", func() error {
			_, err := c.Watch(ctx, filepath.Join(dir, "nope"), envdclient.WatchOptions{})
			return err
		}, envdclient.ErrNotFound},
		{"watch a file", func() error { _, err := c.Watch(ctx, file, envdclient.WatchOptions{}); return err }, envdclient.ErrInvalidArgument},
		{"poll unknown watcher", func() error { _, err := c.WatcherEvents(ctx, "nope"); return err }, envdclient.ErrNotFound},
		{"remove unknown watcher", func() error { return c.RemoveWatcher(ctx, "nope") }, envdclient.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			var ce *envdclient.Error
			if !errors.As(err, &ce) || ce.Code == "" || ce.Message == "" {
				t.Fatalf("error %#v lacks code or message", err)
			}
		})
	}
}

func TestWatch(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)
	dir := t.TempDir()

	w, err := c.Watch(ctx, dir, envdclient.WatchOptions{Recursive: true, IncludeEntry: true})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer w.Close()
	if err := os.WriteFile(filepath.Join(dir, "new.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := w.Next()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if ev.Name == "new.txt" && ev.Type == envdclient.EventCreate {
			if ev.Entry == nil || ev.Entry.Name != "new.txt" {
				t.Errorf("create event entry = %+v", ev.Entry)
			}
			break
		}
	}
	// Close unblocks a pending Next from another goroutine.
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := w.Next(); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	w.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, envdclient.ErrCanceled) {
			t.Errorf("Next after Close = %v, want ErrCanceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Next did not return after Close")
	}
}

func TestPolledWatcher(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	id, err := c.CreateWatcher(ctx, dir, envdclient.WatchOptions{})
	if err != nil {
		t.Fatalf("CreateWatcher: %v", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs, err := c.WatcherEvents(ctx, id)
		if err != nil {
			t.Fatalf("WatcherEvents: %v", err)
		}
		if len(evs) > 0 {
			if evs[0].Name != "d" || evs[0].Type != envdclient.EventCreate {
				t.Errorf("events = %+v", evs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no event within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.RemoveWatcher(ctx, id); err != nil {
		t.Fatalf("RemoveWatcher: %v", err)
	}
	if err := c.RemoveWatcher(ctx, id); !errors.Is(err, envdclient.ErrNotFound) {
		t.Errorf("second RemoveWatcher = %v, want ErrNotFound", err)
	}
}

func TestUploadDownload(t *testing.T) {
	e := startEnvd(t)
	c := e.client(t)
	ctx := testCtx(t)
	dir := t.TempDir()

	data := make([]byte, 3<<20+17)
	rand.Read(data)
	tests := []struct {
		name string
		data []byte
		size int64 // UploadOptions.Size
	}{
		{"known size", data, 0},
		{"chunked", data, -1},
		{"empty", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := filepath.Join(dir, "sub", strings.ReplaceAll(tt.name, " ", "_"))
			var upDone, upTotal, calls int64
			f, err := c.Upload(ctx, target, bytes.NewReader(tt.data), envdclient.UploadOptions{
				Size:     tt.size,
				Progress: func(done, total int64) { upDone, upTotal = done, total; calls++ },
			})
			if err != nil {
				t.Fatalf("Upload: %v", err)
			}
			if f.Path != target || f.Type != "file" {
				t.Errorf("Upload entry = %+v", f)
			}
			wantTotal := int64(len(tt.data))
			if tt.size < 0 {
				wantTotal = -1
			}
			if calls == 0 || upDone != int64(len(tt.data)) || upTotal != wantTotal {
				t.Errorf("upload progress: %d calls, last %d/%d, want %d/%d", calls, upDone, upTotal, len(tt.data), wantTotal)
			}
			onDisk, err := os.ReadFile(target)
			if err != nil || !bytes.Equal(onDisk, tt.data) {
				t.Fatalf("uploaded file differs (err %v, %d bytes)", err, len(onDisk))
			}

			var buf bytes.Buffer
			var dnDone, dnTotal int64
			n, err := c.Download(ctx, target, &buf, envdclient.DownloadOptions{
				Progress: func(done, total int64) { dnDone, dnTotal = done, total },
			})
			if err != nil {
				t.Fatalf("Download: %v", err)
			}
			if n != int64(len(tt.data)) || !bytes.Equal(buf.Bytes(), tt.data) {
				t.Errorf("Download: %d bytes, equal %v", n, bytes.Equal(buf.Bytes(), tt.data))
			}
			if dnDone != int64(len(tt.data)) || dnTotal != int64(len(tt.data)) {
				t.Errorf("download progress last %d/%d, want %d/%d", dnDone, dnTotal, len(tt.data), len(tt.data))
			}
		})
	}

	var sink bytes.Buffer
	if _, err := c.Download(ctx, filepath.Join(dir, "nope"), &sink, envdclient.DownloadOptions{}); !errors.Is(err, envdclient.ErrNotFound) {
		t.Errorf("Download missing = %v, want ErrNotFound", err)
	}
	if _, err := c.Download(ctx, dir, &sink, envdclient.DownloadOptions{}); !errors.Is(err, envdclient.ErrInvalidArgument) {
		t.Errorf("Download of a directory = %v, want ErrInvalidArgument", err)
	}
	if _, err := c.Upload(ctx, dir, strings.NewReader("x"), envdclient.UploadOptions{}); !errors.Is(err, envdclient.ErrInvalidArgument) {
		t.Errorf("Upload onto a directory = %v, want ErrInvalidArgument", err)
	}
}

// addUser creates a throwaway Linux user with the envdtc prefix.
func addUser(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := "envdtc" + hex.EncodeToString(b)
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", "-r", "-f", name).Run() })
	return name
}

func TestUserOption(t *testing.T) {
	e := startEnvd(t)
	user := addUser(t)
	c := e.client(t, envdclient.WithUser(user))
	ctx := testCtx(t)

	target := "/home/" + user + "/up.txt"
	if _, err := c.Upload(ctx, target, strings.NewReader("mine"), envdclient.UploadOptions{}); err != nil {
		t.Fatalf("Upload as %s: %v", user, err)
	}
	st, err := c.Stat(ctx, target)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if st.Owner != user || st.Group != user {
		t.Errorf("uploaded file owned by %s:%s, want %s", st.Owner, st.Group, user)
	}
	// Relative paths resolve against the user's home.
	if st2, err := c.Stat(ctx, "up.txt"); err != nil || st2.Path != target {
		t.Errorf("Stat relative = %+v, %v", st2, err)
	}
	// The user cannot write where root alone may.
	if _, err := c.MakeDir(ctx, "/root/envdtc-denied"); !errors.Is(err, envdclient.ErrPermissionDenied) && !errors.Is(err, envdclient.ErrInternal) {
		t.Errorf("MakeDir in /root as %s = %v, want a permission error", user, err)
	}
	os.RemoveAll("/root/envdtc-denied")

	ghost := e.client(t, envdclient.WithUser("envdtc-nobody"))
	if _, err := ghost.Stat(ctx, "/"); !errors.Is(err, envdclient.ErrUnauthenticated) {
		t.Errorf("Stat as unknown user = %v, want ErrUnauthenticated", err)
	}
	var sink bytes.Buffer
	if _, err := ghost.Download(ctx, target, &sink, envdclient.DownloadOptions{}); !errors.Is(err, envdclient.ErrUnauthenticated) {
		t.Errorf("Download as unknown user = %v, want ErrUnauthenticated", err)
	}
}
