package bench

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-go/envd/internal/files"
	"github.com/envd-go/envd/internal/filesystem"
	"github.com/envd-go/envd/internal/fsuser/fsusertest"
	"github.com/envd-go/envd/internal/server"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
)

// filesChildEnv switches the test binary into a server child serving the
// Filesystem service and /files, so server CPU and RSS are measured apart
// from the client.
const filesChildEnv = "ENVD_BENCH_FILES_CHILD"

func init() {
	if os.Getenv(filesChildEnv) != "" {
		os.Exit(filesChild())
	}
}

// filesChild prints its address and serves until stdin closes.
func filesChild() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st := state.New()
	log := slog.New(slog.DiscardHandler)
	fs := filesystem.New(filesystem.Options{State: st, Logger: log})
	defer fs.Close()
	h := server.Handler(server.Deps{State: st, Logger: log, Filesystem: fs, Routes: files.New(files.Options{State: st, Logger: log}).Routes()})
	srv := server.New(h, nil)
	go srv.Serve(ln)
	fmt.Println(ln.Addr().String())
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	return 0
}

type filesServer struct {
	url  string
	pid  int
	http *http.Client
	fs   filesystemconnect.FilesystemClient
}

func startFilesServer(b *testing.B) *filesServer {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), filesChildEnv+"=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("child address: %v", err)
	}
	u := "http://" + strings.TrimSpace(line)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}}
	b.Cleanup(client.CloseIdleConnections)
	return &filesServer{url: u, pid: cmd.Process.Pid, http: client, fs: filesystemconnect.NewFilesystemClient(client, u)}
}

func benchTmpfs(b *testing.B, size string) string {
	b.Helper()
	dir := b.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		b.Fatalf("mount tmpfs: %v", err)
	}
	b.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	os.Chmod(filepath.Dir(dir), 0o755) // TempDir's 0700 would lock out test users
	return dir
}

// writeData writes size bytes: random (incompressible) or base64 text of
// random bytes (gzip gets it to about 75 %).
func writeData(b *testing.B, path string, size int64, text bool) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{7})
	raw := make([]byte, 3<<18)
	enc := make([]byte, base64.StdEncoding.EncodedLen(len(raw)))
	for n := int64(0); n < size; {
		rng.Read(raw)
		chunk := raw
		if text {
			base64.StdEncoding.Encode(enc, raw)
			chunk = enc
		}
		chunk = chunk[:min(int64(len(chunk)), size-n)]
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
		n += int64(len(chunk))
	}
}

func mibps(b *testing.B, bytes int64, d time.Duration, unit string) {
	b.ReportMetric(float64(bytes)/(1<<20)/d.Seconds(), unit)
}

