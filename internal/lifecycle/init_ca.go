package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// errCABusy means the CA lock could not be taken before the request ended.
var errCABusy = errors.New("CA install already in progress")

// caInstaller appends extra CA certificates to the system bundle. The
// append is synchronous (callers rely on TLS working once /init returned);
// writing the standalone copy and removing the previously installed PEM
// from the bundle happen afterwards in the background.
type caInstaller struct {
	bundle string // /etc/ssl/certs/ca-certificates.crt
	copy   string // /usr/local/share/ca-certificates/e2b-ca.crt; "" to skip
	log    *slog.Logger

	lock chan struct{} // held for every bundle change
	last string        // the PEM currently installed by us
	wg   sync.WaitGroup
}

func newCAInstaller(bundle, copyPath string, log *slog.Logger) *caInstaller {
	return &caInstaller{bundle: bundle, copy: copyPath, log: log, lock: make(chan struct{}, 1)}
}

// normalizePEM makes the text end in exactly one newline.
func normalizePEM(pem string) string {
	return strings.TrimRight(pem, "\r\n\t ") + "\n"
}

func (c *caInstaller) install(ctx context.Context, pem string) error {
	pem = normalizePEM(pem)
	select {
	case c.lock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", errCABusy, ctx.Err())
	}
	if pem == c.last {
		<-c.lock
		return nil
	}
	if err := appendPEM(c.bundle, pem); err != nil {
		<-c.lock
		return err
	}
	prev := c.last
	c.last = pem
	<-c.lock

	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.lock <- struct{}{}
		defer func() { <-c.lock }()
		if c.last != pem {
			return // a newer install superseded this one and cleans up itself
		}
		if c.copy != "" {
			if err := replaceFile(c.copy, []byte(pem), 0o644); err != nil {
				c.log.Warn("write CA copy", "error", err)
			}
		}
		if prev != "" {
			if err := removeLastPEM(c.bundle, prev, pem); err != nil {
				c.log.Warn("remove previous CA from bundle", "error", err)
			}
		}
	}()
	return nil
}

// wait blocks until background work is done (tests, shutdown).
func (c *caInstaller) wait() { c.wg.Wait() }

// appendPEM adds pem to the end of the existing bundle, on a fresh line.
func appendPEM(bundle, pem string) error {
	f, err := os.OpenFile(bundle, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open CA bundle: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, fi.Size()-1); err == nil && b[0] != '\n' {
			pem = "\n" + pem
		}
	}
	if _, err := io.WriteString(f, pem); err != nil {
		return fmt.Errorf("append to CA bundle: %w", err)
	}
	return nil
}

// removeLastPEM deletes the last copy of old that precedes the current
// PEM from the bundle (ours, appended by the previous install).
func removeLastPEM(bundle, old, current string) error {
	b, err := os.ReadFile(bundle)
	if err != nil {
		return err
	}
	s := string(b)
	end := strings.LastIndex(s, current)
	if end < 0 {
		end = len(s)
	}
	i := strings.LastIndex(s[:end], old)
	if i < 0 {
		return nil
	}
	return replaceFile(bundle, []byte(s[:i]+s[i+len(old):]), 0o644)
}
