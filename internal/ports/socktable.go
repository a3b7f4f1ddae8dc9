package ports

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// socket is one TCP socket in LISTEN state.
type socket struct {
	addr  netip.Addr
	port  uint16
	inode uint32
}

// socketTable lists the TCP listeners of the current network namespace.
type socketTable interface {
	// listeners appends every LISTEN socket to dst and returns it.
	listeners(dst []socket) ([]socket, error)
	close() error
	name() string
}

const tcpListen = 10 // TCP_LISTEN in include/net/tcp_states.h

// sockDiag reads listeners with one NETLINK_SOCK_DIAG dump per family,
// filtered by the kernel to LISTEN, so an idle scan costs a few syscalls
// however many connections the guest has.
type sockDiag struct {
	fd  int
	seq uint32
	buf []byte
}

// Sizes of the kernel structs (include/uapi/linux/inet_diag.h).
const (
	sizeofDiagSockID = 48 // sport, dport, src[4], dst[4], if, cookie[2]
	sizeofDiagReqV2  = 8 + sizeofDiagSockID
	sizeofDiagMsg    = 4 + sizeofDiagSockID + 20
)

func newSockDiag() (*sockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("ports: netlink sock_diag socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ports: bind netlink socket: %w", err)
	}
	d := &sockDiag{fd: fd, buf: make([]byte, 32<<10)}
	// Probe once so a kernel without inet_diag is detected at start-up and
	// the caller can fall back to /proc.
	if _, err := d.listeners(nil); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return d, nil
}

func (d *sockDiag) name() string { return "netlink" }

func (d *sockDiag) close() error { return unix.Close(d.fd) }

func (d *sockDiag) listeners(dst []socket) ([]socket, error) {
	var err error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if dst, err = d.dump(dst, family); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

func (d *sockDiag) dump(dst []socket, family uint8) ([]socket, error) {
	d.seq++
	var req [unix.NLMSG_HDRLEN + sizeofDiagReqV2]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], d.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpListen)
	if err := unix.Sendto(d.fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return dst, fmt.Errorf("ports: sock_diag request: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return dst, fmt.Errorf("ports: sock_diag receive: %w", err)
		}
		b := d.buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			mlen := int(ne.Uint32(b[0:]))
			typ := ne.Uint16(b[4:])
			seq := ne.Uint32(b[8:])
			if mlen < unix.NLMSG_HDRLEN || mlen > len(b) {
				return dst, errors.New("ports: malformed sock_diag message")
			}
			msg := b[unix.NLMSG_HDRLEN:mlen]
			b = b[min(nlmAlign(mlen), len(b)):]
			if seq != d.seq {
				continue // a reply to an earlier, abandoned request
			}
			switch typ {
			case unix.NLMSG_DONE:
				return dst, nil
			case unix.NLMSG_ERROR:
				if len(msg) >= 4 {
					if errno := -int32(ne.Uint32(msg)); errno != 0 {
						return dst, fmt.Errorf("ports: sock_diag: %w", unix.Errno(errno))
					}
				}
				return dst, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if s, ok := parseDiagMsg(msg); ok {
					dst = append(dst, s)
				}
			}
		}
	}
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// parseDiagMsg decodes an inet_diag_msg. Ports and addresses are in network
// byte order; the inode is host order.
func parseDiagMsg(m []byte) (socket, bool) {
	if len(m) < sizeofDiagMsg || m[1] != tcpListen {
		return socket{}, false
	}
	id := m[4 : 4+sizeofDiagSockID]
	s := socket{
		port:  binary.BigEndian.Uint16(id[0:]),
		inode: binary.NativeEndian.Uint32(m[4+sizeofDiagSockID+16:]),
	}
	switch m[0] {
	case unix.AF_INET:
		s.addr = netip.AddrFrom4([4]byte(id[4:8]))
	case unix.AF_INET6:
		s.addr = netip.AddrFrom16([16]byte(id[4:20]))
	default:
		return socket{}, false
	}
	return s, true
}

// procNet reads /proc/net/tcp and /proc/net/tcp6: the fallback when the
// kernel has no inet_diag (the whole table is formatted each scan).
type procNet struct {
	root string // "/proc/net"
	buf  []byte
}

func (p *procNet) name() string { return "procfs" }

func (p *procNet) close() error { return nil }

func (p *procNet) listeners(dst []socket) ([]socket, error) {
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := readInto(p.root+"/"+f, p.buf[:0])
		p.buf = b[:0]
		if err != nil {
			if f == "tcp6" && errors.Is(err, os.ErrNotExist) {
				continue // kernel without IPv6
			}
			return dst, fmt.Errorf("ports: %w", err)
		}
		if dst, err = parseProcNet(dst, b); err != nil {
			return dst, fmt.Errorf("ports: %s: %w", f, err)
		}
	}
	return dst, nil
}

func readInto(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return buf, err
	}
	defer f.Close()
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// parseProcNet parses the /proc/net/tcp{,6} format: after a header line,
// "sl local rem st tx:rx tr:when retr uid timeout inode ..." where local is
// hex address (32-bit words in host order) ":" hex port.
func parseProcNet(dst []socket, b []byte) ([]socket, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 512), 4096)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := bytes.Fields(sc.Bytes())
		if len(f) < 10 {
			continue
		}
		if st, err := strconv.ParseUint(string(f[3]), 16, 8); err != nil || st != tcpListen {
			continue
		}
		ha, hp, ok := bytes.Cut(f[1], []byte(":"))
		if !ok {
			return dst, fmt.Errorf("bad local address %q", f[1])
		}
		port, err := strconv.ParseUint(string(hp), 16, 16)
		if err != nil {
			return dst, fmt.Errorf("bad port %q", hp)
		}
		addr, err := parseProcAddr(ha)
		if err != nil {
			return dst, err
		}
		inode, err := strconv.ParseUint(string(f[9]), 10, 32)
		if err != nil {
			return dst, fmt.Errorf("bad inode %q", f[9])
		}
		dst = append(dst, socket{addr: addr, port: uint16(port), inode: uint32(inode)})
	}
	return dst, sc.Err()
}

func parseProcAddr(h []byte) (netip.Addr, error) {
	raw := make([]byte, hex.DecodedLen(len(h)))
	if _, err := hex.Decode(raw, h); err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, fmt.Errorf("bad address %q", h)
	}
	// The kernel prints each 32-bit word with %08X of its in-memory value,
	// so on little-endian hosts the bytes of every word come out reversed.
	var out [16]byte
	for w := 0; w < len(raw); w += 4 {
		binary.NativeEndian.PutUint32(out[w:], binary.BigEndian.Uint32(raw[w:]))
	}
	if len(raw) == 4 {
		return netip.AddrFrom4([4]byte(out[:4])), nil
	}
	return netip.AddrFrom16(out), nil
}

// openSocketTable prefers sock_diag and falls back to /proc/net.
func openSocketTable() (socketTable, error) {
	d, err := newSockDiag()
	if err == nil {
		return d, nil
	}
	return newProcNet(), err
}

func newProcNet() *procNet { return &procNet{root: "/proc/net", buf: make([]byte, 0, 16<<10)} }
