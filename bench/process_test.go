package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/process"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/writectl"
)

// procChildEnv switches the test binary into a Process service server
// ("direct" or "shell" spawn), so its CPU time can be measured apart from
// the client's.
const procChildEnv = "ENVD_BENCH_PROCESS_CHILD"

func init() {
	if mode := os.Getenv(procChildEnv); mode != "" {
		os.Exit(procChild(mode))
	}
}

// procChild serves until stdin closes; it prints its address first.
func procChild(mode string) int {
	if path := os.Getenv("ENVD_BENCH_PROCESS_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	st := state.New()
	reaper := pid1.NewReaper(false)
	defer reaper.Close()
	svc := process.New(process.Options{State: st, Reaper: reaper, ShellWrapper: mode == "shell"})
	defer svc.Close()
	mux := http.NewServeMux()
	path, h := processconnect.NewProcessHandler(svc, append([]connect.HandlerOption{connect.WithInterceptors(auth.UserInterceptor(st))}, process.HandlerOptions()...)...)
	mux.Handle(path, writectl.Wrap(h))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	fmt.Println(ln.Addr().String())
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	srv.Close()
	return 0
}

type procServer struct {
	pid   int
	url   string
	hc    *http.Client
	json  processconnect.ProcessClient
	proto processconnect.ProcessClient
}

func startProcServer(b *testing.B, mode string) *procServer {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), procChildEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("child server: %v", err)
	}
	url := "http://" + strings.TrimSpace(addr)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	noGzip := connect.WithAcceptCompression("gzip", nil, nil) // as the SDK
	return &procServer{
		pid:   cmd.Process.Pid,
		url:   url,
		hc:    hc,
		json:  processconnect.NewProcessClient(hc, url, connect.WithProtoJSON(), noGzip),
		proto: processconnect.NewProcessClient(hc, url, noGzip),
	}
}

// runToEnd starts c and reads the stream to its end; it returns stdout bytes.
func runToEnd(b *testing.B, c processconnect.ProcessClient, msg *pb.StartRequest) int {
	st, err := c.Start(context.Background(), connect.NewRequest(msg))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	n, ended := 0, false
	for st.Receive() {
		ev := st.Msg().GetEvent()
		n += len(ev.GetData().GetStdout())
		ended = ended || ev.GetEnd() != nil
	}
	if st.Err() != nil || !ended {
		b.Fatalf("stream: ended %v err %v", ended, st.Err())
	}
	return n
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// BenchmarkProcessExec interleaves a raw os/exec spawn of /bin/true with a
// Start→End of /bin/true through the service (direct exec and the /bin/sh
// wrapper), so all three see the same machine load.
func BenchmarkProcessExec(b *testing.B) {
	direct, shell := startProcServer(b, "direct"), startProcServer(b, "shell")
	msg := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/true"}, Stdin: proto(false)}
	var raw, viaDirect, viaShell []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, time.Since(t0))
		t0 = time.Now()
		runToEnd(b, direct.proto, msg)
		viaDirect = append(viaDirect, time.Since(t0))
		t0 = time.Now()
		runToEnd(b, shell.proto, msg)
		viaShell = append(viaShell, time.Since(t0))
	}
	b.ReportMetric(ms(pct(raw, .5)), "raw-p50-ms")
	b.ReportMetric(ms(pct(raw, .99)), "raw-p99-ms")
	b.ReportMetric(ms(pct(viaDirect, .5)), "direct-p50-ms")
	b.ReportMetric(ms(pct(viaDirect, .99)), "direct-p99-ms")
	b.ReportMetric(ms(pct(viaShell, .5)), "shell-p50-ms")
	b.ReportMetric(ms(pct(viaShell, .99)), "shell-p99-ms")
	b.ReportMetric(float64(pct(viaDirect, .5))/float64(pct(raw, .5)), "direct/raw-p50")
	b.ReportMetric(float64(pct(viaShell, .5))/float64(pct(raw, .5)), "shell/raw-p50")
	b.ReportMetric(0, "ns/op")
}

func proto[T any](v T) *T { return &v }

// BenchmarkProcessStreamJSON streams 200 MiB of stdout with the JSON codec
// and reports throughput and the server process's CPU per MiB.
func BenchmarkProcessStreamJSON(b *testing.B) {
	srv := startProcServer(b, "direct")
	const size = 200 << 20
	msg := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "head", Args: []string{"-c", strconv.Itoa(size), "/dev/zero"}}, Stdin: proto(false)}
	var total int64
	var wall, cpu time.Duration
	for b.Loop() {
		c0 := procCPU(b, srv.pid)
		t0 := time.Now()
		if n := runToEnd(b, srv.json, msg); n != size {
			b.Fatalf("got %d bytes", n)
		}
		wall += time.Since(t0)
		cpu += procCPU(b, srv.pid) - c0
		total += size
	}
	mib := float64(total) / (1 << 20)
	b.ReportMetric(mib/wall.Seconds(), "MiB/s")
	b.ReportMetric(ms(cpu)/mib, "server-cpu-ms/MiB")
	b.ReportMetric(0, "ns/op")
}

