package envdclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
)

// Progress is called as a transfer moves: done bytes so far out of total
// (-1 when unknown). It runs on the transferring goroutine; keep it quick.
type Progress func(done, total int64)

// UploadOptions tune Upload.
type UploadOptions struct {
	// Size of the content in bytes: -1 unknown (chunked upload), 0 asks
	// Upload to find it out (from an *os.File, or a reader with Len()).
	Size     int64
	Progress Progress
}

// UploadedFile is one file envd wrote.
type UploadedFile struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// DownloadOptions tune Download.
type DownloadOptions struct {
	Progress Progress
}

func (c *Client) filesQuery(path string) url.Values {
	q := url.Values{"path": {path}}
	if c.opts.user != "" {
		q.Set("username", c.opts.user)
	}
	return q
}

// Upload streams r into the guest file path (POST /files, raw body),
// creating parent directories; the file is owned by the client's user.
// There is no overall timeout: the transfer is cancelled only by ctx, or
// when it makes no progress for the transfer idle timeout.
func (c *Client) Upload(ctx context.Context, path string, r io.Reader, o UploadOptions) (*UploadedFile, error) {
	const op = "POST /files"
	size := o.Size
	if size == 0 {
		size = sizeOf(r)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wd := newWatchdog(c.opts.transferIdle, cancel)
	defer wd.disarm()
	body := &progressReader{r: r, upload: true, total: size, progress: o.Progress, wd: wd}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url("/files", c.filesQuery(path)), body)
	if err != nil {
		return nil, &Error{Op: op, Message: err.Error(), Err: err, kind: ErrInvalidArgument}
	}
	if size >= 0 {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	c.setAuth(req.Header)
	wd.arm()
	resp, err := c.stream.Do(req)
	wd.disarm()
	if err != nil {
		return nil, wd.check(op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(op, resp)
	}
	var files []UploadedFile
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&files); err != nil {
		return nil, wrap(op, fmt.Errorf("decode response: %w", err))
	}
	if len(files) == 0 {
		return nil, protocolError(op, "envd reported no written file")
	}
	if size == 0 && o.Progress != nil {
		o.Progress(0, 0) // the empty body was never read
	}
	return &files[0], nil
}

// Download streams the guest file path into w (GET /files, identity
// encoding) and returns the bytes written. Like Upload it has no overall
// timeout, only ctx and the transfer idle timeout.
func (c *Client) Download(ctx context.Context, path string, w io.Writer, o DownloadOptions) (int64, error) {
	const op = "GET /files"
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wd := newWatchdog(c.opts.transferIdle, cancel)
	defer wd.disarm()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/files", c.filesQuery(path)), nil)
	if err != nil {
		return 0, &Error{Op: op, Message: err.Error(), Err: err, kind: ErrInvalidArgument}
	}
	req.Header.Set("Accept-Encoding", "identity")
	c.setAuth(req.Header)
	wd.arm()
	resp, err := c.stream.Do(req)
	wd.disarm()
	if err != nil {
		return 0, wd.check(op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, statusError(op, resp)
	}
	src := &progressReader{r: resp.Body, total: resp.ContentLength, progress: o.Progress, wd: wd}
	n, err := io.Copy(w, src)
	if err != nil {
		if src.readErr != nil {
			return n, wd.check(op, err)
		}
		return n, wrap(op, fmt.Errorf("write: %w", err))
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, protocolError(op, "got %d of %d bytes", n, resp.ContentLength)
	}
	return n, nil
}

// progressReader counts bytes and reports progress. Its watchdog measures
// silence: for a download, how long one Read of the response waits; for an
// upload, how long the transport takes to ask for the next chunk (a
// stalled connection stops asking). At EOF the upload's watchdog stops and
// the response-header timeout takes over.
type progressReader struct {
	r        io.Reader
	upload   bool
	done     int64
	total    int64
	progress Progress
	wd       *watchdog
	readErr  error
}

func (p *progressReader) Read(b []byte) (int, error) {
	if !p.upload {
		p.wd.arm()
	}
	n, err := p.r.Read(b)
	switch {
	case !p.upload, err != nil:
		p.wd.disarm()
	default:
		p.wd.arm()
	}
	if n > 0 {
		p.done += int64(n)
		if p.progress != nil {
			p.progress(p.done, p.total)
		}
	}
	if err == io.EOF && p.progress != nil {
		p.progress(p.done, p.total) // final report, also for empty files
	}
	if err != nil && err != io.EOF {
		p.readErr = err
	}
	return n, err
}

func sizeOf(r io.Reader) int64 {
	switch v := r.(type) {
	case *os.File:
		if fi, err := v.Stat(); err == nil && fi.Mode().IsRegular() {
			return fi.Size()
		}
	case interface{ Len() int }:
		return int64(v.Len())
	}
	return -1
}
