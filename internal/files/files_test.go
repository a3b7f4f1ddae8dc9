package files

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/state"
)

type env struct {
	srv    *httptest.Server
	st     *state.State
	client *http.Client
	active atomic.Int64 // requests inside a handler
}

// waitIdle waits until no handler runs (a client may give up before the
// server is done with its request).
func (e *env) waitIdle(t testing.TB) {
	t.Helper()
	waitFor(t, func() bool { return e.active.Load() == 0 })
}

func newEnv(t testing.TB) *env {
	t.Helper()
	st := state.New()
	h := New(Options{State: st})
	mux := http.NewServeMux()
	for _, rt := range h.Routes() {
		mux.Handle(rt.Pattern, rt.Handler)
	}
	e := &env{st: st}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.active.Add(1)
		defer e.active.Add(-1)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
	// No transparent gzip: tests look at the raw encoding.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 5 * time.Minute}
	t.Cleanup(client.CloseIdleConnections)
	e.client = client
	return e
}

func (e *env) url(path string, kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return e.srv.URL + path + "?" + q.Encode()
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(t testing.TB, method, u string, hdr map[string]string, body io.Reader) resp {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	r, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp{r.StatusCode, r.Header, b}
}

func jsonErr(t testing.TB, r resp) string {
	t.Helper()
	var v struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(r.body, &v); err != nil || v.Code != r.status {
		t.Fatalf("error body %q (status %d): %v", r.body, r.status, err)
	}
	return v.Message
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		header string
		force  bool
		gzip   bool
		err    error
	}{
		{"", false, false, nil},
		{"gzip", false, true, nil},
		{"gzip, deflate", false, true, nil},
		{"GZIP;q=0.5, identity;q=0.9", false, false, nil},
		{"identity;q=0.1, gzip;q=0.2", false, true, nil},
		{"deflate, br", false, false, nil},
		{"*", false, false, nil},
		{"*;q=0", false, false, errNoEncoding},
		{"*;q=0, gzip", false, true, nil},
		{"identity;q=0, *", false, true, nil},
		{"identity;q=0", false, false, errNoEncoding},
		{"identity;q=0, br", false, false, errNoEncoding},
		{"*;q=0, identity", false, false, nil},
		{"gzip;q=0", false, false, nil},
		{"gzip;q=bogus", false, false, nil},
		{"gzip", true, false, nil},
		{"identity;q=0, gzip", true, false, errIdentityRejected},
	}
	for _, tc := range tests {
		t.Run(tc.header, func(t *testing.T) {
			g, err := negotiate(tc.header, tc.force)
			if g != tc.gzip || err != tc.err {
				t.Fatalf("negotiate(%q, %v) = %v, %v; want %v, %v", tc.header, tc.force, g, err, tc.gzip, tc.err)
			}
		})
	}
}

