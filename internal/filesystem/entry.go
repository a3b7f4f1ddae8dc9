package filesystem

import (
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/envd-go/envd/gen/filesystem"
	"github.com/envd-go/envd/internal/fsmeta"
	"github.com/envd-go/envd/internal/users"
)

// entryBuilder builds EntryInfo (protocol.md §5.3). One per request: it
// caches the id→name maps and xattr buffers across entries.
type entryBuilder struct {
	names users.Names
	meta  fsmeta.Reader
	perms map[uint32]string // st_mode → ls-style text, shared by entries
}

func (b *entryBuilder) permissions(mode uint32) string {
	if s, ok := b.perms[mode]; ok {
		return s
	}
	if b.perms == nil {
		b.perms = map[uint32]string{}
	}
	s := fileMode(mode).String()
	b.perms[mode] = s
	return s
}

// build returns the EntryInfo of p, addressed as p (a final symlink is not
// followed for name/size/permissions). The error is the lstat error.
func (b *entryBuilder) build(p string) (*pb.EntryInfo, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	return b.fromStat(p, &st), nil
}

func (b *entryBuilder) fromStat(p string, st *unix.Stat_t) *pb.EntryInfo {
	e := &pb.EntryInfo{
		Name:        filepath.Base(p),
		Path:        p,
		Size:        st.Size,
		Permissions: b.permissions(st.Mode),
		Owner:       b.names.UserName(st.Uid),
		Group:       b.names.GroupName(st.Gid),
	}
	if st.Mtim.Sec != 0 || st.Mtim.Nsec != 0 {
		e.ModifiedTime = timestamppb.New(time.Unix(st.Mtim.Sec, st.Mtim.Nsec))
	}
	kind := st.Mode
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		target, err := filepath.EvalSymlinks(p)
		if err != nil {
			target = p
		}
		e.SymlinkTarget = &target
		var tst unix.Stat_t
		if err := unix.Stat(p, &tst); err == nil {
			kind = tst.Mode
		} else {
			kind = 0 // dangling: unspecified type, mode 0
		}
	}
	e.Mode = kind & 0o777
	switch kind & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type = pb.FileType_FILE_TYPE_FILE
	case unix.S_IFDIR:
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	}
	e.Metadata = b.meta.Path(p)
	return e
}

// fileMode converts a raw st_mode the way os.Lstat does, so String() gives
// Go's ls-style text ("drwxr-xr-x", "Lrwxrwxrwx", "dtrwxrwxrwx").
func fileMode(m uint32) os.FileMode {
	mode := os.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFBLK:
		mode |= os.ModeDevice
	case unix.S_IFCHR:
		mode |= os.ModeDevice | os.ModeCharDevice
	case unix.S_IFDIR:
		mode |= os.ModeDir
	case unix.S_IFIFO:
		mode |= os.ModeNamedPipe
	case unix.S_IFLNK:
		mode |= os.ModeSymlink
	case unix.S_IFSOCK:
		mode |= os.ModeSocket
	}
	if m&unix.S_ISGID != 0 {
		mode |= os.ModeSetgid
	}
	if m&unix.S_ISUID != 0 {
		mode |= os.ModeSetuid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= os.ModeSticky
	}
	return mode
}
