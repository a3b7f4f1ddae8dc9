package ports

// The forwarder is tested in a real network namespace pair so the guest
// address exists on a real interface:
//
//	ns "in"  (the guest): veth 169.254.0.21/30, lo; runs this test binary
//	         re-executed in helper mode, which runs the Forwarder and the
//	         loopback servers it is told to start (JSON lines on stdin/stdout)
//	ns "out" (the host):  veth 169.254.0.22/30; the test dials from here
//	         with a socket created on a thread switched into the namespace.
//
// Nothing is configured in the root namespace, so parallel runs cannot
// collide.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const helperEnv = "ENVD_PORTS_NETNS_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(runHelper())
	}
	os.Exit(m.Run())
}

// helperReq is one command to the helper.
type helperReq struct {
	Op    string `json:"op"`
	Addr  string `json:"addr,omitempty"`
	Port  uint16 `json:"port,omitempty"`
	Mode  string `json:"mode,omitempty"`
	Count int    `json:"count,omitempty"`
}

type helperResp struct {
	Port  uint16   `json:"port,omitempty"`
	Stats Stats    `json:"stats"`
	Ports []uint16 `json:"ports"`
	Err   string   `json:"err,omitempty"`
}

// runHelper is the guest side: a Forwarder plus test servers.
func runHelper() int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f, err := New(Options{GuestAddr: netip.MustParseAddr(os.Getenv("ENVD_PORTS_GUEST")), Interval: 100 * time.Millisecond, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f.Start()
	defer f.Stop()
	h := &helper{servers: map[uint16]net.Listener{}, occupied: map[uint16]int{}}
	defer h.closeAll()
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req helperReq
		var resp helperResp
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			resp.Err = err.Error()
		} else if err := h.do(f, req, &resp); err != nil {
			resp.Err = err.Error()
		}
		resp.Stats, resp.Ports = f.Stats(), f.Ports()
		out.Encode(resp)
	}
	return 0
}

type helper struct {
	servers  map[uint16]net.Listener
	occupied map[uint16]int
	wg       sync.WaitGroup
}

func (h *helper) do(f *Forwarder, req helperReq, resp *helperResp) error {
	switch req.Op {
	case "stats":
	case "stop":
		f.Stop()
	case "start":
		f.Start()
	case "listen":
		listen := net.Listen
		if strings.HasPrefix(req.Addr, "::ffff:") {
			listen = listenMapped // Go would make it an AF_INET socket
		}
		ln, err := listen("tcp", net.JoinHostPort(req.Addr, strconv.Itoa(int(req.Port))))
		if err != nil {
			return err
		}
		resp.Port = uint16(ln.Addr().(*net.TCPAddr).Port)
		h.servers[resp.Port] = ln
		h.wg.Add(1)
		go h.serve(ln, req.Mode)
	case "close":
		ln, ok := h.servers[req.Port]
		if !ok {
			return fmt.Errorf("no server on %d", req.Port)
		}
		ln.Close()
		delete(h.servers, req.Port)
	case "flap":
		// A listener that appears and disappears faster than, at, and
		// slower than the scan period.
		for i := range req.Count {
			ln, err := net.Listen("tcp", net.JoinHostPort(req.Addr, strconv.Itoa(int(req.Port))))
			if err != nil {
				return err
			}
			time.Sleep(time.Duration(i%7) * 37 * time.Millisecond)
			ln.Close()
			time.Sleep(time.Duration(i%5) * 29 * time.Millisecond)
		}
	case "occupy":
		// Bound but not listening, without SO_REUSEADDR: invisible to the
		// scanner, but makes the forwarder's bind fail.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		a := netip.MustParseAddr(req.Addr).As4()
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(req.Port), Addr: a}); err != nil {
			unix.Close(fd)
			return err
		}
		sa, _ := unix.Getsockname(fd)
		resp.Port = uint16(sa.(*unix.SockaddrInet4).Port)
		h.occupied[resp.Port] = fd
	case "release":
		unix.Close(h.occupied[req.Port])
		delete(h.occupied, req.Port)
	default:
		return fmt.Errorf("unknown op %q", req.Op)
	}
	return nil
}

// listenMapped listens on an IPv4-mapped IPv6 address with an AF_INET6
// socket.
func listenMapped(_, address string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		return nil, err
	}
	if err := unix.Listen(fd, 16); err != nil {
		return nil, err
	}
	return net.FileListener(f)
}

func (h *helper) closeAll() {
	for _, ln := range h.servers {
		ln.Close()
	}
	h.wg.Wait()
}

