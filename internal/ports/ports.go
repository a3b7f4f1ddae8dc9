// Package ports makes TCP servers that listen only on loopback reachable on
// the guest's external address. A scanner reads the kernel's table of
// listening sockets every interval; for each port that has a loopback-only
// listener (127.0.0.1 or ::1) an in-process proxy listens on
// <guest address>:<port> and forwards each connection to the loopback
// listener.
package ports

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultGuestAddr is the address the host side connects to.
var DefaultGuestAddr = netip.MustParseAddr("169.254.0.21")

// Options configure a Forwarder.
type Options struct {
	// GuestAddr is where forwarded ports are exposed (DefaultGuestAddr if
	// zero). It must not be a loopback or unspecified address, so a
	// forwarding listener can never be mistaken for a loopback one.
	GuestAddr netip.Addr
	// Interval between scans (1 s if zero).
	Interval time.Duration
	// DialTimeout bounds the connect to the loopback listener (5 s if zero).
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// Stats are the forwarder's counters.
type Stats struct {
	Forwarded        int    // ports currently forwarded
	Connections      int64  // live forwarded connections
	ConnectionsTotal uint64 // connections accepted since start-up
	DialFailures     uint64 // connections closed because the loopback target refused, reset or timed out
	Scans            uint64 // completed scans
}

// Forwarder mirrors loopback-only listeners onto the guest address.
//
// Stop closes every forwarding listener and every live connection (as the
// e2b/wrenn originals do when they kill socat); Start begins again with a
// fresh scan. When a single loopback listener disappears, only its
// forwarding listener is closed: connections already accepted run to their
// natural end, because the target may still be serving them.
type Forwarder struct {
	opts Options
	log  *slog.Logger

	life    sync.Mutex // serialises Start and Stop (Stop holds it until all is closed)
	mu      sync.Mutex // guards cancel, done, conns and ports
	cancel  context.CancelFunc
	done    chan struct{}
	ports   []uint16 // forwarded ports after the last scan, sorted
	conns   map[*conn]struct{}
	nForw   atomic.Int64
	nConns  atomic.Int64
	nTotal  atomic.Uint64
	nDialKO atomic.Uint64
	nScans  atomic.Uint64
	wg      sync.WaitGroup // accept loops and connection handlers
}

// New validates the options and returns a stopped Forwarder.
func New(o Options) (*Forwarder, error) {
	if !o.GuestAddr.IsValid() {
		o.GuestAddr = DefaultGuestAddr
	}
	o.GuestAddr = o.GuestAddr.Unmap()
	if o.GuestAddr.IsLoopback() || o.GuestAddr.IsUnspecified() {
		return nil, fmt.Errorf("ports: guest address %s must not be loopback or unspecified", o.GuestAddr)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Forwarder{opts: o, log: o.Logger.With("logger", "port-forwarder"), conns: map[*conn]struct{}{}}, nil
}

// Start scans immediately and then every interval until Stop. Starting a
// running Forwarder does nothing.
func (f *Forwarder) Start() {
	f.life.Lock()
	defer f.life.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go f.run(ctx, f.done)
}

// Stop ends scanning, closes all forwarding listeners and live
// connections, and waits for every goroutine. Safe to call when stopped.
func (f *Forwarder) Stop() {
	f.life.Lock()
	defer f.life.Unlock()
	f.mu.Lock()
	cancel, done := f.cancel, f.done
	f.cancel, f.done = nil, nil
	f.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	f.mu.Lock()
	for c := range f.conns {
		c.close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// Stats returns the current counters.
func (f *Forwarder) Stats() Stats {
	return Stats{
		Forwarded:        int(f.nForw.Load()),
		Connections:      f.nConns.Load(),
		ConnectionsTotal: f.nTotal.Load(),
		DialFailures:     f.nDialKO.Load(),
		Scans:            f.nScans.Load(),
	}
}

// forward is one forwarded port.
type forward struct {
	ln     *net.TCPListener
	inode  uint32
	target atomic.Pointer[netip.AddrPort] // loopback listener to dial
}

func (f *Forwarder) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	table, err := openSocketTable()
	if err != nil {
		f.log.Info("sock_diag unavailable (no inet_diag in the kernel?), reading /proc/net/tcp instead", "error", err)
	}
	defer func() { table.close() }()

	s := scanState{forwards: map[uint16]*forward{}, failed: map[uint16]bool{}}
	defer func() {
		for port, fw := range s.forwards {
			fw.ln.Close()
			delete(s.forwards, port)
		}
		f.setPorts(nil)
	}()
	t := time.NewTicker(f.opts.Interval)
	defer t.Stop()
	var buf []socket
	for {
		buf, err = table.listeners(buf[:0])
		if _, nl := table.(*sockDiag); err != nil && nl {
			f.log.Warn("sock_diag failed, reading /proc/net/tcp from now on", "error", err)
			table.close()
			table = newProcNet()
			buf, err = table.listeners(buf[:0])
		}
		if err != nil {
			if !s.scanFailing {
				f.log.Error("scan listening sockets", "source", table.name(), "error", err)
			}
			s.scanFailing = true
		} else {
			s.scanFailing = false
			f.reconcile(ctx, &s, buf)
			f.nScans.Add(1)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scanState is owned by the scan goroutine.
type scanState struct {
	forwards    map[uint16]*forward
	failed      map[uint16]bool // bind failure already logged for this port
	addrMissing bool            // EADDRNOTAVAIL already logged
	scanFailing bool
	want        map[uint16]netip.AddrPort
	blocked     map[uint16]bool
}

// reconcile starts and stops forwards so that exactly the ports with a
// loopback-only listener are forwarded.
func (f *Forwarder) reconcile(ctx context.Context, s *scanState, socks []socket) {
	guest := f.opts.GuestAddr
	if s.want == nil {
		s.want, s.blocked = map[uint16]netip.AddrPort{}, map[uint16]bool{}
	}
	clear(s.want)
	clear(s.blocked)
	for _, k := range socks {
		a := k.addr.Unmap()
		if k.addr.Is4In6() && a.IsLoopback() {
			continue // ::ffff:127.0.0.1 is not forwarded (as in e2b/wrenn)
		}
		switch {
		case a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || a == netip.IPv6Loopback():
			// Prefer the IPv4 listener when both families listen on the port.
			if cur, ok := s.want[k.port]; !ok || (a.Is4() && !cur.Addr().Is4()) {
				s.want[k.port] = netip.AddrPortFrom(a, k.port)
			}
		case a.IsUnspecified() || a == guest:
			// Reachable already, unless it is our own forwarding listener.
			if fw := s.forwards[k.port]; fw != nil && a == guest && (fw.inode == k.inode || fw.inode == 0) {
				continue
			}
			s.blocked[k.port] = true
		}
	}
	for port := range s.blocked {
		delete(s.want, port)
	}

	for port, fw := range s.forwards {
		target, ok := s.want[port]
		if !ok {
			f.log.Info("stop forwarding", "port", port)
			fw.ln.Close()
			delete(s.forwards, port)
			continue
		}
		if *fw.target.Load() != target {
			fw.target.Store(&target)
		}
	}
	for port := range s.failed {
		if _, ok := s.want[port]; !ok {
			delete(s.failed, port) // log again if it comes back and fails
		}
	}
	for port, target := range s.want {
		if _, ok := s.forwards[port]; ok {
			continue
		}
		fw, err := f.listen(port, target)
		if err != nil {
			switch {
			case errors.Is(err, syscall.EADDRNOTAVAIL):
				if !s.addrMissing {
					f.log.Warn("guest address not assigned to any interface; retrying on every scan", "guest_address", guest.String(), "error", err)
					s.addrMissing = true
				}
			case !s.failed[port]:
				f.log.Warn("cannot forward port; retrying on later scans", "port", port, "error", err)
			}
			s.failed[port] = true
			continue
		}
		if s.failed[port] {
			f.log.Info("forwarding after earlier failure", "port", port)
			delete(s.failed, port)
		} else {
			f.log.Info("forwarding port", "port", port, "target", target.String())
		}
		s.addrMissing = false
		s.forwards[port] = fw
		f.wg.Add(1)
		go f.accept(ctx, fw)
	}
	f.setPorts(s.forwards)
}

func (f *Forwarder) setPorts(m map[uint16]*forward) {
	f.nForw.Store(int64(len(m)))
	f.mu.Lock()
	defer f.mu.Unlock()
	same := len(m) == len(f.ports)
	for _, p := range f.ports {
		if _, ok := m[p]; !ok {
			same = false
			break
		}
	}
	if same {
		return // the common idle case: no allocation
	}
	f.ports = make([]uint16, 0, len(m))
	for p := range m {
		f.ports = append(f.ports, p)
	}
	slices.Sort(f.ports)
}

// Ports returns the ports forwarded after the last scan, in order.
func (f *Forwarder) Ports() []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ports)
}
