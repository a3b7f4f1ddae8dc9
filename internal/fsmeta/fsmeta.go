// Package fsmeta stores file metadata as user.e2b.<key> extended
// attributes: validation of X-Metadata-* upload headers, writing them and
// reading them back for EntryInfo and upload responses.
package fsmeta

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Prefix of every metadata xattr name.
const Prefix = "user.e2b."

// HeaderPrefix of upload request headers that carry metadata.
const HeaderPrefix = "X-Metadata-"

// Limits from the e2b contract: xattr names are at most 255 bytes
// (255 - len(Prefix) = 246) and the whole set stays within one 4 KiB block.
const (
	MaxKeyLen   = 246
	MaxTotalLen = 4096
	entryCost   = 9 // len(Prefix), counted per entry
)

// FromHeader collects and validates X-Metadata-<key> headers. Keys are
// lowercased; only the first value of a repeated header counts. The error
// text follows "invalid metadata: ".
func FromHeader(h http.Header) (map[string]string, error) {
	var m map[string]string
	total := 0
	for name, vals := range h {
		if len(name) < len(HeaderPrefix) || !strings.EqualFold(name[:len(HeaderPrefix)], HeaderPrefix) || len(vals) == 0 {
			continue
		}
		key := strings.ToLower(name[len(HeaderPrefix):])
		val := vals[0]
		if err := validate(key, val); err != nil {
			return nil, err
		}
		if m == nil {
			m = map[string]string{}
		}
		m[key] = val
		total += entryCost + len(key) + len(val)
	}
	if total > MaxTotalLen {
		return nil, fmt.Errorf("total metadata size %d exceeds %d bytes", total, MaxTotalLen)
	}
	return m, nil
}

func validate(key, val string) error {
	switch {
	case key == "":
		return errors.New("metadata key must not be empty")
	case len(key) > MaxKeyLen:
		return fmt.Errorf("metadata key %q is longer than %d bytes", key[:32]+"...", MaxKeyLen)
	case !printable(key):
		return fmt.Errorf("metadata key %q must be printable ASCII", key)
	case !printable(val):
		return fmt.Errorf("metadata value for key %q must be printable ASCII", key)
	}
	return nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Set writes m as xattrs on the open file fd (which has none of ours yet).
func Set(fd int, m map[string]string) error {
	for k, v := range m {
		if err := unix.Fsetxattr(fd, Prefix+k, []byte(v), 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", Prefix+k, err)
		}
	}
	return nil
}

// Reader reads metadata xattrs, reusing its buffers across calls (one per
// request, e.g. a whole ListDir).
type Reader struct {
	names []byte
	val   []byte
}

// Path returns the metadata of path, following symlinks; nil when none or
// on any error (xattr errors never fail a stat).
func (r *Reader) Path(path string) map[string]string {
	return r.read(
		func(b []byte) (int, error) { return unix.Listxattr(path, b) },
		func(name string, b []byte) (int, error) { return unix.Getxattr(path, name, b) })
}

// Fd is Path for an open file.
func (r *Reader) Fd(fd int) map[string]string {
	return r.read(
		func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(name string, b []byte) (int, error) { return unix.Fgetxattr(fd, name, b) })
}

func (r *Reader) read(list func([]byte) (int, error), get func(string, []byte) (int, error)) map[string]string {
	if r.names == nil {
		r.names = make([]byte, 1024)
	}
	n, err := list(r.names)
	if errors.Is(err, unix.ERANGE) {
		if n, err = list(nil); err == nil {
			r.names = make([]byte, n+256)
			n, err = list(r.names)
		}
	}
	if err != nil || n == 0 {
		return nil
	}
	var m map[string]string
	for names := r.names[:n]; len(names) > 0; {
		i := bytes.IndexByte(names, 0)
		if i < 0 {
			break
		}
		name := names[:i]
		names = names[i+1:]
		if !bytes.HasPrefix(name, []byte(Prefix)) {
			continue
		}
		key := string(name[len(Prefix):])
		val, ok := r.value(get, string(name))
		if !ok || key == "" || !utf8.ValidString(key) || !utf8.ValidString(val) {
			continue
		}
		if m == nil {
			m = map[string]string{}
		}
		m[key] = val
	}
	return m
}

func (r *Reader) value(get func(string, []byte) (int, error), name string) (string, bool) {
	if r.val == nil {
		r.val = make([]byte, 4096)
	}
	n, err := get(name, r.val)
	if errors.Is(err, unix.ERANGE) {
		if n, err = get(name, nil); err == nil {
			r.val = make([]byte, n+64)
			n, err = get(name, r.val)
		}
	}
	if err != nil {
		return "", false
	}
	return string(r.val[:n]), true
}
