package files

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/fsmeta"
	"github.com/envd-go/envd/internal/fsuser"
	"github.com/envd-go/envd/internal/users"
)

// UploadEntry is one element of the POST /files response.
type UploadEntry struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Upload serves POST /files in the order of protocol.md §3.6.
func (h *Handler) Upload(w http.ResponseWriter, r *http.Request) {
	if !checkTypedParams(w, r) {
		return
	}
	st := h.opts.State
	if msg, ok := auth.CheckFileAccess(r, st, auth.OpWrite, time.Now()); !ok {
		apierror.Write(w, http.StatusUnauthorized, msg)
		return
	}
	gzipped, err := requestEncoding(r.Header.Get("Content-Encoding"))
	if err != nil {
		apierror.Write(w, http.StatusBadRequest, err.Error())
		return
	}
	u, err := auth.FileUser(r, st)
	if err != nil {
		apierror.Write(w, http.StatusUnauthorized, err.Error())
		return
	}
	meta, err := fsmeta.FromHeader(r.Header)
	if err != nil {
		apierror.Write(w, http.StatusBadRequest, "invalid metadata: "+err.Error())
		return
	}

	var body io.Reader = r.Body
	if gzipped {
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			apierror.Write(w, http.StatusBadRequest, "error decompressing request body: "+err.Error())
			return
		}
		defer gz.Close()
		body = &tagReader{r: gz, prefix: "error decompressing request body"}
	}

	up := &upload{h: h, user: u, meta: meta, contentLength: r.ContentLength}
	q := r.URL.Query()
	mediaType, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case mediaType == "application/octet-stream":
		if !q.Has("path") {
			apierror.Write(w, http.StatusBadRequest, "path query parameter is required for raw body upload")
			return
		}
		err = up.file(q.Get("path"), body, "error reading request body")
	case strings.HasPrefix(mediaType, "multipart/"):
		err = up.multipart(body, params["boundary"], q)
	default:
		err = errorf(http.StatusBadRequest, "unsupported content type: %s, expected multipart/form-data or application/octet-stream", r.Header.Get("Content-Type"))
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	out := up.done
	if out == nil {
		out = []UploadEntry{}
	}
	json.NewEncoder(w).Encode(out)
}

// requestEncoding reports whether the body is gzip; other codings are 400.
func requestEncoding(v string) (bool, error) {
	coding, _, _ := strings.Cut(v, ";")
	switch strings.ToLower(strings.TrimSpace(coding)) {
	case "", "identity":
		return false, nil
	case "gzip":
		return true, nil
	}
	return false, fmt.Errorf("error decompressing request body: unsupported Content-Encoding: %s, supported: [gzip]", v)
}

// upload is one POST /files request: its user, metadata and results.
type upload struct {
	h             *Handler
	user          *users.User
	meta          map[string]string
	contentLength int64
	done          []UploadEntry
}

func (up *upload) multipart(body io.Reader, boundary string, q map[string][]string) error {
	if boundary == "" {
		return errorf(http.StatusBadRequest, "error parsing multipart form: no multipart boundary param in Content-Type")
	}
	// multipart keeps a bufio.Reader it is given when it is big enough:
	// large reads instead of 4 KiB ones.
	mr := multipart.NewReader(bufio.NewReaderSize(body, copyBufSize), boundary)
	pathQuery, hasPath := "", false
	if v, ok := q["path"]; ok && len(v) > 0 {
		pathQuery, hasPath = v[0], true
	}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return readError(err, "error reading form")
		}
		if part.FormName() != "file" {
			part.Close()
			continue
		}
		target := pathQuery
		if !hasPath {
			// Part.FileName() drops directories; the raw parameter keeps them.
			_, params, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			target = params["filename"]
			if target == "" {
				return errorf(http.StatusBadRequest, "error getting multipart custom part file name: filename not found in Content-Disposition header")
			}
		}
		err = up.file(target, part, "error reading form")
		part.Close()
		if err != nil {
			return err
		}
	}
}

