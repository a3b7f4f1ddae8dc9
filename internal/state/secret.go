package state

import (
	"crypto/subtle"
	"os"

	"golang.org/x/sys/unix"
)

// tokenCompare is the comparison every token check goes through; a package
// variable so tests can assert it is the constant-time one.
var tokenCompare = subtle.ConstantTimeCompare

// secret holds the access token outside the Go heap: in an anonymous mapping
// that is mlocked (never swapped) and marked MADV_DONTDUMP (left out of core
// dumps). When mmap is not possible the bytes live on the heap instead.
// Callers hold State.mu.
type secret struct {
	page []byte // the mapping; nil when heap-backed
	buf  []byte // page[:n] or a heap slice
	set  bool
}

func (s *secret) store(b []byte) {
	s.wipe()
	if b == nil {
		return
	}
	s.set = true
	if len(b) == 0 {
		s.buf = []byte{}
		return
	}
	if len(s.page) < len(b) {
		s.unmap()
		s.page = mapSecretPage(len(b))
	}
	if s.page == nil {
		s.buf = append([]byte(nil), b...)
		return
	}
	s.buf = s.page[:copy(s.page, b)]
}

// wipe zeroes the current token and marks it unset; the page stays mapped
// for the next token.
func (s *secret) wipe() {
	clear(s.buf)
	s.buf, s.set = nil, false
}

func (s *secret) unmap() {
	if s.page != nil {
		clear(s.page)
		unix.Munlock(s.page)
		unix.Munmap(s.page)
		s.page = nil
	}
}

func (s *secret) equals(candidate []byte) bool {
	return s.set && tokenCompare(s.buf, candidate) == 1
}

// locked reports whether the token lives in a locked, undumpable page.
func (s *secret) locked() bool { return s.page != nil && s.set }

func mapSecretPage(n int) []byte {
	ps := os.Getpagesize()
	size := (n + ps - 1) / ps * ps
	p, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil
	}
	// Both are best effort: RLIMIT_MEMLOCK may be tiny for non-root runs.
	_ = unix.Mlock(p)
	_ = unix.Madvise(p, unix.MADV_DONTDUMP)
	return p
}
