package lifecycle

import (
	"context"
	"net/http/httptrace"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

func withConnTrace(ctx context.Context, reused *atomic.Bool) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused.Store(i.Reused) },
	})
}

func getsockoptInt(fd int) (int, error) {
	return unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
}
