package files

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd-go/envd/internal/apierror"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/fsuser"
)

// gzipPool reuses compressors: a flate writer costs about 1 MiB to set up.
var gzipPool = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
	return w
}}

// Download serves GET /files in the order of protocol.md §3.5.
func (h *Handler) Download(w http.ResponseWriter, r *http.Request) {
	if !checkTypedParams(w, r) {
		return
	}
	st := h.opts.State
	if msg, ok := auth.CheckFileAccess(r, st, auth.OpRead, time.Now()); !ok {
		apierror.Write(w, http.StatusUnauthorized, msg)
		return
	}
	u, err := auth.FileUser(r, st)
	if err != nil {
		apierror.Write(w, http.StatusUnauthorized, err.Error())
		return
	}
	reqPath := r.URL.Query().Get("path")
	p, err := h.resolve(reqPath, u)
	if err != nil {
		apierror.Write(w, http.StatusBadRequest, "error expanding and resolving path '"+quote(reqPath)+"': "+err.Error())
		return
	}
	creds := fsuser.Of(u)

	err = fsuser.Do(creds, func() error {
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return errorf(http.StatusNotFound, "path '%s' does not exist", p)
		case err != nil:
			return errorf(osStatus(err), "error checking if path exists '%s': %v", p, err)
		case fi.IsDir():
			return errorf(http.StatusBadRequest, "path '%s' is a directory", p)
		case !fi.Mode().IsRegular():
			// A FIFO would block the open; devices are not files to serve.
			return errorf(http.StatusBadRequest, "path '%s' is not a regular file", p)
		}
		return nil
	})
	if err != nil {
		writeErr(w, err)
		return
	}

	conditional := r.Header.Get("Range") != "" || r.Header.Get("If-Modified-Since") != "" ||
		r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Range") != ""
	useGzip, err := negotiate(r.Header.Get("Accept-Encoding"), conditional)
	if err != nil {
		apierror.Write(w, http.StatusNotAcceptable, err.Error())
		return
	}

	var f *os.File
	err = fsuser.Do(creds, func() (err error) {
		// O_NONBLOCK: never hang if the file was swapped for a FIFO.
		f, err = os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
		if err != nil {
			return errorf(osStatus(err), "error opening file '%s': %v", p, err)
		}
		return nil
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		apierror.Write(w, http.StatusBadRequest, "path '"+p+"' is not a regular file")
		return
	}

	hdr := w.Header()
	hdr.Set("Vary", "Accept-Encoding")
	hdr.Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": filepath.Base(p)}))
	if !useGzip {
		if !dropEmptySuffixRanges(r) {
			hdr.Set("Content-Range", fmt.Sprintf("bytes */%d", fi.Size()))
			http.Error(w, "invalid range: failed to overlap", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		// Content-Type from the requested name's extension, else sniffed.
		http.ServeContent(w, r, reqPath, fi.ModTime(), f)
		return
	}
	ctype := mime.TypeByExtension(filepath.Ext(reqPath))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	hdr.Set("Content-Type", ctype)
	hdr.Set("Content-Encoding", "gzip")
	hdr.Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	// Headers out now: the body is chunked, never a Content-Length.
	http.NewResponseController(w).Flush()
	if err := sendGzip(w, f); err != nil {
		// Headers are out; the client sees a truncated gzip stream.
		h.opts.Logger.Debug("gzip download aborted", "path", p, "error", err)
	}
}

// dropEmptySuffixRanges removes "-0" specs from a bytes Range header:
// net/http answers them 206 with an impossible Content-Range, while a
// zero-length suffix is unsatisfiable. It reports false when nothing is
// left to serve.
func dropEmptySuffixRanges(r *http.Request) bool {
	v := r.Header.Get("Range")
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return true
	}
	var keep []string
	for _, s := range strings.Split(spec, ",") {
		if !zeroSuffix(s) {
			keep = append(keep, s)
		}
	}
	if len(keep) == 0 {
		return false
	}
	r.Header.Set("Range", "bytes="+strings.Join(keep, ","))
	return true
}

// zeroSuffix matches a suffix range of length zero as net/http parses it
// ("-0", " - 00", "-+0").
func zeroSuffix(s string) bool {
	start, end, ok := strings.Cut(s, "-")
	if !ok || strings.Trim(start, " \t\r\n") != "" {
		return false
	}
	n, err := strconv.ParseInt(strings.Trim(end, " \t\r\n"), 10, 64)
	return err == nil && n == 0
}

// sendGzip compresses f into w in large chunks: BestSpeed and a big
// buffered writer keep the compressor, not syscalls, the bottleneck.
func sendGzip(w io.Writer, f *os.File) error {
	bw := bufio.NewWriterSize(w, copyBufSize)
	gz := gzipPool.Get().(*gzip.Writer)
	gz.Reset(bw)
	defer gzipPool.Put(gz)
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	// Hide File.WriteTo so CopyBuffer uses our buffer.
	if _, err := io.CopyBuffer(gz, struct{ io.Reader }{f}, *buf); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return bw.Flush()
}
