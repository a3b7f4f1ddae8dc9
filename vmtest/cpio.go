package vmtest

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// Initramfs is an in-memory tree written as a newc ("070701") cpio archive,
// the format the kernel unpacks into its rootfs.
type Initramfs struct {
	entries map[string]cpioEntry
}

type cpioEntry struct {
	mode         uint32 // type bits | permissions
	uid, gid     uint32
	data         []byte // file contents or symlink target
	rmaj, rmin   uint32 // device nodes
	fromFile     string // contents read at write time (large binaries)
	fromFileSize int64
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// NewInitramfs returns an empty tree.
func NewInitramfs() *Initramfs { return &Initramfs{entries: map[string]cpioEntry{}} }

func (f *Initramfs) parents(p string) {
	for d := path.Dir(p); d != "." && d != "/" && d != ""; d = path.Dir(d) {
		if _, ok := f.entries[d]; !ok {
			f.entries[d] = cpioEntry{mode: sIFDIR | 0o755}
		}
	}
}

func clean(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

// Dir adds a directory.
func (f *Initramfs) Dir(p string, perm uint32, uid, gid uint32) {
	p = clean(p)
	f.parents(p)
	f.entries[p] = cpioEntry{mode: sIFDIR | perm, uid: uid, gid: gid}
}

// File adds a regular file with the given contents.
func (f *Initramfs) File(p string, perm uint32, data []byte) {
	p = clean(p)
	f.parents(p)
	f.entries[p] = cpioEntry{mode: sIFREG | perm, data: data}
}

// CopyFile adds a regular file read from src when the archive is written.
func (f *Initramfs) CopyFile(p string, perm uint32, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	p = clean(p)
	f.parents(p)
	f.entries[p] = cpioEntry{mode: sIFREG | perm, fromFile: src, fromFileSize: st.Size()}
	return nil
}

// Symlink adds a symbolic link p -> target.
func (f *Initramfs) Symlink(p, target string) {
	p = clean(p)
	f.parents(p)
	f.entries[p] = cpioEntry{mode: sIFLNK | 0o777, data: []byte(target)}
}

// CharDev adds a character device node.
func (f *Initramfs) CharDev(p string, perm, major, minor uint32) {
	p = clean(p)
	f.parents(p)
	f.entries[p] = cpioEntry{mode: sIFCHR | perm, rmaj: major, rmin: minor}
}

// WriteTo writes the archive; parents come before children.
func (f *Initramfs) WriteTo(w io.Writer) (int64, error) {
	names := make([]string, 0, len(f.entries))
	for n := range f.entries {
		names = append(names, n)
	}
	sort.Strings(names) // "a" < "a/b": parents first
	cw := &countWriter{w: w}
	for i, n := range names {
		e := f.entries[n]
		size := int64(len(e.data))
		if e.fromFile != "" {
			size = e.fromFileSize
		}
		if err := writeHeader(cw, uint32(i+1), e, n, size); err != nil {
			return cw.n, err
		}
		if e.fromFile != "" {
			src, err := os.Open(e.fromFile)
			if err != nil {
				return cw.n, fmt.Errorf("initramfs: %w", err)
			}
			_, err = io.CopyN(cw, src, size)
			src.Close()
			if err != nil {
				return cw.n, fmt.Errorf("initramfs: copy %s: %w", e.fromFile, err)
			}
		} else if _, err := cw.Write(e.data); err != nil {
			return cw.n, err
		}
		if err := pad4(cw); err != nil {
			return cw.n, err
		}
	}
	if err := writeHeader(cw, 0, cpioEntry{}, "TRAILER!!!", 0); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

func writeHeader(cw *countWriter, ino uint32, e cpioEntry, name string, size int64) error {
	nlink := uint32(1)
	if e.mode&0o170000 == sIFDIR {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.mode, e.uid, e.gid, nlink, 0, size, 0, 0, e.rmaj, e.rmin, len(name)+1, 0)
	if _, err := io.WriteString(cw, hdr+name+"\x00"); err != nil {
		return err
	}
	return pad4(cw)
}

func pad4(cw *countWriter) error {
	if r := cw.n % 4; r != 0 {
		_, err := cw.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
