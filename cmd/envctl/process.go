package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/envd-go/envd/envdclient"
)

// signalExit maps envd's "signal: <name>" status to the shell convention
// 128+n.
var signalNumbers = map[string]int{
	"hangup": 1, "interrupt": 2, "quit": 3, "illegal instruction": 4,
	"trace/breakpoint trap": 5, "aborted": 6, "bus error": 7,
	"floating point exception": 8, "killed": 9, "user defined signal 1": 10,
	"segmentation fault": 11, "user defined signal 2": 12, "broken pipe": 13,
	"alarm clock": 14, "terminated": 15,
}

// exitCode is the local exit code for a remote exit status.
func exitCode(st *envdclient.ExitStatus) int {
	if st.Exited {
		return st.ExitCode
	}
	name := strings.TrimPrefix(st.Status, "signal: ")
	name = strings.TrimSuffix(name, " (core dumped)")
	if n, ok := signalNumbers[name]; ok {
		return 128 + n
	}
	return 255
}

func finish(st *envdclient.ExitStatus) error {
	if code := exitCode(st); code != 0 {
		return exitError(code)
	}
	return nil
}

func execCmd(g *globals) *cobra.Command {
	var (
		env      []string
		cwd, tag string
		stdin    bool
		lifetime time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] -- CMD [ARGS...]",
		Short: "Run a program in the guest, streaming its output; exits with its exit code",
		Long: "Runs CMD (looked up in the guest's PATH, no shell) and streams stdout and stderr live.\n" +
			"Ctrl-C sends SIGTERM to the remote process, a second Ctrl-C sends SIGKILL.\n" +
			"With --json the output is collected and printed as one JSON object.",
		Args: args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			envs, err := parseEnv(env)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if lifetime > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, lifetime)
				defer cancel()
			}
			spec := envdclient.Command{Cmd: argv[0], Args: argv[1:], Env: envs, Cwd: cwd, Tag: tag, Stdin: stdin}
			if !g.json {
				spec.Stdout, spec.Stderr = g.stdout, g.stderr
			}
			return runExec(ctx, g, c, spec)
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // flags after CMD belong to CMD
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&cwd, "cwd", "w", "", "working directory (default: envd's default workdir or the user's home)")
	f.StringVar(&tag, "tag", "", "tag the process (for attach/kill --tag)")
	f.BoolVarP(&stdin, "stdin", "i", false, "forward local stdin to the process")
	f.DurationVar(&lifetime, "lifetime", 0, "kill the process after this long (0: no limit)")
	return cmd
}