func (h *helper) serve(ln net.Listener, mode string) {
	defer h.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer c.Close()
			tc := c.(*net.TCPConn)
			switch mode {
			case "echo":
				// Echo, then pass the client's FIN on.
				io.Copy(tc, tc)
				tc.CloseWrite()
				io.Copy(io.Discard, tc)
			case "sink":
				// Digest of everything until the client's FIN, then close.
				hs := sha256.New()
				n, _ := io.Copy(hs, tc)
				fmt.Fprintf(tc, "%d %x", n, hs.Sum(nil))
			case "reset":
				tc.SetLinger(0)
			}
		}()
	}
}

// netEnv is one namespace pair and its helper.
type netEnv struct {
	guest netip.Addr
	outNS int // fd of the "out" namespace

	mu     sync.Mutex // one request at a time
	stdin  io.WriteCloser
	stdout *bufio.Scanner
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// removeStaleNamespaces deletes namespaces left by killed test runs (their
// pid is in the name and no longer runs).
func removeStaleNamespaces() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, "envdports")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimRight(rest, "io"))
		if err != nil || unix.Kill(pid, 0) == unix.ESRCH {
			exec.Command("ip", "netns", "del", name).Run()
		}
	}
}

func newNetEnv(t *testing.T) *netEnv {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("iproute2 (ip) is required; scripts/setup installs it")
	}
	removeStaleNamespaces()
	base := fmt.Sprintf("envdports%d", os.Getpid())
	nsIn, nsOut := base+"i", base+"o"
	run(t, "ip", "netns", "add", nsIn)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsIn).Run() })
	run(t, "ip", "netns", "add", nsOut)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsOut).Run() })
	run(t, "ip", "-n", nsIn, "link", "add", "vin", "type", "veth", "peer", "name", "vout", "netns", nsOut)
	run(t, "ip", "-n", nsIn, "addr", "add", "169.254.0.21/30", "dev", "vin")
	run(t, "ip", "-n", nsOut, "addr", "add", "169.254.0.22/30", "dev", "vout")
	for _, a := range [][]string{{nsIn, "vin"}, {nsIn, "lo"}, {nsOut, "vout"}, {nsOut, "lo"}} {
		run(t, "ip", "-n", a[0], "link", "set", a[1], "up")
	}
	fd, err := unix.Open("/run/netns/"+nsOut, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })

	e := &netEnv{guest: netip.MustParseAddr("169.254.0.21"), outNS: fd, stderr: &lockedBuffer{}}
	cmd := exec.Command("ip", "netns", "exec", nsIn, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=1", "ENVD_PORTS_GUEST="+e.guest.String())
	cmd.Stderr = e.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if e.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	e.stdout = bufio.NewScanner(stdout)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.stdin.Close() // the helper exits at EOF, stopping the forwarder
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("helper did not exit; stderr:\n%s", e.stderr)
		}
	})
	e.do(t, helperReq{Op: "stats"})
	return e
}

func (e *netEnv) do(t *testing.T, req helperReq) helperResp {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	b, _ := json.Marshal(req)
	if _, err := e.stdin.Write(append(b, '\n')); err != nil {
		t.Fatalf("helper %s: %v\n%s", req.Op, err, e.stderr)
	}
	if !e.stdout.Scan() {
		t.Fatalf("helper %s: no answer (%v)\n%s", req.Op, e.stdout.Err(), e.stderr)
	}
	var resp helperResp
	if err := json.Unmarshal(e.stdout.Bytes(), &resp); err != nil {
		t.Fatalf("helper %s: %v", req.Op, err)
	}
	if resp.Err != "" {
		t.Fatalf("helper %s: %s", req.Op, resp.Err)
	}
	return resp
}

// dial connects from the "out" namespace to the guest address.
func (e *netEnv) dial(port uint16) (*net.TCPConn, error) {
	runtime.LockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer unix.Close(self)
	if err := unix.Setns(e.outNS, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setns: %w", err)
	}
	// The socket is created here, on this thread, so it lives in "out".
	c, dialErr := net.DialTimeout("tcp4", netip.AddrPortFrom(e.guest, port).String(), 10*time.Second)
	if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime discards it when this
		// goroutine ends instead of reusing it in the wrong namespace.
		panic(fmt.Sprintf("restore netns: %v", err))
	}
	runtime.UnlockOSThread()
	if dialErr != nil {
		return nil, dialErr
	}
	return c.(*net.TCPConn), nil
}