func TestDownload(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	content := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	file := filepath.Join(dir, "data.txt")
	os.WriteFile(file, content, 0o644)
	os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644)
	unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644)
	mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(file, mtime, mtime)

	t.Run("identity", func(t *testing.T) {
		r := e.do(t, "GET", e.url("/files", "path", file), nil, nil)
		if r.status != 200 || !bytes.Equal(r.body, content) {
			t.Fatalf("status %d, %d bytes", r.status, len(r.body))
		}
		want := map[string]string{
			"Content-Length":      fmt.Sprint(len(content)),
			"Content-Type":        "text/plain; charset=utf-8",
			"Content-Disposition": "inline; filename=data.txt",
			"Vary":                "Accept-Encoding",
			"Accept-Ranges":       "bytes",
			"Last-Modified":       mtime.UTC().Format(http.TimeFormat),
		}
		for k, v := range want {
			if got := r.header.Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
	})
	t.Run("gzip", func(t *testing.T) {
		r := e.do(t, "GET", e.url("/files", "path", file), map[string]string{"Accept-Encoding": "gzip, deflate"}, nil)
		if r.status != 200 || r.header.Get("Content-Encoding") != "gzip" || r.header.Get("Content-Length") != "" {
			t.Fatalf("status %d headers %v", r.status, r.header)
		}
		zr, err := gzip.NewReader(bytes.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("gunzip: %v, %d bytes", err, len(got))
		}
	})
	t.Run("empty", func(t *testing.T) {
		r := e.do(t, "GET", e.url("/files", "path", filepath.Join(dir, "empty")), nil, nil)
		if r.status != 200 || r.header.Get("Content-Length") != "0" {
			t.Fatalf("status %d headers %v", r.status, r.header)
		}
	})

	tests := []struct {
		name   string
		path   string
		hdr    map[string]string
		status int
		check  func(t *testing.T, r resp)
	}{
		{"range", file, map[string]string{"Range": "bytes=16-31", "Accept-Encoding": "gzip"}, 206, func(t *testing.T, r resp) {
			if string(r.body) != "0123456789abcdef" || r.header.Get("Content-Range") != fmt.Sprintf("bytes 16-31/%d", len(content)) || r.header.Get("Content-Encoding") != "" {
				t.Fatalf("body %q headers %v", r.body, r.header)
			}
		}},
		{"bad range", file, map[string]string{"Range": "bytes=999999-"}, 416, func(t *testing.T, r resp) {
			if r.header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(content)) {
				t.Fatalf("headers %v", r.header)
			}
		}},
		{"not modified", file, map[string]string{"If-Modified-Since": mtime.UTC().Format(http.TimeFormat)}, 304, nil},
		{"precondition", file, map[string]string{"If-Unmodified-Since": mtime.Add(-time.Hour).UTC().Format(http.TimeFormat)}, 412, nil},
		{"range identity rejected", file, map[string]string{"Range": "bytes=0-1", "Accept-Encoding": "identity;q=0"}, 406, nil},
		{"nothing acceptable", file, map[string]string{"Accept-Encoding": "br, *;q=0"}, 406, nil},
		{"missing", filepath.Join(dir, "nope"), nil, 404, func(t *testing.T, r resp) {
			if m := jsonErr(t, r); m != "path '"+filepath.Join(dir, "nope")+"' does not exist" {
				t.Fatalf("message %q", m)
			}
		}},
		{"directory", dir, nil, 400, func(t *testing.T, r resp) {
			if m := jsonErr(t, r); m != "path '"+dir+"' is a directory" {
				t.Fatalf("message %q", m)
			}
		}},
		{"fifo", filepath.Join(dir, "fifo"), nil, 400, nil},
		{"nul byte", dir + "/a\x00b", nil, 400, nil},
		{"long name", dir + "/" + strings.Repeat("x", 300), nil, 400, nil},
		{"user home", "~someone/x", nil, 400, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(t, "GET", e.url("/files", "path", tc.path), tc.hdr, nil)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}

	t.Run("unknown user", func(t *testing.T) {
		r := e.do(t, "GET", e.url("/files", "path", file, "username", "envdtf-none"), nil, nil)
		if r.status != 401 || jsonErr(t, r) != "error looking up user 'envdtf-none': user: unknown user envdtf-none" {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("bad expiration", func(t *testing.T) {
		r := e.do(t, "GET", e.url("/files", "path", file, "signature_expiration", "soon"), nil, nil)
		if r.status != 400 || !strings.HasPrefix(string(r.body), "Invalid format for parameter signature_expiration: ") || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
			t.Fatalf("%d %q %v", r.status, r.body, r.header)
		}
	})
}

func TestSignatures(t *testing.T) {
	e := newEnv(t)
	e.st.SetToken([]byte("secret-token"))
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, []byte("x"), 0o644)
	exp := fmt.Sprint(time.Now().Add(time.Hour).Unix())
	old := fmt.Sprint(time.Now().Add(-time.Hour).Unix())
	tests := []struct {
		name   string
		url    string
		hdr    map[string]string
		status int
		msg    string
	}{
		{"no signature", e.url("/files", "path", file), nil, 401, "missing signature query parameter"},
		{"wrong header", e.url("/files", "path", file), map[string]string{"X-Access-Token": "nope"}, 401, "access token present in header but does not match"},
		{"header", e.url("/files", "path", file), map[string]string{"X-Access-Token": "secret-token"}, 200, ""},
		{"signed", e.url("/files", "path", file, "signature", auth.Sign(file, auth.OpRead, "", []byte("secret-token"), "")), nil, 200, ""},
		{"signed for write", e.url("/files", "path", file, "signature", auth.Sign(file, auth.OpWrite, "", []byte("secret-token"), "")), nil, 401, "invalid signature"},
		{"signed with expiry", e.url("/files", "path", file, "signature_expiration", exp, "signature", auth.Sign(file, auth.OpRead, "", []byte("secret-token"), exp)), nil, 200, ""},
		{"expired", e.url("/files", "path", file, "signature_expiration", old, "signature", auth.Sign(file, auth.OpRead, "", []byte("secret-token"), old)), nil, 401, "signature is already expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(t, "GET", tc.url, tc.hdr, nil)
			if r.status != tc.status || tc.msg != "" && jsonErr(t, r) != tc.msg {
				t.Fatalf("%d %s", r.status, r.body)
			}
		})
	}
}

