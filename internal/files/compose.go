package files

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/fsuser"
	"github.com/envd-go/envd/internal/users"
)

type composeRequest struct {
	SourcePaths []string `json:"source_paths"`
	Destination string   `json:"destination"`
	Username    *string  `json:"username"`
}

// maxComposeBody bounds the JSON request; it only lists paths.
const maxComposeBody = 1 << 20

// Compose serves POST /files/compose (protocol.md §3.7): concatenate the
// sources into a temp file beside the destination with in-kernel copies,
// rename it over the destination, then delete the sources.
func (h *Handler) Compose(w http.ResponseWriter, r *http.Request) {
	var req composeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxComposeBody)).Decode(&req); err != nil {
		apierror.Write(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	if len(req.SourcePaths) == 0 {
		apierror.Write(w, http.StatusBadRequest, "source_paths must not be empty")
		return
	}
	if req.Destination == "" {
		apierror.Write(w, http.StatusBadRequest, "destination is required")
		return
	}
	name := h.opts.State.DefaultUser()
	if req.Username != nil {
		name = *req.Username
	}
	u, err := users.Lookup(name)
	if err != nil {
		apierror.Write(w, http.StatusUnauthorized, fmt.Sprintf("error looking up user '%s': %v", name, err))
		return
	}
	dst, err := h.resolve(req.Destination, u)
	if err != nil {
		apierror.Write(w, http.StatusBadRequest, "error resolving destination path: "+err.Error())
		return
	}
	srcs := make([]string, len(req.SourcePaths))
	for i, s := range req.SourcePaths {
		if srcs[i], err = h.resolve(s, u); err != nil {
			apierror.Write(w, http.StatusBadRequest, fmt.Sprintf("error resolving source path %q: %v", s, err))
			return
		}
		if srcs[i] == dst {
			apierror.Write(w, http.StatusBadRequest, fmt.Sprintf("source path %q cannot be the same as destination", s))
			return
		}
	}
	if err := fsuser.Do(fsuser.Of(u), func() error { return compose(u, dst, srcs, req.SourcePaths) }); err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(UploadEntry{Path: dst, Name: filepath.Base(dst), Type: "file"})
}

// compose runs with the user's credentials.
func compose(u *users.User, dst string, srcs, given []string) error {
	for i, s := range srcs {
		fi, err := os.Stat(s)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return errorf(http.StatusNotFound, "source file not found: %s", given[i])
		case err != nil:
			return errorf(osStatus(err), "error checking source file %s: %v", given[i], err)
		case !fi.Mode().IsRegular():
			return errorf(http.StatusBadRequest, "source path is not a regular file: %s", given[i])
		}
	}
	if _, err := fsuser.MkdirAll(filepath.Dir(dst), u.UID, u.GID); err != nil {
		return errorf(http.StatusInternalServerError, "error ensuring directories: %v", err)
	}
	tmpPath := dst + ".e2b-compose." + randomHex(16) + ".tmp"
	tmp, err := os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return spaceOr(err, "error creating temp file")
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmpPath)
		}
	}()
	for i, s := range srcs {
		if err := appendFile(tmp, s); err != nil {
			return spaceOr(err, fmt.Sprintf("error appending %s", given[i]))
		}
	}
	if err := tmp.Close(); err != nil {
		return spaceOr(err, "error closing temp file")
	}
	if err := os.Rename(tmpPath, dst); err != nil {
		return errorf(osStatus(err), "error renaming temp file: %v", err)
	}
	committed = true
	for _, s := range srcs {
		os.Remove(s) // best effort, as the originals do
	}
	return nil
}

func spaceOr(err error, what string) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return errorf(http.StatusInsufficientStorage, "not enough disk space available")
	}
	return errorf(osStatus(err), "%s: %v", what, err)
}

// appendFile copies src to dst's offset with copy_file_range (extents can
// be shared, nothing passes through user space), falling back to a plain
// copy where the kernel cannot (other filesystem, special files).
func appendFile(dst *os.File, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		n, err := unix.CopyFileRange(int(f.Fd()), nil, int(dst.Fd()), nil, 1<<30, 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				// Offsets were advanced by what was copied; continue from there.
				buf := bufPool.Get().(*[]byte)
				defer bufPool.Put(buf)
				_, err = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{f}, *buf)
				return err
			}
			return err
		}
		if n == 0 {
			return nil
		}
	}
}
