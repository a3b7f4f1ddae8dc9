package ports

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
)

func TestParseProcNet(t *testing.T) {
	const tcp4 = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48 1 00000000413d98c1 100 0 0 10 0
   1: 0100007F:A719 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 50143 2 000000006371ce9f 100 0 0 10 0
   2: 0100007F:AB29 0100007F:8CFE 06 00000000:00000000 03:0000143E 00000000     0        0 0 3 0000000071d833c0
   3: 0200007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 100 0 0 10 0
`
	const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 901 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 902 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 903 1 0000000000000000 100 0 0 10 0
   3: 00000000000000000000000001000000:1F93 00000000000000000000000001000000:D000 01 00000000:00000000 00:00000000 00000000     0        0 904 1 0000000000000000 100 0 0 10 0
`
	tests := []struct {
		name string
		in   string
		want []socket
	}{
		{"tcp4", tcp4, []socket{
			{netip.MustParseAddr("0.0.0.0"), 2024, 48},
			{netip.MustParseAddr("127.0.0.1"), 42777, 50143},
			{netip.MustParseAddr("127.0.0.2"), 8080, 777},
		}},
		{"tcp6", tcp6, []socket{
			{netip.MustParseAddr("::1"), 8081, 901},
			{netip.MustParseAddr("::"), 22, 902},
			{netip.MustParseAddr("::ffff:127.0.0.1"), 8082, 903},
		}},
		{"header only", "  sl local\n", nil},
		{"empty", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcNet(nil, []byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v\nwant %v", got, tc.want)
			}
		})
	}
	if _, err := parseProcNet(nil, []byte("h\n 0: 0100007F-1F90 00000000:0000 0A a b c d e 5\n")); err == nil {
		t.Error("malformed address accepted")
	}
}

// TestSocketTables checks that both readers see the same real listeners,
// with the inode fstat reports for the socket.
func TestSocketTables(t *testing.T) {
	type lst struct {
		network, addr string
	}
	var want []socket
	for _, l := range []lst{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}, {"tcp4", "0.0.0.0:0"}, {"tcp4", "127.0.0.2:0"}} {
		ln, err := net.Listen(l.network, l.addr)
		if err != nil {
			t.Fatalf("listen %s: %v", l.addr, err)
		}
		t.Cleanup(func() { ln.Close() })
		ap := ln.Addr().(*net.TCPAddr).AddrPort()
		want = append(want, socket{addr: ap.Addr(), port: ap.Port(), inode: socketInode(ln.(*net.TCPListener))})
	}
	// A connected socket must not appear.
	c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(want[0].port))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	diag, err := newSockDiag()
	if err != nil {
		t.Fatalf("sock_diag: %v", err)
	}
	t.Cleanup(func() { diag.close() })
	for _, table := range []socketTable{diag, &procNet{root: "/proc/net"}} {
		t.Run(table.name(), func(t *testing.T) {
			got, err := table.listeners(nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range want {
				if w.inode == 0 {
					t.Fatalf("no inode for %v", w)
				}
				if !slices.Contains(got, w) {
					t.Errorf("listener %v missing from %v", w, got)
				}
			}
			for _, g := range got {
				if g.port == uint16(c.LocalAddr().(*net.TCPAddr).Port) {
					t.Errorf("connected socket %v listed as listener", g)
				}
			}
		})
	}
}

// BenchmarkScan is the cost of one listener-table read (five listeners
// plus whatever the host has).
func BenchmarkScan(b *testing.B) {
	for range 5 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
	}
	diag, err := newSockDiag()
	if err != nil {
		b.Fatal(err)
	}
	defer diag.close()
	for _, table := range []socketTable{diag, &procNet{root: "/proc/net"}} {
		b.Run(table.name(), func(b *testing.B) {
			var buf []socket
			b.ReportAllocs()
			for b.Loop() {
				if buf, err = table.listeners(buf[:0]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(buf)), "listeners")
		})
	}
}
