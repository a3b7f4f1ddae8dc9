package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/envd-go/envd/envdclient"
)

const remotePrefix = "remote:"

func cpCmd(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories between here and the guest",
		Long: "One side is remote:PATH (a guest path), the other a local path:\n" +
			"  envctl cp ./dir remote:/tmp/dir     upload (directories recursively)\n" +
			"  envctl cp remote:/etc/hosts .       download\n" +
			"A DST that is an existing directory (or ends in /) receives SRC under its own name.\n" +
			"A progress bar is shown on stderr when it is a terminal.",
		Args: args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			src, dst := argv[0], argv[1]
			srcRemote, dstRemote := strings.HasPrefix(src, remotePrefix), strings.HasPrefix(dst, remotePrefix)
			if srcRemote == dstRemote {
				return usageError{errors.New("cp: exactly one of SRC and DST must be remote:PATH")}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := interruptible(cmd.Context())
			defer cancel()
			x := &copier{g: g, c: c, quiet: quiet || !isTerminal(os.Stderr)}
			if dstRemote {
				err = x.upload(ctx, src, strings.TrimPrefix(dst, remotePrefix))
			} else {
				err = x.download(ctx, strings.TrimPrefix(src, remotePrefix), dst)
			}
			x.done()
			return err
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress bar")
	return cmd
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

type copier struct {
	g     *globals
	c     *envdclient.Client
	quiet bool
	bar   *progressbar.ProgressBar
	base  int64 // bytes of the files already finished
}

func (x *copier) start(total int64) {
	if x.quiet {
		return
	}
	x.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowCount(),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(os.Stderr) }),
		progressbar.OptionSetDescription("copying"),
	)
}

// progress is the per-file callback; the bar counts across files.
func (x *copier) progress(done, _ int64) {
	if x.bar != nil {
		x.bar.Set64(x.base + done)
	}
}

func (x *copier) fileDone(size int64) { x.base += size }

func (x *copier) done() {
	if x.bar != nil {
		x.bar.Finish()
	}
}

// remoteIsDir reports whether the guest path is an existing directory.
func (x *copier) remoteIsDir(ctx context.Context, p string) (bool, error) {
	e, err := x.c.Stat(ctx, p)
	if errors.Is(err, envdclient.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return e.IsDir(), nil
}

type localFile struct {
	rel  string // slash-separated, relative to the source root
	size int64
	dir  bool
}

func (x *copier) upload(ctx context.Context, local, remote string) error {
	fi, err := os.Stat(local)
	if err != nil {
		return err
	}
	into := strings.HasSuffix(remote, "/")
	if !into {
		if into, err = x.remoteIsDir(ctx, remote); err != nil {
			return err
		}
	}
	if into {
		remote = path.Join(remote, filepath.Base(filepath.Clean(local)))
	}
	if !fi.IsDir() {
		x.start(fi.Size())
		return x.uploadFile(ctx, local, remote)
	}
	var items []localFile
	var total int64
	err = filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(local, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			items = append(items, localFile{rel: filepath.ToSlash(rel), dir: true})
		case info.Mode().IsRegular():
			items = append(items, localFile{rel: filepath.ToSlash(rel), size: info.Size()})
			total += info.Size()
		default:
			fmt.Fprintf(x.g.stderr, "envctl: cp: skipping %s (not a regular file)\n", p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	x.start(total)
	for _, it := range items {
		dst := path.Join(remote, it.rel)
		if it.dir {
			if _, err := x.c.MakeDir(ctx, dst); err != nil && !errors.Is(err, envdclient.ErrAlreadyExists) {
				return err
			}
			continue
		}
		if err := x.uploadFile(ctx, filepath.Join(local, filepath.FromSlash(it.rel)), dst); err != nil {
			return err
		}
	}
	return nil
}

func (x *copier) uploadFile(ctx context.Context, local, remote string) error {
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := x.c.Upload(ctx, remote, f, envdclient.UploadOptions{Size: fi.Size(), Progress: x.progress}); err != nil {
		return fmt.Errorf("upload %s: %w", local, err)
	}
	x.fileDone(fi.Size())
	return nil
}

// listDepth is deep enough for any real tree in one ListDir call.
const listDepth = 1 << 16

func (x *copier) download(ctx context.Context, remote, local string) error {
	e, err := x.c.Stat(ctx, remote)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(local); (err == nil && fi.IsDir()) || strings.HasSuffix(local, string(os.PathSeparator)) {
		local = filepath.Join(local, baseName(e.Path))
	}
	if !e.IsDir() {
		x.start(e.Size)
		return x.downloadFile(ctx, remote, local, e.Mode)
	}
	entries, err := x.c.ListDir(ctx, remote, listDepth)
	if err != nil {
		return err
	}
	var total int64
	for _, it := range entries {
		if it.Type == envdclient.TypeFile {
			total += it.Size
		}
	}
	x.start(total)
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	prefix := strings.TrimSuffix(remote, "/") + "/"
	for _, it := range entries {
		rel, ok := strings.CutPrefix(it.Path, prefix)
		if !ok || rel == "" {
			return fmt.Errorf("cp: unexpected entry %q under %q", it.Path, remote)
		}
		dst := filepath.Join(local, filepath.FromSlash(rel))
		switch it.Type {
		case envdclient.TypeDirectory:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case envdclient.TypeFile:
			if err := x.downloadFile(ctx, it.Path, dst, it.Mode); err != nil {
				return err
			}
		default:
			fmt.Fprintf(x.g.stderr, "envctl: cp: skipping %s (not a regular file)\n", it.Path)
		}
	}
	return nil
}

func (x *copier) downloadFile(ctx context.Context, remote, local string, mode os.FileMode) error {
	if mode == 0 {
		mode = 0o644
	}
	f, err := os.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	n, err := x.c.Download(ctx, remote, f, envdclient.DownloadOptions{Progress: x.progress})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	x.fileDone(n)
	return nil
}