// procCPU returns utime+stime of pid.
func filesProcCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func filesProcKiB(b *testing.B, pid int, key string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func (s *filesServer) post(b *testing.B, path string, body io.Reader, size int64, hdr map[string]string, query ...string) {
	q := url.Values{}
	if path != "" {
		q.Set("path", path)
	}
	for i := 0; i+1 < len(query); i += 2 {
		q.Set(query[i], query[i+1])
	}
	u := s.url + "/files?" + q.Encode()
	req, _ := http.NewRequest("POST", u, body)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	for k, v := range hdr { // may override Content-Type
		req.Header.Set(k, v)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("upload status %d", resp.StatusCode)
	}
}

func (s *filesServer) get(b *testing.B, path string, hdr map[string]string) int64 {
	req, _ := http.NewRequest("GET", s.url+"/files?"+url.Values{"path": {path}}.Encode(), nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("download status %d", resp.StatusCode)
	}
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{resp.Body}, buf)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkFiles: 256 MiB transfers on tmpfs (with cp of the same file as
// the baseline), 1000 small uploads, ListDir of 20k entries and the lag
// of the last of 1000 watch events. Run:
//
//	go test -run '^$' -bench BenchmarkFiles -benchtime 3x ./bench/
func BenchmarkFiles(b *testing.B) {
	const size = 256 << 20
	s := startFilesServer(b)
	dir := benchTmpfs(b, "3g")
	bin := filepath.Join(dir, "random.bin")
	txt := filepath.Join(dir, "text.txt")
	writeData(b, bin, size, false)
	writeData(b, txt, size, true)

	b.Run("cp-256MiB", func(b *testing.B) {
		var total time.Duration
		for b.Loop() {
			start := time.Now()
			if out, err := exec.Command("cp", bin, filepath.Join(dir, "cp.bin")).CombinedOutput(); err != nil {
				b.Fatalf("cp: %v %s", err, out)
			}
			total += time.Since(start)
		}
		mibps(b, size*int64(b.N), total, "MiB/s")
		os.Remove(filepath.Join(dir, "cp.bin"))
	})

	upload := func(name, src string, hdr map[string]string, compress bool) {
		b.Run(name, func(b *testing.B) {
			body := src
			if compress {
				body = src + ".gz"
				gzipFile(b, src, body)
			}
			fi, _ := os.Stat(body)
			var total time.Duration
			for b.Loop() {
				f, _ := os.Open(body)
				start := time.Now()
				s.post(b, filepath.Join(dir, "up.bin"), f, fi.Size(), hdr)
				total += time.Since(start)
				f.Close()
			}
			mibps(b, size*int64(b.N), total, "MiB/s")
			os.Remove(filepath.Join(dir, "up.bin"))
			if compress {
				os.Remove(body)
			}
		})
	}
	upload("upload-256MiB", bin, nil, false)
	upload("upload-gzip-text-256MiB", txt, map[string]string{"Content-Encoding": "gzip"}, true)

	b.Run("upload-multipart-256MiB", func(b *testing.B) {
		var total time.Duration
		for b.Loop() {
			pr, pw := io.Pipe()
			mw := multipart.NewWriter(pw)
			go func() {
				f, _ := os.Open(bin)
				defer f.Close()
				part, _ := mw.CreateFormFile("file", filepath.Join(dir, "mp.bin"))
				io.CopyBuffer(part, struct{ io.Reader }{f}, make([]byte, 1<<20))
				pw.CloseWithError(mw.Close())
			}()
			start := time.Now()
			s.post(b, "", pr, -1, map[string]string{"Content-Type": mw.FormDataContentType()})
			total += time.Since(start)
		}
		mibps(b, size*int64(b.N), total, "MiB/s")
	})

	download := func(name, src string, hdr map[string]string) {
		b.Run(name, func(b *testing.B) {
			var total time.Duration
			var wire int64
			for b.Loop() {
				start := time.Now()
				wire += s.get(b, src, hdr)
				total += time.Since(start)
			}
			mibps(b, size*int64(b.N), total, "MiB/s")
			b.ReportMetric(float64(wire)/float64(size*int64(b.N)), "wire-ratio")
		})
	}
	download("download-256MiB", bin, nil)
	download("download-gzip-text-256MiB", txt, map[string]string{"Accept-Encoding": "gzip"})
	download("download-gzip-random-256MiB", bin, map[string]string{"Accept-Encoding": "gzip"})

	small := func(name string, user *users.User) {
		b.Run(name, func(b *testing.B) {
			data := make([]byte, 4096)
			sdir := filepath.Join(dir, name)
			var q []string
			if user != nil {
				q = []string{"username", user.Name}
			}
			var total time.Duration
			for b.Loop() {
				os.RemoveAll(sdir)
				os.Mkdir(sdir, 0o755)
				if user != nil {
					os.Chown(sdir, int(user.UID), int(user.GID))
				}
				start := time.Now()
				for i := range 1000 {
					s.post(b, filepath.Join(sdir, fmt.Sprintf("f%04d", i)), strings.NewReader(string(data)), int64(len(data)), nil, q...)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(1000*b.N)/total.Seconds(), "files/s")
			b.ReportMetric(float64(total.Microseconds())/float64(1000*b.N), "µs/file")
		})
	}
	small("upload-1000-small", nil)
	// Same as a non-root user: each upload switches fsuid three times.
	small("upload-1000-small-as-user", fsusertest.NewUser(b))

	b.Run("listdir-20k", func(b *testing.B) {
		ldir := filepath.Join(dir, "list")
		os.Mkdir(ldir, 0o755)
		for i := range 20000 {
			f, err := os.Create(filepath.Join(ldir, fmt.Sprintf("entry-%05d.txt", i)))
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		// Host agents: proto; the SDK: JSON; both advertise gzip, which
		// connect then applies to the response.
		for _, codec := range []string{"proto", "proto-gzip", "json", "json-gzip"} {
			b.Run(codec, func(b *testing.B) {
				var opts []connect.ClientOption
				if strings.HasPrefix(codec, "json") {
					opts = append(opts, connect.WithProtoJSON())
				}
				if !strings.HasSuffix(codec, "gzip") {
					opts = append(opts, connect.WithAcceptCompression("gzip", nil, nil))
				}
				client := filesystemconnect.NewFilesystemClient(s.http, s.url, opts...)
				// Warm up once so RSS growth is per call, not first-use.
				if _, err := client.ListDir(context.Background(), connect.NewRequest(&pb.ListDirRequest{Path: ldir})); err != nil {
					b.Fatal(err)
				}
				var total, cpu time.Duration
				var growth int64
				for b.Loop() {
					os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.pid), []byte("5"), 0)
					before := filesProcKiB(b, s.pid, "VmRSS")
					cpu0 := filesProcCPU(b, s.pid)
					start := time.Now()
					resp, err := client.ListDir(context.Background(), connect.NewRequest(&pb.ListDirRequest{Path: ldir}))
					total += time.Since(start)
					if err != nil || len(resp.Msg.Entries) != 20000 {
						b.Fatalf("ListDir: %v", err)
					}
					cpu += filesProcCPU(b, s.pid) - cpu0
					growth = max(growth, filesProcKiB(b, s.pid, "VmHWM")-before)
				}
				b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/listdir")
				b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "server-cpu-ms/op")
				b.ReportMetric(float64(growth)/1024, "server-rss-growth-MiB")
			})
		}
	})

	b.Run("watch-1000-creates", func(b *testing.B) {
		var lag, all time.Duration
		for i := 0; b.Loop(); i++ {
			wdir := filepath.Join(dir, fmt.Sprintf("watch%d", i))
			os.Mkdir(wdir, 0o755)
			ctx, cancel := context.WithCancel(context.Background())
			stream, err := s.fs.WatchDir(ctx, connect.NewRequest(&pb.WatchDirRequest{Path: wdir, Recursive: true}))
			if err != nil || !stream.Receive() {
				b.Fatalf("watch: %v %v", err, stream.Err())
			}
			got := make(chan time.Time, 1)
			go func() {
				for n := 0; stream.Receive(); {
					if ev := stream.Msg().GetFilesystem(); ev != nil && ev.Type == pb.EventType_EVENT_TYPE_CREATE {
						if n++; n == 1000 {
							got <- time.Now()
							return
						}
					}
				}
				close(got)
			}()
			start := time.Now()
			for j := range 1000 {
				f, err := os.Create(filepath.Join(wdir, fmt.Sprintf("c%04d", j)))
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
			last := time.Now()
			select {
			case at, ok := <-got:
				if !ok {
					b.Fatalf("stream ended: %v", stream.Err())
				}
				lag += max(at.Sub(last), 0)
				all += at.Sub(start)
			case <-time.After(60 * time.Second):
				b.Fatal("events missing")
			}
			cancel()
			stream.Close()
		}
		b.ReportMetric(float64(lag.Microseconds())/1000/float64(b.N), "ms-last-event-lag")
		b.ReportMetric(float64(all.Microseconds())/1000/float64(b.N), "ms-1000-creates-to-last-event")
	})
}

func gzipFile(b *testing.B, src, dst string) {
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	zw, _ := gzip.NewWriterLevel(out, gzip.BestSpeed)
	if _, err := io.Copy(zw, in); err != nil {
		b.Fatal(err)
	}
	zw.Close()
}
