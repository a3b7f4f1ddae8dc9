package vmtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInitramfsArchive writes an archive and unpacks it with busybox cpio
// (the same newc reader logic the kernel has) to check names, contents,
// modes, links and device nodes.
func TestInitramfsArchive(t *testing.T) {
	src := filepath.Join(t.TempDir(), "big")
	big := bytes.Repeat([]byte("0123456789"), 100001) // odd size: padding
	if err := os.WriteFile(src, big, 0o644); err != nil {
		t.Fatal(err)
	}
	f := NewInitramfs()
	f.File("etc/passwd", 0o644, []byte("root:x:0:0::/root:/bin/sh\n"))
	f.File("a/b/c/odd", 0o600, []byte("x"))
	if err := f.CopyFile("bin/prog", 0o755, src); err != nil {
		t.Fatal(err)
	}
	f.Symlink("bin/sh", "prog")
	f.Dir("tmp", 0o1777, 0, 0)
	f.CharDev("dev/null", 0o666, 1, 3)
	var buf bytes.Buffer
	if _, err := f.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not 4-aligned", buf.Len())
	}
	out := t.TempDir()
	cmd := exec.Command("busybox", "cpio", "-i", "-d", "-m")
	cmd.Dir, cmd.Stdin = out, &buf
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio: %v: %s", err, b)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "bin/prog")); !bytes.Equal(b, big) {
		t.Errorf("bin/prog: %d bytes, want %d", len(b), len(big))
	}
	if b, _ := os.ReadFile(filepath.Join(out, "a/b/c/odd")); string(b) != "x" {
		t.Errorf("a/b/c/odd = %q", b)
	}
	if l, err := os.Readlink(filepath.Join(out, "bin/sh")); err != nil || l != "prog" {
		t.Errorf("bin/sh -> %q %v", l, err)
	}
	for p, want := range map[string]os.FileMode{"bin/prog": 0o755, "a/b/c/odd": 0o600, "tmp": os.ModeDir | os.ModeSticky | 0o777} {
		if st, err := os.Lstat(filepath.Join(out, p)); err != nil || st.Mode()&(os.ModePerm|os.ModeDir|os.ModeSticky) != want {
			t.Errorf("%s: mode %v %v, want %v", p, st.Mode(), err, want)
		}
	}
	if st, err := os.Lstat(filepath.Join(out, "dev/null")); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("dev/null: %v %v", st.Mode(), err)
	}
	list, _ := exec.Command("sh", "-c", "cd "+out+" && find . | sort").Output()
	if !strings.Contains(string(list), "./etc/passwd") {
		t.Errorf("listing:\n%s", list)
	}
}
