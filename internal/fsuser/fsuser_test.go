package fsuser_test

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/envd-go/envd/internal/fsuser"
	"github.com/envd-go/envd/internal/fsuser/fsusertest"
)

func TestDoActsAsUser(t *testing.T) {
	u := fsusertest.NewUser(t)
	c := fsuser.Of(u)
	root := t.TempDir()
	secret := filepath.Join(root, "secret")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(root, 0o755)

	tests := []struct {
		name    string
		op      func() error
		wantErr error
	}{
		{"read root-only file", func() error { _, err := os.ReadFile(secret); return err }, os.ErrPermission},
		{"create in root dir", func() error { return os.WriteFile(filepath.Join(root, "new"), nil, 0o644) }, os.ErrPermission},
		{"remove /etc/hostname", func() error { return os.Remove("/etc/hostname") }, os.ErrPermission},
		{"chown own file to root", func() error {
			p := filepath.Join(u.Home, "mine")
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return err
			}
			return os.Chown(p, 0, 0)
		}, os.ErrPermission},
		{"write in home", func() error { return os.WriteFile(filepath.Join(u.Home, "ok"), []byte("y"), 0o644) }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := fsuser.Do(c, tc.op)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}

	st, err := os.Stat(filepath.Join(u.Home, "ok"))
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid != u.UID || sys.Gid != u.GID {
		t.Fatalf("created file owned by %d:%d, want %d:%d", sys.Uid, sys.Gid, u.UID, u.GID)
	}
}

// Other goroutines (and the caller afterwards) keep root's rights while
// many switched operations run concurrently.
func TestDoDoesNotLeak(t *testing.T) {
	u := fsusertest.NewUser(t)
	c := fsuser.Of(u)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("x"), 0o600)

	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i := 0; i < 200; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			err := fsuser.Do(c, func() error { _, err := os.ReadFile(secret); return err })
			if !errors.Is(err, os.ErrPermission) {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := os.ReadFile(secret); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("unexpected: %v", err)
	}
}

func TestDoRootAndPanic(t *testing.T) {
	if err := fsuser.Do(fsuser.Creds{}, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	u := fsusertest.NewUser(t)
	defer func() {
		if recover() == nil {
			t.Fatal("panic not re-raised")
		}
		if _, err := os.ReadFile("/etc/shadow"); err != nil {
			t.Fatalf("root lost rights: %v", err)
		}
	}()
	fsuser.Do(fsuser.Of(u), func() error { panic("boom") })
}
