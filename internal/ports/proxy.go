package ports

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listen binds <guest>:<port> with SO_REUSEADDR (so a forward can be
// re-created while old connections linger in TIME_WAIT).
func (f *Forwarder) listen(port uint16, target netip.AddrPort) (*forward, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	network := "tcp4"
	if f.opts.GuestAddr.Is6() {
		network = "tcp6"
	}
	ln, err := lc.Listen(context.Background(), network, netip.AddrPortFrom(f.opts.GuestAddr, port).String())
	if err != nil {
		return nil, err
	}
	tl := ln.(*net.TCPListener)
	fw := &forward{ln: tl, inode: socketInode(tl)}
	fw.target.Store(&target)
	return fw, nil
}

// socketInode returns the inode the kernel reports for the socket in its
// listener table, or 0 if it cannot be read.
func socketInode(c syscall.Conn) uint32 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		return 0
	}
	return uint32(st.Ino)
}

// accept serves one forwarding listener until it is closed (listener gone
// or Stop).
func (f *Forwarder) accept(ctx context.Context, fw *forward) {
	defer f.wg.Done()
	var backoff time.Duration
	for {
		c, err := fw.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		f.nTotal.Add(1)
		pc := &conn{client: c}
		f.mu.Lock()
		stopped := ctx.Err() != nil
		if !stopped {
			f.conns[pc] = struct{}{}
			f.wg.Add(1)
		}
		f.mu.Unlock()
		if stopped {
			c.Close()
			return
		}
		f.nConns.Add(1)
		go f.serve(ctx, pc, *fw.target.Load())
	}
}

// conn is one forwarded connection.
type conn struct {
	mu       sync.Mutex
	client   *net.TCPConn
	upstream *net.TCPConn
	closed   bool
}

func (c *conn) setUpstream(u *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.upstream = u
	return true
}

// close tears both sides down; safe to call more than once and from Stop.
func (c *conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.client.Close()
	if c.upstream != nil {
		c.upstream.Close()
	}
}

func (f *Forwarder) serve(ctx context.Context, c *conn, target netip.AddrPort) {
	defer f.wg.Done()
	defer func() {
		c.close()
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		f.nConns.Add(-1)
	}()
	network := "tcp4"
	if target.Addr().Is6() {
		network = "tcp6"
	}
	d := net.Dialer{Timeout: f.opts.DialTimeout}
	u, err := d.DialContext(ctx, network, target.String())
	if err != nil {
		// Refused, reset during connect, or timed out: the client sees an
		// orderly close.
		f.nDialKO.Add(1)
		return
	}
	if !c.setUpstream(u.(*net.TCPConn)) {
		u.Close()
		return
	}
	pipe(c.client, c.upstream)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// pipe copies both directions until both have ended. EOF on one side is
// passed on as a half-close (FIN) and the other direction keeps running;
// an error on either side ends both, so nothing waits on a dead peer.
func pipe(a, b *net.TCPConn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	wg.Wait()
}

// copyHalf copies src to dst through a pooled buffer. The buffer (rather
// than TCPConn.ReadFrom's splice) keeps the copy in plain reads and writes,
// so backpressure is simply a blocked Write.
func copyHalf(dst, src *net.TCPConn) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	_, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
	if err != nil {
		// Abort both directions: the peer of src reset, or dst went away.
		src.Close()
		dst.Close()
		return
	}
	dst.CloseWrite()
}

// readerOnly and writerOnly hide ReadFrom/WriteTo so io.CopyBuffer uses the
// buffer.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }
