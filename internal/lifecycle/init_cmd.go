package lifecycle

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/envd-go/envd/internal/pid1"
)

// runCmd runs a helper program (mount, umount, findmnt) to completion and
// returns its combined output. The exit status comes from the reaper, never
// from cmd.Wait, because when envd is PID 1 the reaper collects every child.
// Output goes to a pipe we own, so exec starts no copying goroutines that
// would need Wait. ctx ending kills the program.
func runCmd(ctx context.Context, reaper *pid1.Reaper, name string, args ...string) (string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", fmt.Errorf("run %s: pipe: %w", name, err)
	}
	defer r.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.Env = []string{"PATH=" + defaultPath(), "LC_ALL=C"}
	_, done, err := reaper.Start(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	w.Close()
	if err != nil {
		return "", fmt.Errorf("run %s: %w", name, err)
	}
	defer cmd.Process.Release()

	outc := make(chan []byte, 1)
	go func() {
		// Bounded: a chatty helper cannot make envd buffer without limit.
		b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
		io.Copy(io.Discard, r)
		outc <- b
	}()
	var ws interface {
		Exited() bool
		ExitStatus() int
		Signaled() bool
	}
	select {
	case s := <-done:
		ws = s
	case <-ctx.Done():
		cmd.Process.Kill()
		s := <-done
		ws = s
	}
	// The pipe reaches EOF once the child and any grandchildren holding it
	// are gone; grandchildren that linger (mount.nfs helpers) are cut off
	// by closing our end.
	var out []byte
	select {
	case out = <-outc:
	case <-ctx.Done():
		r.Close()
		out = <-outc
	}
	text := strings.TrimSpace(string(bytes.ToValidUTF8(out, []byte("?"))))
	if ctx.Err() != nil {
		return text, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), ctx.Err())
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return text, fmt.Errorf("%s %s: exit status %d: %s", name, strings.Join(args, " "), ws.ExitStatus(), text)
	}
	return text, nil
}

func defaultPath() string {
	if p := os.Getenv("PATH"); p != "" {
		return p
	}
	return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}