// lightStream runs msg with the Connect JSON protocol over plain HTTP and
// decodes only what a client must (envelopes, base64), so the server is
// what limits the rate. It returns the stdout bytes.
func lightStream(b *testing.B, srv *procServer, msg *pb.StartRequest) int {
	body, err := protojson.Marshal(msg)
	if err != nil {
		b.Fatal(err)
	}
	env := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(env[1:], uint32(len(body)))
	req, _ := http.NewRequest("POST", srv.url+"/process.Process/Start", bytes.NewReader(append(env, body...)))
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	res, err := srv.hc.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer res.Body.Close()
	r := bufio.NewReaderSize(res.Body, 1<<20)
	var hdr [5]byte
	var payload, out []byte
	prefix := []byte(`"stdout":"`)
	n := 0
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			b.Fatalf("read envelope: %v", err)
		}
		size := int(binary.BigEndian.Uint32(hdr[1:]))
		if cap(payload) < size {
			payload = make([]byte, size)
		}
		payload = payload[:size]
		if _, err := io.ReadFull(r, payload); err != nil {
			b.Fatal(err)
		}
		if hdr[0]&2 != 0 {
			if !bytes.Equal(payload, []byte("{}")) {
				b.Fatalf("stream error: %s", payload)
			}
			return n
		}
		if i := bytes.Index(payload, prefix); i >= 0 {
			enc := payload[i+len(prefix):]
			enc = enc[:bytes.IndexByte(enc, '"')]
			if cap(out) < base64.StdEncoding.DecodedLen(len(enc)) {
				out = make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
			}
			m, err := base64.StdEncoding.Decode(out[:cap(out)], enc)
			if err != nil {
				b.Fatal(err)
			}
			n += m
		}
	}
}

// BenchmarkProcessStreamLight is BenchmarkProcessStreamJSON with the
// light client: the server's own JSON streaming rate.
func BenchmarkProcessStreamLight(b *testing.B) {
	srv := startProcServer(b, "direct")
	const size = 200 << 20
	msg := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "head", Args: []string{"-c", strconv.Itoa(size), "/dev/zero"}}, Stdin: proto(false)}
	var total int64
	var wall, cpu time.Duration
	for b.Loop() {
		c0 := procCPU(b, srv.pid)
		t0 := time.Now()
		if n := lightStream(b, srv, msg); n != size {
			b.Fatalf("got %d bytes", n)
		}
		wall += time.Since(t0)
		cpu += procCPU(b, srv.pid) - c0
		total += size
	}
	mib := float64(total) / (1 << 20)
	b.ReportMetric(mib/wall.Seconds(), "MiB/s")
	b.ReportMetric(ms(cpu)/mib, "server-cpu-ms/MiB")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkProcessConcurrent64 runs 64 `sh -c 'echo hi'` at once.
func BenchmarkProcessConcurrent64(b *testing.B) {
	srv := startProcServer(b, "direct")
	msg := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sh", Args: []string{"-c", "echo hi"}}, Stdin: proto(false)}
	var walls []time.Duration
	for b.Loop() {
		t0 := time.Now()
		var wg sync.WaitGroup
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if runToEnd(b, srv.json, msg) != 3 {
					b.Error("wrong output")
				}
			}()
		}
		wg.Wait()
		walls = append(walls, time.Since(t0))
	}
	b.ReportMetric(ms(pct(walls, .5)), "wall-p50-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkProcessPTYEcho measures a keystroke's round trip: SendInput of
// one byte to a PTY running cat until the echo arrives on the stream.
func BenchmarkProcessPTYEcho(b *testing.B) {
	srv := startProcServer(b, "direct")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := srv.proto.Start(ctx, connect.NewRequest(&pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "cat"},
		Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}},
	}))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if !st.Receive() {
		b.Fatal(st.Err())
	}
	pid := st.Msg().GetEvent().GetStart().GetPid()
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	var rtt []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := srv.proto.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("a")}}})); err != nil {
			b.Fatal(err)
		}
		for got := false; !got; {
			if !st.Receive() {
				b.Fatal(st.Err())
			}
			got = strings.Contains(string(st.Msg().GetEvent().GetData().GetPty()), "a")
		}
		rtt = append(rtt, time.Since(t0))
	}
	_, _ = srv.proto.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGKILL}))
	b.ReportMetric(ms(pct(rtt, .5)), "rtt-p50-ms")
	b.ReportMetric(ms(pct(rtt, .99)), "rtt-p99-ms")
	b.ReportMetric(0, "ns/op")
}