// execJSON is the --json shape of exec.
type execJSON struct {
	PID      uint32 `json:"pid"`
	ExitCode int    `json:"exitCode"`
	Exited   bool   `json:"exited"`
	Status   string `json:"status"`
	Error    string `json:"error,omitempty"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

func runExec(ctx context.Context, g *globals, c *envdclient.Client, spec envdclient.Command) error {
	var out, errb strings.Builder
	if g.json {
		spec.Stdout, spec.Stderr = &out, &errb
	}
	// Signals are forwarded, not obeyed: register before starting so a
	// Ctrl-C right after the start is not lost.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	p, err := c.Start(ctx, spec)
	if err != nil {
		return err
	}
	defer p.Close()
	if spec.Stdin {
		go forwardStdin(ctx, p)
	}
	var sent int
	for {
		select {
		case <-p.Done():
			st, err := p.Wait()
			if err != nil {
				return err
			}
			if g.json {
				if err := g.printJSON(execJSON{
					PID: p.PID(), ExitCode: st.ExitCode, Exited: st.Exited, Status: st.Status, Error: st.Error,
					Stdout: out.String(), Stderr: errb.String(),
				}); err != nil {
					return err
				}
			}
			return finish(st)
		case <-sigs:
			sig := envdclient.SIGTERM
			if sent > 0 {
				sig = envdclient.SIGKILL
			}
			sent++
			sctx, cancel := context.WithTimeout(context.Background(), g.timeout)
			err := p.Signal(sctx, sig)
			cancel()
			if err != nil && !errors.Is(err, envdclient.ErrNotFound) {
				fmt.Fprintf(g.stderr, "envctl: forward signal: %v\n", err)
			}
		}
	}
}

// forwardStdin copies local stdin to the process and closes its stdin at
// EOF. It ends with the input stream (when the process is gone) or EOF;
// a read blocked on a terminal ends with the program.
func forwardStdin(ctx context.Context, p *envdclient.Process) {
	in, err := p.InputStream(ctx)
	if err != nil {
		return
	}
	_, copyErr := io.Copy(in, os.Stdin)
	if err := in.Close(); err != nil || copyErr != nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p.CloseStdin(cctx)
}

// terminal is the local terminal in raw mode for shell/attach -t; restore
// is idempotent and must run on every exit path.
type terminal struct {
	fd    int
	state *term.State
}

func rawTerminal() (*terminal, error) {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return &terminal{fd: -1}, nil
	}
	st, err := term.MakeRaw(fd)
	if err != nil {
		return nil, fmt.Errorf("raw terminal: %w", err)
	}
	return &terminal{fd: fd, state: st}, nil
}

func (t *terminal) restore() {
	if t.state != nil {
		term.Restore(t.fd, t.state)
		t.state = nil
	}
}

// size is the local terminal size, 80x24 when stdin is not a terminal.
func termSize() envdclient.PTYSize {
	for _, f := range []*os.File{os.Stdin, os.Stdout} {
		if w, h, err := term.GetSize(int(f.Fd())); err == nil && w > 0 && h > 0 {
			return envdclient.PTYSize{Cols: uint32(w), Rows: uint32(h)}
		}
	}
	return envdclient.PTYSize{Cols: 80, Rows: 24}
}

func randomTag(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

const detachKey = 0x1d // Ctrl-]

func shellCmd(g *globals) *cobra.Command {
	var (
		env []string
		cwd string
		tag string
	)
	cmd := &cobra.Command{
		Use:   "shell [flags] [-- CMD ARGS...]",
		Short: "Open an interactive terminal in the guest (default: bash -i -l)",
		Long: "Starts CMD (default /bin/bash -i -l) on a PTY, puts the local terminal in raw mode and\n" +
			"forwards keystrokes and window resizes. Exits with the remote exit code.",
		Args: args(cobra.ArbitraryArgs),
		RunE: func(cmd *cobra.Command, argv []string) error {
			envs, err := parseEnv(env)
			if err != nil {
				return err
			}
			if len(argv) == 0 {
				argv = []string{"/bin/bash", "-i", "-l"}
			}
			t := os.Getenv("TERM")
			if t == "" || t == "dumb" {
				t = "xterm-256color"
			}
			full := map[string]string{"TERM": t, "LANG": "C.UTF-8"}
			for k, v := range envs {
				full[k] = v
			}
			if tag == "" {
				tag = randomTag("envctl-shell-")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			size := termSize()
			spec := envdclient.Command{Cmd: argv[0], Args: argv[1:], Env: full, Cwd: cwd, Tag: tag, PTY: &size}
			return interactive(cmd.Context(), g, c, func(ctx context.Context, out io.Writer) (*envdclient.Process, error) {
				spec.Stdout = out
				return c.Start(ctx, spec)
			}, false)
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&cwd, "cwd", "w", "", "working directory")
	f.StringVar(&tag, "tag", "", "tag of the shell process (default: envctl-shell-<random>)")
	return cmd
}

// interactive runs a PTY session: raw local terminal, keystrokes over one
// StreamInput stream, SIGWINCH → resize, remote output to stdout. The
// terminal is restored on every return path before the caller exits.
// With detachable, Ctrl-] leaves the process running and returns.
func interactive(ctx context.Context, g *globals, c *envdclient.Client,
	open func(context.Context, io.Writer) (*envdclient.Process, error), detachable bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGWINCH, syscall.SIGTERM, syscall.SIGHUP, os.Interrupt)
	defer signal.Stop(sigs)

	t, err := rawTerminal()
	if err != nil {
		return err
	}
	defer t.restore()

	p, err := open(ctx, g.stdout)
	if err != nil {
		return err
	}
	defer p.Close()
	in, err := p.InputStream(ctx)
	if err != nil {
		return err
	}
	defer in.Close()

	detached := make(chan struct{})
	inputDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := os.Stdin.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				if detachable {
					if i := indexByte(chunk, detachKey); i >= 0 {
						if i > 0 {
							in.Write(chunk[:i])
						}
						close(detached)
						return
					}
				}
				if _, werr := in.Write(chunk); werr != nil {
					inputDone <- werr
					return
				}
			}
			if err != nil {
				inputDone <- err
				return
			}
		}
	}()

	for {
		select {
		case <-p.Done():
			t.restore()
			st, err := p.Wait()
			if err != nil {
				return err
			}
			return finish(st)
		case <-detached:
			t.restore()
			fmt.Fprintf(g.stderr, "\r\nenvctl: detached from pid %d\n", p.PID())
			return nil
		case err := <-inputDone:
			// Local stdin ended (not a terminal, or closed): keep showing
			// output until the process ends.
			_ = err
			inputDone = nil
		case s := <-sigs:
			switch s {
			case syscall.SIGWINCH:
				rctx, rcancel := context.WithTimeout(ctx, g.timeout)
				p.Resize(rctx, termSize())
				rcancel()
			default:
				// Interrupt only arrives when stdin is not a raw terminal;
				// forward it as a keystroke so it reaches the foreground job.
				if s == os.Interrupt {
					in.Write([]byte{0x03})
					continue
				}
				t.restore()
				kctx, kcancel := context.WithTimeout(context.Background(), g.timeout)
				p.Kill(kctx)
				kcancel()
				return exitError(128 + int(s.(syscall.Signal)))
			}
		}
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func selector(argv []string, tag string) (envdclient.Selector, error) {
	if tag != "" {
		if len(argv) > 0 {
			return envdclient.Selector{}, usageError{errors.New("give a PID or --tag, not both")}
		}
		return envdclient.Tag(tag), nil
	}
	if len(argv) != 1 {
		return envdclient.Selector{}, usageError{errors.New("need a PID or --tag")}
	}
	pid, err := strconv.ParseUint(argv[0], 10, 32)
	if err != nil || pid == 0 {
		return envdclient.Selector{}, usageError{fmt.Errorf("invalid PID %q", argv[0])}
	}
	return envdclient.PID(uint32(pid)), nil
}

func attachCmd(g *globals) *cobra.Command {
	var (
		tag   string
		tty   bool
		stdin bool
	)
	cmd := &cobra.Command{
		Use:   "attach [flags] PID | --tag TAG",
		Short: "Attach to a running process: stream its output (and input with -i / -t)",
		Long: "Streams the output the process produces from now on and exits with its exit code.\n" +
			"-t attaches to a PTY process interactively (raw terminal, resize; Ctrl-] detaches).\n" +
			"-i forwards local stdin to a pipe process. Without -t, Ctrl-C detaches.",
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			sel, err := selector(argv, tag)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if tty {
				return interactive(cmd.Context(), g, c, func(ctx context.Context, out io.Writer) (*envdclient.Process, error) {
					return c.Connect(ctx, sel, envdclient.ConnectOptions{Stdout: out, PTY: true})
				}, true)
			}
			ctx, cancel := interruptible(cmd.Context())
			defer cancel()
			p, err := c.Connect(ctx, sel, envdclient.ConnectOptions{Stdout: g.stdout, Stderr: g.stderr})
			if err != nil {
				return err
			}
			defer p.Close()
			if stdin {
				go forwardStdin(ctx, p)
			}
			st, err := p.Wait()
			if err != nil {
				if ctx.Err() != nil {
					return nil // detached by Ctrl-C; the process keeps running
				}
				return err
			}
			return finish(st)
		},
	}
	f := cmd.Flags()
	f.StringVar(&tag, "tag", "", "select the process by tag")
	f.BoolVarP(&tty, "tty", "t", false, "interactive PTY attach")
	f.BoolVarP(&stdin, "stdin", "i", false, "forward local stdin (pipe processes)")
	return cmd
}

func psCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ps",
		Short: "List the processes envd runs",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ps, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(ps)
			}
			tw := g.tabs()
			fmt.Fprintln(tw, "PID\tTAG\tCOMMAND")
			for _, p := range ps {
				fmt.Fprintf(tw, "%d\t%s\t%s\n", p.PID, p.Tag, strings.Join(append([]string{p.Cmd}, p.Args...), " "))
			}
			return tw.Flush()
		},
	}
}

func killCmd(g *globals) *cobra.Command {
	var tag, sig string
	cmd := &cobra.Command{
		Use:   "kill [-s TERM|KILL] PID | --tag TAG",
		Short: "Send SIGTERM (default) or SIGKILL to a process",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			sel, err := selector(argv, tag)
			if err != nil {
				return err
			}
			var s envdclient.Signal
			switch strings.TrimPrefix(strings.ToUpper(sig), "SIG") {
			case "TERM", "15":
				s = envdclient.SIGTERM
			case "KILL", "9":
				s = envdclient.SIGKILL
			default:
				return usageError{fmt.Errorf("signal %q: envd only delivers TERM and KILL", sig)}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.Signal(cmd.Context(), sel, s)
		},
	}
	cmd.Flags().StringVar(&tag, "tag", "", "select the process by tag")
	cmd.Flags().StringVarP(&sig, "signal", "s", "TERM", "TERM or KILL")
	return cmd
}
