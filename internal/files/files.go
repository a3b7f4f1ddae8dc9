// Package files serves GET /files (streaming download, gzip, ranges),
// POST /files (atomic streaming upload, multipart or raw, gzip bodies,
// metadata) and POST /files/compose, with the requesting user's rights.
//
// Where we differ from e2b on purpose:
//   - Every file operation runs with the user's fsuid/fsgid (package
//     fsuser): what the kernel refuses that user is 403.
//   - Uploads are atomic: a temp file ".envd-upload-<hex>.tmp" beside the
//     target, renamed over it at the end; failures remove it. Replacing
//     needs write permission on the file (checked first) and on its
//     directory (for the rename), and breaks hard links.
//   - An existing target keeps its owner, mode (setuid/setgid dropped for
//     non-root writers), ACLs and foreign user.* xattrs; a new file is owned
//     by the user.
//   - A final symlink stays a link: its target file (a dangling target is
//     created) gets the content. Parent symlinks are followed by the kernel.
//   - Client-side body errors (bad multipart, truncated gzip, short body)
//     are 400; FIFOs and devices are neither served nor overwritten (400).
package files

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/paths"
	"github.com/envd-go/envd/internal/server"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
)

// Options are what the handlers need from the rest of envd.
type Options struct {
	State  *state.State
	Logger *slog.Logger
}

// Handler serves the /files routes.
type Handler struct {
	opts Options
}

// New returns the /files handlers.
func New(opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{opts: opts}
}

// copyBufSize is the chunk for disk and gzip copies: big enough that
// syscalls and compressor calls are not the bottleneck.
const copyBufSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// httpError is a REST failure: status and the JSON message.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) *httpError {
	return &httpError{status, fmt.Sprintf(format, args...)}
}

// osStatus maps an OS error on a user operation to a status: the kernel
// refusing the user is 403, names it rejects 400, no space 507.
func osStatus(err error) int {
	switch {
	case errors.Is(err, os.ErrPermission):
		return http.StatusForbidden
	case errors.Is(err, unix.ENAMETOOLONG), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return http.StatusBadRequest
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func writeErr(w http.ResponseWriter, err error) {
	var he *httpError
	if errors.As(err, &he) {
		apierror.Write(w, he.status, he.msg)
		return
	}
	apierror.Write(w, http.StatusInternalServerError, err.Error())
}

// checkTypedParams rejects a malformed signature_expiration the way
// e2b's generated binder does: 400, plain text.
func checkTypedParams(w http.ResponseWriter, r *http.Request) bool {
	q := r.URL.Query()
	if q.Has("signature_expiration") {
		if _, err := strconv.ParseInt(q.Get("signature_expiration"), 10, 64); err != nil {
			http.Error(w, fmt.Sprintf("Invalid format for parameter signature_expiration: %v", err), http.StatusBadRequest)
			return false
		}
	}
	return true
}

// resolve applies the shared path rules; NUL bytes never reach a syscall.
func (h *Handler) resolve(p string, u *users.User) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", errors.New("path contains a NUL byte")
	}
	return paths.Resolve(p, u.Home, h.opts.State.DefaultWorkdir())
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// quote makes a user-supplied path safe for a message.
func quote(p string) string { return strings.ReplaceAll(p, "\x00", `\x00`) }

// Routes are the REST routes to mount on the envd mux. GET and POST
// /files are exempt from the token middleware and check signatures
// themselves; compose needs the token.
func (h *Handler) Routes() []server.Route {
	return []server.Route{
		{Pattern: "GET /files", Handler: http.HandlerFunc(h.Download)},
		{Pattern: "POST /files", Handler: http.HandlerFunc(h.Upload)},
		{Pattern: "POST /files/compose", Handler: http.HandlerFunc(h.Compose)},
	}
}