// part is one multipart part for multipartBody.
type part struct {
	field, filename, content string
}

func multipartBody(t testing.TB, parts ...part) (string, []byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		cd := fmt.Sprintf(`form-data; name=%q`, p.field)
		if p.filename != "" {
			cd += fmt.Sprintf(`; filename=%q`, p.filename)
		}
		h.Set("Content-Disposition", cd)
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, p.content)
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

func entries(t testing.TB, r resp) []UploadEntry {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var out []UploadEntry
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return out
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// noTemps fails if an upload temp file was left in dir.
func noTemps(t testing.TB, dir string) {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, ".envd-upload-*"))
	if len(names) > 0 {
		t.Fatalf("temp files left: %v", names)
	}
}

func TestUploadMultipart(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()

	ct, body := multipartBody(t,
		part{"file", filepath.Join(dir, "a/b/one.txt"), "one"},
		part{"other", "", "ignored"},
		part{"file", filepath.Join(dir, "two.txt"), "two"},
	)
	r := e.do(t, "POST", e.url("/files"), map[string]string{"Content-Type": ct}, bytes.NewReader(body))
	if got := r.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	if string(r.body) != fmt.Sprintf(`[{"path":"%s/a/b/one.txt","name":"one.txt","type":"file"},{"path":"%s/two.txt","name":"two.txt","type":"file"}]`+"\n", dir, dir) {
		t.Fatalf("body %s", r.body)
	}
	if readFile(t, filepath.Join(dir, "a/b/one.txt")) != "one" || readFile(t, filepath.Join(dir, "two.txt")) != "two" {
		t.Fatal("content")
	}
	st, _ := os.Stat(filepath.Join(dir, "two.txt"))
	if st.Mode() != 0o644 {
		t.Fatalf("mode %v", st.Mode())
	}

	// path query wins over the part's filename; metadata is set and read back.
	target := filepath.Join(dir, "meta.txt")
	ct, body = multipartBody(t, part{"file", "ignored-name", "m"})
	r = e.do(t, "POST", e.url("/files", "path", target), map[string]string{"Content-Type": ct, "X-Metadata-Author": "mish", "X-Metadata-Purpose": "test"}, bytes.NewReader(body))
	got := entries(t, r)
	want := []UploadEntry{{Path: target, Name: "meta.txt", Type: "file", Metadata: map[string]string{"author": "mish", "purpose": "test"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
	unix.Setxattr(target, "user.keepme", []byte("1"), 0)
	if err := unix.Setxattr(target, "trusted.dropme", []byte("1"), 0); err != nil {
		t.Fatalf("set trusted xattr: %v", err)
	}
	// Replace semantics: the next upload's set replaces the old one.
	r = e.do(t, "POST", e.url("/files", "path", target), map[string]string{"Content-Type": ct, "X-Metadata-Author": "other"}, bytes.NewReader(body))
	if got := entries(t, r); !reflect.DeepEqual(got[0].Metadata, map[string]string{"author": "other"}) {
		t.Fatalf("metadata %v", got[0].Metadata)
	}
	r = e.do(t, "POST", e.url("/files", "path", target), map[string]string{"Content-Type": ct}, bytes.NewReader(body))
	if got := entries(t, r); got[0].Metadata != nil || !strings.Contains(string(r.body), `"type":"file"}`) {
		t.Fatalf("metadata %v", string(r.body))
	}
	if v := make([]byte, 8); true {
		n, err := unix.Getxattr(target, "user.keepme", v)
		if err != nil || string(v[:n]) != "1" {
			t.Fatalf("foreign xattr lost: %v", err)
		}
		if _, err := unix.Getxattr(target, "trusted.dropme", v); err == nil {
			t.Fatal("trusted.* xattr copied to the new file")
		}
	}

	tests := []struct {
		name   string
		parts  []part
		query  []string
		hdr    map[string]string
		status int
		msg    string
	}{
		{"same path twice", []part{{"file", filepath.Join(dir, "d1"), "1"}, {"file", filepath.Join(dir, "d1"), "2"}}, nil, nil, 400,
			"you cannot upload multiple files to the same path '" + filepath.Join(dir, "d1") + "' in one upload request, only the first specified file was uploaded"},
		{"no filename", []part{{"file", "", "x"}}, nil, nil, 400, "error getting multipart custom part file name: filename not found in Content-Disposition header"},
		{"directory", []part{{"file", dir, "x"}}, nil, nil, 400, "path is a directory: " + dir},
		{"bad metadata", []part{{"file", filepath.Join(dir, "x"), "x"}}, nil, map[string]string{"X-Metadata-Bad": "\u00e9"}, 400, ""},
		{"unknown user", []part{{"file", filepath.Join(dir, "x"), "x"}}, []string{"username", "envdtf-none"}, nil, 401, ""},
		{"unsupported encoding", []part{{"file", filepath.Join(dir, "x"), "x"}}, nil, map[string]string{"Content-Encoding": "br"}, 400,
			"error decompressing request body: unsupported Content-Encoding: br, supported: [gzip]"},
		{"not gzip", []part{{"file", filepath.Join(dir, "x"), "x"}}, nil, map[string]string{"Content-Encoding": "gzip"}, 400, ""},
		{"path through a file", []part{{"file", dir + "/two.txt/../../x", "x"}}, nil, nil, 500, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct, body := multipartBody(t, tc.parts...)
			hdr := map[string]string{"Content-Type": ct}
			for k, v := range tc.hdr {
				hdr[k] = v
			}
			r := e.do(t, "POST", e.url("/files", tc.query...), hdr, bytes.NewReader(body))
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if m := jsonErr(t, r); tc.msg != "" && m != tc.msg {
				t.Fatalf("message %q", m)
			}
		})
	}
	noTemps(t, dir)

	t.Run("zero parts", func(t *testing.T) {
		ct, body := multipartBody(t, part{"other", "", "x"})
		r := e.do(t, "POST", e.url("/files"), map[string]string{"Content-Type": ct}, bytes.NewReader(body))
		if r.status != 200 || string(r.body) != "[]\n" {
			t.Fatalf("%d %q", r.status, r.body)
		}
	})
	t.Run("malformed multipart keeps old", func(t *testing.T) {
		p := filepath.Join(dir, "two.txt")
		body := "--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + p + "\"\r\n\r\npartial content without end"
		r := e.do(t, "POST", e.url("/files"), map[string]string{"Content-Type": "multipart/form-data; boundary=XYZ"}, strings.NewReader(body))
		if r.status != 400 || readFile(t, p) != "two" {
			t.Fatalf("%d %s; content %q", r.status, r.body, readFile(t, p))
		}
		noTemps(t, dir)
	})
}

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestUploadRaw(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "raw.bin")
	content := bytes.Repeat([]byte("raw data "), 100000)

	r := e.do(t, "POST", e.url("/files", "path", target), map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, bytes.NewReader(gz(t, content)))
	if got := entries(t, r); len(got) != 1 || got[0].Path != target {
		t.Fatalf("%+v", got)
	}
	if readFile(t, target) != string(content) {
		t.Fatal("content mismatch")
	}

	// Truncated gzip: 400 and the old content intact.
	z := gz(t, []byte(strings.Repeat("new content ", 100000)))
	r = e.do(t, "POST", e.url("/files", "path", target), map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, bytes.NewReader(z[:len(z)/2]))
	if r.status != 400 || !strings.HasPrefix(jsonErr(t, r), "error decompressing request body") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if readFile(t, target) != string(content) {
		t.Fatal("old content destroyed")
	}
	noTemps(t, dir)

	tests := []struct {
		name   string
		query  []string
		ct     string
		status int
		msg    string
	}{
		{"no path", nil, "application/octet-stream", 400, "path query parameter is required for raw body upload"},
		{"bad type", []string{"path", target}, "text/plain", 400, "unsupported content type: text/plain, expected multipart/form-data or application/octet-stream"},
		{"no type", []string{"path", target}, "", 400, ""},
		{"nul", []string{"path", dir + "/a\x00"}, "application/octet-stream", 400, ""},
		{"long name", []string{"path", dir + "/" + strings.Repeat("n", 256)}, "application/octet-stream", 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.ct != "" {
				hdr["Content-Type"] = tc.ct
			}
			r := e.do(t, "POST", e.url("/files", tc.query...), hdr, strings.NewReader("x"))
			if r.status != tc.status {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if m := jsonErr(t, r); tc.msg != "" && m != tc.msg {
				t.Fatalf("message %q", m)
			}
		})
	}
}

func TestUploadKeepsModeOwnerAndLinks(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	os.WriteFile(existing, []byte("old"), 0o600)
	os.Chown(existing, 1234, 5678)
	unix.Chmod(existing, 0o4751) // after chown, which clears setuid
	r := e.do(t, "POST", e.url("/files", "path", existing), map[string]string{"Content-Type": "application/octet-stream"}, strings.NewReader("new"))
	entries(t, r)
	var st unix.Stat_t
	unix.Stat(existing, &st)
	if st.Mode&0o7777 != 0o4751 || st.Uid != 1234 || st.Gid != 5678 || readFile(t, existing) != "new" {
		t.Fatalf("mode %o owner %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	}

	// A symlink stays; the file it points to gets the content.
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("old"), 0o644)
	os.Symlink("target", filepath.Join(dir, "link"))
	r = e.do(t, "POST", e.url("/files", "path", filepath.Join(dir, "link")), map[string]string{"Content-Type": "application/octet-stream"}, strings.NewReader("via link"))
	if got := entries(t, r); got[0].Path != filepath.Join(dir, "link") {
		t.Fatalf("%+v", got)
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "link")); fi.Mode()&os.ModeSymlink == 0 || readFile(t, target) != "via link" {
		t.Fatal("link replaced or target not written")
	}
	// Dangling: the missing target is created.
	os.Symlink("sub/created", filepath.Join(dir, "dangling"))
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	r = e.do(t, "POST", e.url("/files", "path", filepath.Join(dir, "dangling")), map[string]string{"Content-Type": "application/octet-stream"}, strings.NewReader("d"))
	entries(t, r)
	if readFile(t, filepath.Join(dir, "sub/created")) != "d" {
		t.Fatal("dangling target not created")
	}
	// Download follows links.
	r = e.do(t, "GET", e.url("/files", "path", filepath.Join(dir, "link")), nil, nil)
	if string(r.body) != "via link" {
		t.Fatalf("download via link %q", r.body)
	}
	noTemps(t, dir)
	noTemps(t, filepath.Join(dir, "sub"))
}
