package files

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
)

// Fuzz targets: `go test -fuzz FuzzX ./internal/files`; as plain tests
// they run their seeds.

func FuzzNegotiate(f *testing.F) {
	for _, s := range []string{"", "gzip", "gzip, deflate", "identity;q=0", "*;q=0", "*;q=0, identity", "gzip;q=0.5, identity;q=0.6", "gzip;q=", ";;,,", "GZip;Q=1", "identity;q=0, *"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, header string, force bool) {
		g, err := negotiate(header, force)
		if g && force {
			t.Fatal("gzip for a range/conditional request")
		}
		if g && err != nil {
			t.Fatal("gzip and an error")
		}
		lower := strings.ToLower(header)
		if g && !strings.Contains(lower, "gzip") && !strings.Contains(lower, "*") {
			t.Fatalf("gzip chosen from %q", header)
		}
		if err != nil && !strings.Contains(lower, "q=") {
			t.Fatalf("rejected %q without any q=0", header)
		}
	})
}

var contentRange = regexp.MustCompile(`^bytes (\d+)-(\d+)/(\d+)$`)

func FuzzRange(f *testing.F) {
	for _, s := range []string{"bytes=0-0", "bytes=5-", "bytes=-3", "bytes=0-1,4-5", "bytes=100-200", "bytes=x", "bytes=3-1", "items=0-1", "bytes=-0", "bytes=0-99999999999999999999"} {
		f.Add(s)
	}
	dir := f.TempDir()
	content := []byte("0123456789abcdefghij")
	file := filepath.Join(dir, "f.bin")
	os.WriteFile(file, content, 0o644)
	h := New(Options{State: state.New()})
	f.Fuzz(func(t *testing.T, rng string) {
		req := httptest.NewRequest("GET", "/files?path="+url.QueryEscape(file), nil)
		req.Header.Set("Range", rng)
		req.Header.Set("Accept-Encoding", "gzip")
		rec := httptest.NewRecorder()
		h.Download(rec, req)
		switch rec.Code {
		case 200:
			body := rec.Body.Bytes()
			if rec.Header().Get("Content-Encoding") == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				body, _ = io.ReadAll(zr)
			}
			if !bytes.Equal(body, content) {
				t.Fatalf("200 with partial body for %q", rng)
			}
		case 206:
			if rec.Header().Get("Content-Encoding") != "" {
				t.Fatal("range response encoded")
			}
			m := contentRange.FindStringSubmatch(rec.Header().Get("Content-Range"))
			if m == nil {
				return // multipart/byteranges
			}
			a, _ := strconv.Atoi(m[1])
			b, _ := strconv.Atoi(m[2])
			if m[3] != strconv.Itoa(len(content)) || a > b || b >= len(content) || !bytes.Equal(rec.Body.Bytes(), content[a:b+1]) {
				t.Fatalf("range %q: Content-Range %q body %q", rng, rec.Header().Get("Content-Range"), rec.Body.Bytes())
			}
		case 416:
		default:
			t.Fatalf("range %q: status %d", rng, rec.Code)
		}
	})
}

// FuzzMultipart feeds arbitrary multipart bodies to the upload handler.
// The path query pins every write to one file in a temp dir (filenames
// from fuzzed bodies must not reach the real filesystem as root).
func FuzzMultipart(f *testing.F) {
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nhello\r\n--B--\r\n"))
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhello\r\n--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nagain\r\n--B--\r\n"))
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--B--\r\n"))
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\ntruncated"))
	f.Add([]byte("garbage"))
	f.Add([]byte(""))
	dir := f.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("old"), 0o644)
	h := New(Options{State: state.New()})
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/files?path="+url.QueryEscape(target), bytes.NewReader(body))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=B")
		rec := httptest.NewRecorder()
		h.Upload(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest:
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if m, _ := filepath.Glob(filepath.Join(dir, ".envd-upload-*")); len(m) > 0 {
			t.Fatalf("temp files left: %v", m)
		}
		if fi, err := os.Stat(target); err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("target: %v", err)
		}
	})
}

// FuzzUploadPath checks the path rules for upload targets without writing.
func FuzzUploadPath(f *testing.F) {
	for _, s := range []string{"", "~", "~/a", "~x/a", "a/../../etc/passwd", "/abs/./x/", "a\x00b", "//", "../", strings.Repeat("a/", 100)} {
		f.Add(s)
	}
	h := New(Options{State: state.New()})
	u := &users.User{Name: "u", Home: "/home/u"}
	f.Fuzz(func(t *testing.T, p string) {
		r, err := h.resolve(p, u)
		if err != nil {
			return
		}
		if strings.IndexByte(r, 0) >= 0 {
			t.Fatalf("NUL survived in %q", r)
		}
		if !strings.HasPrefix(r, "/") {
			t.Fatalf("resolved %q to relative %q", p, r)
		}
		d := rawDir(r)
		if !strings.HasPrefix(r, d) || (d != "/" && len(r) > len(d) && r[len(d)] != '/') {
			t.Fatal(fmt.Sprintf("rawDir(%q) = %q", r, d))
		}
	})
}
