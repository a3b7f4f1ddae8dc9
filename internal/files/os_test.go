package files

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/fsuser/fsusertest"
)

// mountTmpfs mounts a tmpfs of the given size option on a fresh directory
// and unmounts it in cleanup.
func mountTmpfs(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func octet(e *env, t testing.TB, path string, body io.Reader, kv ...string) resp {
	return e.do(t, "POST", e.url("/files", append([]string{"path", path}, kv...)...), map[string]string{"Content-Type": "application/octet-stream"}, body)
}

func TestAsNonRootUser(t *testing.T) {
	e := newEnv(t)
	u := fsusertest.NewUser(t)
	rootOwned := filepath.Join(u.Home, "root-owned")
	os.WriteFile(rootOwned, []byte("root"), 0o644)

	tests := []struct {
		name   string
		do     func() resp
		status int
	}{
		{"read /etc/shadow", func() resp {
			return e.do(t, "GET", e.url("/files", "path", "/etc/shadow", "username", u.Name), nil, nil)
		}, 403},
		{"write into /etc", func() resp { return octet(e, t, "/etc/envdtf-evil", strings.NewReader("x"), "username", u.Name) }, 403},
		{"overwrite /etc/passwd via traversal", func() resp {
			return octet(e, t, "../../etc/passwd", strings.NewReader("x"), "username", u.Name)
		}, 403},
		{"mkdir under /etc", func() resp { return octet(e, t, "/etc/envdtf-dir/f", strings.NewReader("x"), "username", u.Name) }, 403},
		{"replace root's file in own home", func() resp { return octet(e, t, "root-owned", strings.NewReader("x"), "username", u.Name) }, 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.do()
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			jsonErr(t, r)
		})
	}
	if _, err := os.Stat("/etc/envdtf-evil"); err == nil {
		t.Fatal("file created in /etc")
	}
	if readFile(t, rootOwned) != "root" {
		t.Fatal("root's file replaced")
	}
	noTemps(t, u.Home)

	t.Run("creates owned by user", func(t *testing.T) {
		r := octet(e, t, "deep/dir/f.txt", strings.NewReader("mine"), "username", u.Name)
		got := entries(t, r)
		if got[0].Path != u.Home+"/deep/dir/f.txt" {
			t.Fatalf("%+v", got)
		}
		for _, p := range []string{"deep", "deep/dir", "deep/dir/f.txt"} {
			var st unix.Stat_t
			unix.Stat(filepath.Join(u.Home, p), &st)
			if st.Uid != u.UID || st.Gid != u.GID {
				t.Fatalf("%s owned by %d:%d", p, st.Uid, st.Gid)
			}
		}
		st, _ := os.Stat(filepath.Join(u.Home, "deep/dir/f.txt"))
		if st.Mode() != 0o644 {
			t.Fatalf("mode %v", st.Mode())
		}
		// Default user: the file is downloadable by its owner.
		e.st.SetDefaultUser(u.Name)
		defer e.st.SetDefaultUser("root")
		r = e.do(t, "GET", e.url("/files", "path", "deep/dir/f.txt"), nil, nil)
		if r.status != 200 || string(r.body) != "mine" {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
}

// A client that disconnects mid-body leaves the old file as it was and
// no temp file behind.
func TestAbortedUploadKeepsOld(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "keep.txt")
	os.WriteFile(target, []byte("old content"), 0o644)

	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n",
		strings.TrimPrefix(e.url("/files", "path", target), e.srv.URL), 10<<20)
	conn.Write(bytes.Repeat([]byte("n"), 1<<20))
	// Wait until the server has created its temp file, then vanish.
	waitFor(t, func() bool { m, _ := filepath.Glob(filepath.Join(dir, ".envd-upload-*")); return len(m) == 1 })
	conn.Close()
	e.waitIdle(t)
	noTemps(t, dir)
	if readFile(t, target) != "old content" {
		t.Fatal("old content destroyed")
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNoSpace(t *testing.T) {
	e := newEnv(t)
	dir := mountTmpfs(t, "1m")
	target := filepath.Join(dir, "f")
	old := bytes.Repeat([]byte("o"), 100<<10)
	os.WriteFile(target, old, 0o644)

	big := bytes.Repeat([]byte("n"), 2<<20)
	r := octet(e, t, target, bytes.NewReader(big))
	if r.status != 507 || jsonErr(t, r) != fmt.Sprintf("attempted to write %d bytes: not enough disk space available", len(big)) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if !bytes.Equal([]byte(readFile(t, target)), old) {
		t.Fatal("old content destroyed")
	}
	noTemps(t, dir)

	ct, body := multipartBody(t, part{"file", target, string(big)})
	r = e.do(t, "POST", e.url("/files"), map[string]string{"Content-Type": ct}, bytes.NewReader(body))
	if r.status != 507 {
		t.Fatalf("multipart: %d %s", r.status, r.body)
	}
	noTemps(t, dir)
	if !bytes.Equal([]byte(readFile(t, target)), old) {
		t.Fatal("old content destroyed")
	}
	// Inodes exhausted.
	idir := mountTmpfs(t, "1m,nr_inodes=3")
	for i := 0; ; i++ {
		if err := os.WriteFile(filepath.Join(idir, fmt.Sprint(i)), nil, 0o644); err != nil {
			break
		}
	}
	r = octet(e, t, filepath.Join(idir, "more"), strings.NewReader("x"))
	if r.status != 507 || !strings.HasPrefix(jsonErr(t, r), "not enough inodes available: ") {
		t.Fatalf("inodes: %d %s", r.status, r.body)
	}
}

// genReader yields n pseudo-random bytes quickly and deterministically.
type genReader struct {
	rng *rand.ChaCha8
	n   int64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.n {
		p = p[:g.n]
	}
	g.rng.Read(p)
	g.n -= int64(len(p))
	return len(p), nil
}

func TestLargeRoundTrip(t *testing.T) {
	e := newEnv(t)
	dir := mountTmpfs(t, "1300m")
	target := filepath.Join(dir, "big.bin")
	const size = 1 << 30

	src := &genReader{rng: rand.NewChaCha8([32]byte{1}), n: size}
	sum := sha256.New()
	r := octet(e, t, target, io.TeeReader(src, sum))
	entries(t, r)
	want := sum.Sum(nil)

	resp, err := e.client.Get(e.url("/files", "path", target))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != size {
		t.Fatalf("status %d length %d", resp.StatusCode, resp.ContentLength)
	}
	got := sha256.New()
	n, err := io.Copy(got, bufio.NewReaderSize(resp.Body, 1<<20))
	if err != nil || n != size || !bytes.Equal(got.Sum(nil), want) {
		t.Fatalf("downloaded %d bytes, err %v, checksum match %v", n, err, bytes.Equal(got.Sum(nil), want))
	}
}

func TestCompose(t *testing.T) {
	e := newEnv(t)
	u := fsusertest.NewUser(t)
	for i, s := range []string{"aaa", "bbb", "ccc"} {
		p := filepath.Join(u.Home, fmt.Sprintf("part%d", i))
		os.WriteFile(p, []byte(s), 0o644)
		os.Chown(p, int(u.UID), int(u.GID))
	}
	os.Mkdir(filepath.Join(u.Home, "adir"), 0o755)
	post := func(body any) resp {
		b, _ := json.Marshal(body)
		return e.do(t, "POST", e.srv.URL+"/files/compose", map[string]string{"Content-Type": "application/json"}, bytes.NewReader(b))
	}
	r := post(map[string]any{"source_paths": []string{"part0", "part1", "part2"}, "destination": "out/joined", "username": u.Name})
	if r.status != 200 || string(r.body) != fmt.Sprintf(`{"path":"%s/out/joined","name":"joined","type":"file"}`+"\n", u.Home) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if readFile(t, filepath.Join(u.Home, "out/joined")) != "aaabbbccc" {
		t.Fatal("content")
	}
	var st unix.Stat_t
	unix.Stat(filepath.Join(u.Home, "out/joined"), &st)
	if st.Uid != u.UID {
		t.Fatalf("owner %d", st.Uid)
	}
	if _, err := os.Stat(filepath.Join(u.Home, "part0")); err == nil {
		t.Fatal("sources not removed")
	}

	tests := []struct {
		name   string
		body   any
		status int
		msg    string
	}{
		{"bad json", "nope", 400, ""},
		{"no sources", map[string]any{"destination": "x"}, 400, "source_paths must not be empty"},
		{"no destination", map[string]any{"source_paths": []string{"a"}}, 400, "destination is required"},
		{"unknown user", map[string]any{"source_paths": []string{"a"}, "destination": "x", "username": "envdtf-none"}, 401, ""},
		{"missing source", map[string]any{"source_paths": []string{"gone"}, "destination": "x", "username": u.Name}, 404, "source file not found: gone"},
		{"same as destination", map[string]any{"source_paths": []string{"x"}, "destination": "x", "username": u.Name}, 400, `source path "x" cannot be the same as destination`},
		{"directory source", map[string]any{"source_paths": []string{"adir"}, "destination": "x", "username": u.Name}, 400, "source path is not a regular file: adir"},
		{"root-only source", map[string]any{"source_paths": []string{"/etc/shadow"}, "destination": "x", "username": u.Name}, 403, ""},
		{"destination in /etc", map[string]any{"source_paths": []string{"out/joined"}, "destination": "/etc/envdtf-c", "username": u.Name}, 403, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r resp
			if s, ok := tc.body.(string); ok {
				r = e.do(t, "POST", e.srv.URL+"/files/compose", nil, strings.NewReader(s))
			} else {
				r = post(tc.body)
			}
			if r.status != tc.status {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if m := jsonErr(t, r); tc.msg != "" && m != tc.msg {
				t.Fatalf("message %q", m)
			}
		})
	}
	if m, _ := filepath.Glob("/etc/envdtf-c*"); len(m) > 0 {
		t.Fatalf("left in /etc: %v", m)
	}
}

func TestUploadRequestTooShortKeepsOld(t *testing.T) {
	e := newEnv(t)
	target := filepath.Join(t.TempDir(), "f")
	os.WriteFile(target, []byte("old"), 0o644)
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Content-Length promises more than the body has, then EOF.
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n%s",
		strings.TrimPrefix(e.url("/files", "path", target), e.srv.URL), strings.Repeat("x", 50))
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	noTemps(t, filepath.Dir(target))
	if readFile(t, target) != "old" {
		t.Fatal("old content destroyed")
	}
}
