package pid1

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A few rtnetlink requests, enough to bring up a static guest network
// without depending on an ip binary in the image.

func setLinkUp(index int) error {
	var b nlBuilder
	b.header(unix.RTM_NEWLINK, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ifi := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(index), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	b.raw(unsafe.Slice((*byte)(unsafe.Pointer(&ifi)), unix.SizeofIfInfomsg))
	if err := nlRequest(b.bytes()); err != nil {
		return fmt.Errorf("set link %d up: %w", index, err)
	}
	return nil
}

func addAddr(index int, p netip.Prefix) error {
	var b nlBuilder
	b.header(unix.RTM_NEWADDR, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	ifa := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(index)}
	b.raw(unsafe.Slice((*byte)(unsafe.Pointer(&ifa)), unix.SizeofIfAddrmsg))
	a := p.Addr().As4()
	b.attr(unix.IFA_LOCAL, a[:])
	b.attr(unix.IFA_ADDRESS, a[:])
	if p.Bits() < 31 {
		bc := broadcast(p).As4()
		b.attr(unix.IFA_BROADCAST, bc[:])
	}
	err := nlRequest(b.bytes())
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("add address %s: %w", p, err)
	}
	return nil
}

func addDefaultRoute(index int, gw netip.Addr) error {
	var b nlBuilder
	b.header(unix.RTM_NEWROUTE, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	rt := unix.RtMsg{Family: unix.AF_INET, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT, Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST}
	b.raw(unsafe.Slice((*byte)(unsafe.Pointer(&rt)), unix.SizeofRtMsg))
	g := gw.As4()
	b.attr(unix.RTA_GATEWAY, g[:])
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	b.attr(unix.RTA_OIF, oif)
	err := nlRequest(b.bytes())
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("add default route via %s: %w", gw, err)
	}
	return nil
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

func setHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	return nil
}

type nlBuilder struct{ buf []byte }

func (b *nlBuilder) header(typ uint16, flags uint16) {
	h := unix.NlMsghdr{Type: typ, Flags: flags, Seq: 1}
	b.buf = append(b.buf, unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofNlMsghdr)...)
}

func (b *nlBuilder) raw(p []byte) { b.buf = append(b.buf, p...); b.pad() }

func (b *nlBuilder) attr(typ uint16, data []byte) {
	a := unix.RtAttr{Len: uint16(unix.SizeofRtAttr + len(data)), Type: typ}
	b.buf = append(b.buf, unsafe.Slice((*byte)(unsafe.Pointer(&a)), unix.SizeofRtAttr)...)
	b.buf = append(b.buf, data...)
	b.pad()
}

func (b *nlBuilder) pad() {
	for len(b.buf)%4 != 0 {
		b.buf = append(b.buf, 0)
	}
}

func (b *nlBuilder) bytes() []byte {
	binary.NativeEndian.PutUint32(b.buf[0:4], uint32(len(b.buf)))
	return b.buf
}

// nlRequest sends one request and waits for its ACK (an NLMSG_ERROR with
// error 0) or error.
func nlRequest(req []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}
