package envdclient_test

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"

	"github.com/envd-go/envd/envdclient"
)

// BenchmarkExec is the round trip of a tiny command: Start stream, start
// event, output, end event.
func BenchmarkExec(b *testing.B) {
	e := startEnvd(b)
	c := e.client(b)
	ctx := testCtx(b)
	for b.Loop() {
		res, err := c.Exec(ctx, envdclient.Command{Cmd: "true"})
		if err != nil || !res.Success() {
			b.Fatal(res, err)
		}
	}
}

// BenchmarkUploadDownload moves 8 MiB each way through /files.
func BenchmarkUploadDownload(b *testing.B) {
	e := startEnvd(b)
	c := e.client(b)
	ctx := testCtx(b)
	data := bytes.Repeat([]byte("envd"), 2<<20)
	target := filepath.Join(b.TempDir(), "blob")
	b.SetBytes(int64(2 * len(data)))
	for b.Loop() {
		if _, err := c.Upload(ctx, target, bytes.NewReader(data), envdclient.UploadOptions{}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Download(ctx, target, io.Discard, envdclient.DownloadOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