// file writes one uploaded file atomically: a temp file beside the
// target, renamed over it only when the whole body arrived. A failed or
// aborted upload leaves the old content and no temp file.
func (up *upload) file(reqPath string, src io.Reader, readPrefix string) error {
	u := up.user
	p, err := up.h.resolve(reqPath, u)
	if err != nil {
		return errorf(http.StatusBadRequest, "error expanding and resolving path '%s': %v", quote(reqPath), err)
	}
	for _, d := range up.done {
		if d.Path == p {
			msg := fmt.Sprintf("you cannot upload multiple files to the same path '%s' in one upload request, only the first specified file was uploaded", p)
			if len(up.done) > 1 {
				var others []string
				for _, o := range up.done {
					if o.Path != p {
						others = append(others, o.Path)
					}
				}
				msg += ", also the following files were uploaded: " + strings.Join(others, ", ")
			}
			return errorf(http.StatusBadRequest, "%s", msg)
		}
	}

	creds := fsuser.Of(u)
	var (
		final   string
		old     *unix.Stat_t
		tmp     *os.File
		tmpPath string
	)
	err = fsuser.Do(creds, func() error {
		if _, err := fsuser.MkdirAll(rawDir(p), u.UID, u.GID); err != nil {
			status := osStatus(err)
			if status == http.StatusBadRequest || errors.Is(err, fsuser.ErrNotDir) {
				status = http.StatusInternalServerError
			}
			return errorf(status, "error ensuring directories: %v", err)
		}
		// A final symlink stays a link: the file it points to is replaced.
		var err error
		if final, err = resolveFinal(p); err != nil {
			return errorf(osStatus(err), "error resolving path '%s': %v", p, err)
		}
		var st unix.Stat_t
		err = unix.Stat(final, &st)
		switch {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
			return errorf(http.StatusBadRequest, "path is a directory: %s", p)
		case err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG:
			return errorf(http.StatusBadRequest, "path is not a regular file: %s", p)
		case err == nil:
			// Replacing must be something the user could do in place. With
			// AT_EACCESS the kernel checks the thread's fsuid, not the real
			// uid, and a running binary does not fail with ETXTBSY.
			if err := unix.Faccessat(unix.AT_FDCWD, final, unix.W_OK, unix.AT_EACCESS); err != nil {
				return errorf(osStatus(err), "error opening file '%s': %v", p, &os.PathError{Op: "open", Path: final, Err: err})
			}
			old = &st
		case !errors.Is(err, unix.ENOENT):
			return errorf(osStatus(err), "error checking file '%s': %v", p, &os.PathError{Op: "stat", Path: final, Err: err})
		}
		tmpPath = rawDir(final) + "/.envd-upload-" + randomHex(8) + ".tmp"
		tmp, err = os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
		if err != nil {
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
				return errorf(http.StatusInsufficientStorage, "not enough inodes available: %v", err)
			}
			return errorf(osStatus(err), "error opening file '%s': %v", p, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmpPath)
		}
	}()

	if err := up.copy(tmp, src, readPrefix); err != nil {
		return err
	}
	fd := int(tmp.Fd())
	if old != nil {
		// Keep the replaced file's owner, mode and foreign xattrs. chown
		// first: it clears setuid/setgid, the chmod then restores them
		// (only for root: a user's write would have cleared them too).
		mode := old.Mode & 0o7777
		if !creds.IsRoot() {
			mode &^= unix.S_ISUID | unix.S_ISGID
		}
		if err := unix.Fchown(fd, int(old.Uid), int(old.Gid)); err != nil {
			return errorf(http.StatusInternalServerError, "error changing file ownership: %v", err)
		}
		if err := unix.Fchmod(fd, mode); err != nil {
			return errorf(http.StatusInternalServerError, "error changing file mode: %v", err)
		}
		copyForeignXattrs(final, fd)
	} else if err := unix.Fchown(fd, int(u.UID), int(u.GID)); err != nil {
		return errorf(http.StatusInternalServerError, "error changing file ownership: %v", err)
	}
	if err := fsmeta.Set(fd, up.meta); err != nil {
		switch {
		case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
			return errorf(http.StatusInsufficientStorage, "not enough space for file metadata: %v", err)
		case errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EOPNOTSUPP):
			up.h.opts.Logger.Warn("filesystem does not support xattrs, metadata skipped", "path", p)
		default:
			return errorf(http.StatusInternalServerError, "error writing file metadata: %v", err)
		}
	}
	var mr fsmeta.Reader
	meta := mr.Fd(fd)
	if err := tmp.Close(); err != nil {
		return up.writeError(err)
	}
	err = fsuser.Do(creds, func() error {
		if err := os.Rename(tmpPath, final); err != nil {
			return errorf(osStatus(err), "error replacing file '%s': %v", p, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	committed = true
	up.done = append(up.done, UploadEntry{Path: p, Name: filepath.Base(p), Type: "file", Metadata: meta})
	return nil
}

// copy streams src into dst, telling the client's read errors (400) from
// our write errors (507 on a full disk, else 500).
func (up *upload) copy(dst *os.File, src io.Reader, readPrefix string) error {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	tr := &tagReader{r: src, prefix: readPrefix}
	// Fill the whole buffer before each write: sockets hand out small
	// reads, the disk prefers few large writes.
	for {
		n, err := io.ReadFull(tr, *buf)
		if n > 0 {
			if _, werr := dst.Write((*buf)[:n]); werr != nil {
				return up.writeError(werr)
			}
		}
		switch {
		case err == nil:
			continue
		case err == io.EOF, err == io.ErrUnexpectedEOF:
			// Bare EOFs are the clean end of the body: tagReader wraps
			// every body error (a truncated one too) in a readErr.
			return nil
		}
		return readError(err, readPrefix)
	}
}

func (up *upload) writeError(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		if up.contentLength > 0 {
			return errorf(http.StatusInsufficientStorage, "attempted to write %d bytes: not enough disk space available", up.contentLength)
		}
		return errorf(http.StatusInsufficientStorage, "not enough disk space available")
	}
	return errorf(http.StatusInternalServerError, "error writing file: %v", err)
}

// readError turns a body read failure into a 400; a gzip failure keeps
// its own prefix.
func readError(err error, prefix string) error {
	var re *readErr
	if errors.As(err, &re) {
		err, prefix = re.err, re.prefix
	}
	return errorf(http.StatusBadRequest, "%s: %v", prefix, err)
}

type readErr struct {
	prefix string
	err    error
}

func (e *readErr) Error() string { return e.prefix + ": " + e.err.Error() }
func (e *readErr) Unwrap() error { return e.err }

// tagReader marks errors of the request body so they are not mistaken for
// disk errors.
type tagReader struct {
	r      io.Reader
	prefix string
}

func (t *tagReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		var re *readErr
		if !errors.As(err, &re) {
			err = &readErr{t.prefix, err}
		}
	}
	return n, err
}

// rawDir strips the last component without cleaning: "a/link/../b" must
// be resolved by the kernel, as the target itself will be.
func rawDir(p string) string {
	trimmed := strings.TrimRight(p, "/")
	if trimmed == "" && p != "" {
		return "/"
	}
	p = trimmed
	i := strings.LastIndexByte(p, '/')
	switch {
	case i < 0:
		return "."
	case i == 0:
		return "/"
	}
	return p[:i]
}

// resolveFinal follows a chain of symlinks at the last component (not in
// parents) and returns the path the data must go to.
func resolveFinal(p string) (string, error) {
	for range 40 {
		target, err := os.Readlink(p)
		if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, os.ErrNotExist) {
				return p, nil // not a symlink, or a new file
			}
			return "", err
		}
		if !filepath.IsAbs(target) {
			target = rawDir(p) + "/" + target
		}
		p = target
	}
	return "", &os.PathError{Op: "readlink", Path: p, Err: unix.ELOOP}
}

// copyForeignXattrs carries the replaced file's ACLs and other user.*
// xattrs to the new inode; the user.e2b.* set is replaced, not kept.
// Never security.* or trusted.*: a file capability copied as root onto
// content the user wrote would be an escalation. l*xattr: a symlink
// swapped in after the checks yields nothing.
func copyForeignXattrs(from string, fd int) {
	sz, err := unix.Llistxattr(from, nil)
	if err != nil || sz == 0 {
		return
	}
	names := make([]byte, sz)
	sz, err = unix.Llistxattr(from, names)
	if err != nil {
		return
	}
	for _, name := range strings.Split(strings.TrimRight(string(names[:sz]), "\x00"), "\x00") {
		keep := strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, fsmeta.Prefix) ||
			name == "system.posix_acl_access"
		if !keep {
			continue
		}
		n, err := unix.Lgetxattr(from, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, n)
		if n, err = unix.Lgetxattr(from, name, val); err == nil {
			unix.Fsetxattr(fd, name, val[:n], 0)
		}
	}
}
