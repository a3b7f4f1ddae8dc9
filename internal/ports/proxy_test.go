package ports

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// startProxy runs one forwarding listener on 127.0.0.2 (standing in for
// the guest address) to target, without the scanner, and returns its
// address.
func startProxy(t *testing.T, target netip.AddrPort) (*Forwarder, string) {
	t.Helper()
	f := &Forwarder{
		opts:  Options{GuestAddr: netip.MustParseAddr("127.0.0.2"), DialTimeout: 10 * time.Second},
		log:   slog.New(slog.DiscardHandler),
		conns: map[*conn]struct{}{},
	}
	fw, err := f.listen(0, target)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.wg.Add(1)
	go f.accept(ctx, fw)
	t.Cleanup(func() {
		cancel()
		fw.ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f, fw.ln.Addr().String()
}

// serveOnce accepts one connection on a fresh loopback listener and hands
// it to h in a goroutine the test waits for.
func serveOnce(t *testing.T, h func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h(c.(*net.TCPConn))
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProxyFaults(t *testing.T) {
	refused := func(t *testing.T) netip.AddrPort {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		return ap
	}
	resetOnAccept := func(t *testing.T) netip.AddrPort {
		return serveOnce(t, func(c *net.TCPConn) { c.SetLinger(0) })
	}
	resetMidStream := func(t *testing.T) netip.AddrPort {
		return serveOnce(t, func(c *net.TCPConn) {
			io.ReadFull(c, make([]byte, 4))
			c.Write([]byte("partial"))
			c.SetLinger(0)
		})
	}
	tests := []struct {
		name     string
		target   func(t *testing.T) netip.AddrPort
		send     []byte
		dialFail int // -1: either (a reset can race the connect's completion)
		// wantEOF: the client must see an orderly close, not a reset.
		wantEOF bool
	}{
		{"target refuses", refused, nil, 1, true},
		{"target resets on accept", resetOnAccept, nil, -1, true},
		{"target resets mid-stream", resetMidStream, []byte("ping"), 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, addr := startProxy(t, tc.target(t))
			c, err := net.Dial("tcp4", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if tc.send != nil {
				if _, err := c.Write(tc.send); err != nil {
					t.Fatal(err)
				}
			}
			_, err = io.ReadAll(c)
			switch {
			case tc.wantEOF && err != nil:
				t.Fatalf("client read: %v, want orderly close", err)
			case err != nil && !errors.Is(err, syscall.ECONNRESET):
				t.Fatalf("client read: %v", err)
			}
			waitFor(t, "connection count 0", func() bool { return f.Stats().Connections == 0 })
			if got := f.Stats().DialFailures; tc.dialFail >= 0 && got != uint64(tc.dialFail) {
				t.Errorf("dial failures %d, want %d", got, tc.dialFail)
			}
		})
	}
}

// TestProxyHalfClose: the client's FIN reaches the server, whose answer
// still reaches the client.
func TestProxyHalfClose(t *testing.T) {
	target := serveOnce(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d", n)
	})
	_, addr := startProxy(t, target)
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(bytes.Repeat([]byte("x"), 1<<20)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "got 1048576" {
		t.Fatalf("reply %q", got)
	}
}

func TestNewRejectsLoopbackGuest(t *testing.T) {
	for _, a := range []string{"127.0.0.1", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"} {
		if _, err := New(Options{GuestAddr: netip.MustParseAddr(a)}); err == nil {
			t.Errorf("guest address %s accepted", a)
		}
	}
	f, err := New(Options{})
	if err != nil || f.opts.GuestAddr != DefaultGuestAddr {
		t.Fatalf("default: %v %v", f, err)
	}
}

// BenchmarkProxyThroughput streams through one forwarded connection
// (loopback both sides) and, for comparison, directly.
func BenchmarkProxyThroughput(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	target := ln.Addr().(*net.TCPAddr).AddrPort()
	f := &Forwarder{
		opts:  Options{GuestAddr: netip.MustParseAddr("127.0.0.2"), DialTimeout: 10 * time.Second},
		log:   slog.New(slog.DiscardHandler),
		conns: map[*conn]struct{}{},
	}
	fw, err := f.listen(0, target)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.wg.Add(1)
	go f.accept(ctx, fw)
	defer func() { cancel(); fw.ln.Close(); f.wg.Wait() }()

	buf := make([]byte, 256<<10)
	for _, tc := range []struct{ name, addr string }{{"forwarded", fw.ln.Addr().String()}, {"direct", target.String()}} {
		b.Run(tc.name, func(b *testing.B) {
			c, err := net.Dial("tcp4", tc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