func (e *netEnv) waitReachable(t *testing.T, port uint16) {
	t.Helper()
	waitFor(t, fmt.Sprintf("port %d reachable", port), func() bool {
		c, err := e.dial(port)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (e *netEnv) waitUnreachable(t *testing.T, port uint16) {
	t.Helper()
	waitFor(t, fmt.Sprintf("port %d refused", port), func() bool {
		c, err := e.dial(port)
		if err == nil {
			c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
}

// waitScans returns after n more scans have completed.
func (e *netEnv) waitScans(t *testing.T, n uint64) helperResp {
	t.Helper()
	start := e.do(t, helperReq{Op: "stats"}).Stats.Scans
	var r helperResp
	waitFor(t, "scans", func() bool {
		r = e.do(t, helperReq{Op: "stats"})
		return r.Stats.Scans >= start+n
	})
	return r
}

func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func TestForwarderNetns(t *testing.T) {
	e := newNetEnv(t)

	t.Run("loopback server becomes reachable and stops being reachable", func(t *testing.T) {
		for _, addr := range []string{"127.0.0.1", "::1"} {
			p := e.do(t, helperReq{Op: "listen", Addr: addr, Mode: "echo"}).Port
			e.waitReachable(t, p)
			c, err := e.dial(p)
			if err != nil {
				t.Fatal(err)
			}
			echoOnce(t, c, "hello via "+addr)
			c.Close()
			e.do(t, helperReq{Op: "close", Port: p})
			e.waitUnreachable(t, p)
		}
	})

	t.Run("open connections outlive their listener", func(t *testing.T) {
		// Only the forwarding listener goes with the loopback listener;
		// accepted connections run to their natural end.
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "echo"}).Port
		e.waitReachable(t, p)
		c, err := e.dial(p)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "before")
		e.do(t, helperReq{Op: "close", Port: p})
		e.waitUnreachable(t, p)
		echoOnce(t, c, "after the listener is gone")
	})

	t.Run("data integrity 100 MiB both ways", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "echo"}).Port
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitReachable(t, p)
		c, err := e.dial(p)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		const size = 100 << 20
		sent, recv := sha256.New(), sha256.New()
		werr := make(chan error, 1)
		go func() {
			src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), sent)
			_, err := io.Copy(c, src)
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		n, err := io.Copy(recv, c)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", n, err)
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		if n != size || !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
			t.Fatalf("received %d bytes, digest %x, want %d bytes, %x", n, recv.Sum(nil), size, sent.Sum(nil))
		}
	})

	t.Run("half-close reaches the server", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "sink"}).Port
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitReachable(t, p)
		c, err := e.dial(p)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if want := fmt.Sprintf("%d %s", len(data), hex.EncodeToString(sum[:])); string(got) != want {
			t.Fatalf("server saw %q, want %q", got, want)
		}
	})

	t.Run("200 concurrent connections", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "echo"}).Port
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitReachable(t, p)
		waitFor(t, "no live connections", func() bool { return e.do(t, helperReq{Op: "stats"}).Stats.Connections == 0 })
		const n = 200
		conns := make([]*net.TCPConn, n)
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				c, err := e.dial(p)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
				msg := fmt.Sprintf("connection %d", i)
				c.SetDeadline(time.Now().Add(time.Minute))
				io.WriteString(c, msg)
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
					errs <- fmt.Errorf("conn %d: %q %v", i, got, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		t.Cleanup(func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		})
		for err := range errs {
			t.Fatal(err)
		}
		if got := e.do(t, helperReq{Op: "stats"}).Stats.Connections; got != n {
			t.Errorf("live connections %d, want %d", got, n)
		}
		for _, c := range conns {
			c.Close()
		}
		waitFor(t, "connections to drain", func() bool { return e.do(t, helperReq{Op: "stats"}).Stats.Connections == 0 })
	})

	t.Run("thousands of short connections", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "echo"}).Port
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitReachable(t, p)
		before := e.do(t, helperReq{Op: "stats"}).Stats
		const n, workers = 2000, 8
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := range n / workers {
					c, err := e.dial(p)
					if err != nil {
						errs <- err
						return
					}
					msg := fmt.Sprintf("%d/%d", w, i)
					c.SetDeadline(time.Now().Add(time.Minute))
					io.WriteString(c, msg)
					got := make([]byte, len(msg))
					_, err = io.ReadFull(c, got)
					c.Close()
					if err != nil || string(got) != msg {
						errs <- fmt.Errorf("%s: got %q: %v", msg, got, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		waitFor(t, "connections to drain", func() bool { return e.do(t, helperReq{Op: "stats"}).Stats.Connections == 0 })
		if got := e.do(t, helperReq{Op: "stats"}).Stats.ConnectionsTotal - before.ConnectionsTotal; got < n {
			t.Errorf("accepted %d connections, want ≥ %d", got, n)
		}
	})

	t.Run("target resets", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "reset"}).Port
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitReachable(t, p)
		for range 20 {
			c, err := e.dial(p)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("want an orderly close, got %v", err)
			}
			c.Close()
		}
	})

	t.Run("target gone between scans", func(t *testing.T) {
		// Close the server and connect at once: either the forward is
		// already gone (refused) or the client gets an orderly close.
		for range 10 {
			p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "echo"}).Port
			e.waitReachable(t, p)
			e.do(t, helperReq{Op: "close", Port: p})
			c, err := e.dial(p)
			if err != nil {
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatal(err)
				}
				continue
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("want an orderly close, got %v", err)
			}
			c.Close()
			e.waitUnreachable(t, p)
		}
	})

	t.Run("listener that appears and disappears quickly", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "echo"}).Port
		e.do(t, helperReq{Op: "close", Port: p})
		e.do(t, helperReq{Op: "flap", Addr: "127.0.0.1", Port: p, Count: 40})
		e.waitUnreachable(t, p)
		waitFor(t, "port not forwarded", func() bool {
			for _, fp := range e.do(t, helperReq{Op: "stats"}).Ports {
				if fp == p {
					return false
				}
			}
			return true
		})
		// The same port comes back for good and is forwarded again.
		e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Port: p, Mode: "echo"})
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitReachable(t, p)
		c, err := e.dial(p)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "back")
	})

	t.Run("listeners not forwarded", func(t *testing.T) {
		// 0.0.0.0 and the guest address are reachable already; 127.0.0.2
		// and ::ffff:127.0.0.1 are not loopback-only in the e2b sense.
		var ports []uint16
		for _, addr := range []string{"0.0.0.0", "::", e.guest.String(), "127.0.0.2", "::ffff:127.0.0.1"} {
			p := e.do(t, helperReq{Op: "listen", Addr: addr, Mode: "echo"}).Port
			t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
			ports = append(ports, p)
		}
		r := e.waitScans(t, 3)
		for _, p := range ports {
			for _, fp := range r.Ports {
				if fp == p {
					t.Errorf("port %d forwarded", p)
				}
			}
		}
		for _, p := range ports[:3] {
			c, err := e.dial(p)
			if err != nil {
				t.Fatalf("port %d: %v", p, err)
			}
			echoOnce(t, c, "direct")
			c.Close()
		}
		if strings.Contains(e.stderr.String(), "cannot forward") {
			t.Errorf("forwarder tried to bind a reachable port:\n%s", e.stderr)
		}
	})

	t.Run("bind failure is logged once and retried", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "occupy", Addr: e.guest.String()}).Port
		e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Port: p, Mode: "echo"})
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitScans(t, 5)
		logLine := fmt.Sprintf(`"port":%d`, p)
		count := func() int {
			n := 0
			for _, l := range strings.Split(e.stderr.String(), "\n") {
				if strings.Contains(l, "cannot forward port") && strings.Contains(l, logLine) {
					n++
				}
			}
			return n
		}
		if got := count(); got != 1 {
			t.Fatalf("bind failure logged %d times, want once:\n%s", got, e.stderr)
		}
		e.do(t, helperReq{Op: "release", Port: p})
		e.waitReachable(t, p)
		c, err := e.dial(p)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "after retry")
	})

	t.Run("Stop closes forwards and connections, Start restores them", func(t *testing.T) {
		p := e.do(t, helperReq{Op: "listen", Addr: "127.0.0.1", Mode: "echo"}).Port
		t.Cleanup(func() { e.do(t, helperReq{Op: "close", Port: p}) })
		e.waitReachable(t, p)
		c, err := e.dial(p)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, "before stop")
		r := e.do(t, helperReq{Op: "stop"})
		if r.Stats.Connections != 0 || r.Stats.Forwarded != 0 || len(r.Ports) != 0 {
			t.Errorf("after Stop: %+v %v", r.Stats, r.Ports)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("live connection after Stop: %v", err)
		}
		e.waitUnreachable(t, p)
		e.do(t, helperReq{Op: "start"})
		e.waitReachable(t, p)
	})

}
