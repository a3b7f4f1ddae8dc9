package envdclient

import (
	"bytes"
	"context"
	"io"
	"sync"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
)

// Selector names a process: by pid or by tag.
type Selector struct {
	PID uint32
	Tag string
}

// PID selects a process by pid.
func PID(pid uint32) Selector { return Selector{PID: pid} }

// Tag selects a process by tag.
func Tag(tag string) Selector { return Selector{Tag: tag} }

func (s Selector) proto() *pb.ProcessSelector {
	if s.Tag != "" {
		return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: s.Tag}}
	}
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: s.PID}}
}

// Signal is a signal envd can deliver.
type Signal = pb.Signal

// The signals envd supports.
const (
	SIGTERM = pb.Signal_SIGNAL_SIGTERM
	SIGKILL = pb.Signal_SIGNAL_SIGKILL
)

// PTYSize is a terminal size.
type PTYSize struct {
	Cols uint32 `json:"cols"`
	Rows uint32 `json:"rows"`
}

// Command is a program to start. Cmd is looked up in PATH by envd; no
// shell is involved unless Cmd is one.
type Command struct {
	Cmd  string
	Args []string
	Env  map[string]string
	Cwd  string // empty: envd's default workdir, else the user's home
	Tag  string
	// Stdin keeps a stdin pipe open (for SendStdin/InputStream). False
	// gives the process /dev/null. Ignored with PTY.
	Stdin bool
	// PTY runs the process on a terminal of this size; output then
	// arrives on Stdout.
	PTY *PTYSize
	// Stdout and Stderr receive output as it arrives (nil discards). A
	// slow writer slows the process down rather than losing output.
	Stdout io.Writer
	Stderr io.Writer
}

// ExitStatus is a process's EndEvent.
type ExitStatus struct {
	ExitCode int    `json:"exitCode"` // -1 when killed by a signal
	Exited   bool   `json:"exited"`   // terminated normally
	Status   string `json:"status"`   // "exit status 3", "signal: killed"
	Error    string `json:"error,omitempty"`
}

// Success reports exit code 0 after a normal exit.
func (s ExitStatus) Success() bool { return s.Exited && s.ExitCode == 0 }

func exitStatus(e *pb.ProcessEvent_EndEvent) *ExitStatus {
	return &ExitStatus{ExitCode: int(e.GetExitCode()), Exited: e.GetExited(), Status: e.GetStatus(), Error: e.GetError()}
}

// ExecResult is the collected outcome of Exec.
type ExecResult struct {
	PID    uint32 `json:"pid"`
	Stdout []byte `json:"stdout"`
	Stderr []byte `json:"stderr"`
	ExitStatus
}

// Exec runs cmd to completion and collects its output. A non-zero exit is
// not an error: check ExitCode. cmd.Stdout/Stderr, if set, also see the
// output. ctx's deadline (if any) also bounds the process's lifetime:
// envd kills it when the deadline passes.
func (c *Client) Exec(ctx context.Context, cmd Command) (*ExecResult, error) {
	var out, errb bytes.Buffer
	cmd.Stdout = teeOrBuf(&out, cmd.Stdout)
	cmd.Stderr = teeOrBuf(&errb, cmd.Stderr)
	p, err := c.Start(ctx, cmd)
	if err != nil {
		return nil, err
	}
	st, err := p.Wait()
	if err != nil {
		return nil, err
	}
	return &ExecResult{PID: p.PID(), Stdout: out.Bytes(), Stderr: errb.Bytes(), ExitStatus: *st}, nil
}

func teeOrBuf(buf *bytes.Buffer, w io.Writer) io.Writer {
	if w == nil {
		return buf
	}
	return io.MultiWriter(buf, w)
}

// Process is a started or attached process whose output is being read.
type Process struct {
	c      *Client
	pid    uint32
	tag    string
	pty    bool
	cancel context.CancelFunc
	done   chan struct{}
	status *ExitStatus
	err    error
}

// PID returns the process id in the guest.
func (p *Process) PID() uint32 { return p.pid }

// Tag returns the tag the process was started or connected with.
func (p *Process) Tag() string { return p.tag }

// Wait blocks until the process ended (or the stream failed) and returns
// its exit status.
func (p *Process) Wait() (*ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

// Done is closed when Wait would return.
func (p *Process) Done() <-chan struct{} { return p.done }

// Close stops reading output and waits for the reader to end. The process
// keeps running in the guest (envd detaches it from the stream).
func (p *Process) Close() {
	p.cancel()
	<-p.done
}

func (p *Process) sel() Selector { return PID(p.pid) }

// Kill sends SIGKILL.
func (p *Process) Kill(ctx context.Context) error { return p.c.Signal(ctx, p.sel(), SIGKILL) }

// Signal sends sig.
func (p *Process) Signal(ctx context.Context, sig Signal) error { return p.c.Signal(ctx, p.sel(), sig) }

// SendStdin writes data to the process's stdin, or to its terminal for a
// PTY process.
func (p *Process) SendStdin(ctx context.Context, data []byte) error {
	if p.pty {
		return p.c.SendPTY(ctx, p.sel(), data)
	}
	return p.c.SendStdin(ctx, p.sel(), data)
}

// CloseStdin closes the stdin pipe (EOF for the process).
func (p *Process) CloseStdin(ctx context.Context) error { return p.c.CloseStdin(ctx, p.sel()) }

// Resize sets the terminal size of a PTY process.
func (p *Process) Resize(ctx context.Context, size PTYSize) error {
	return p.c.Resize(ctx, p.sel(), size)
}

// InputStream opens one StreamInput stream to the process: writes are
// delivered in order (stdin, or terminal input for a PTY process).
func (p *Process) InputStream(ctx context.Context) (*InputStream, error) {
	return p.c.InputStream(ctx, p.sel(), p.pty)
}

// event is the part of StartResponse/ConnectResponse the reader uses.
type eventStream interface {
	Receive() bool
	Err() error
	Close() error
	event() *pb.ProcessEvent
}

type startStream struct {
	*connect.ServerStreamForClient[pb.StartResponse]
}

func (s startStream) event() *pb.ProcessEvent { return s.Msg().GetEvent() }

type connectStream struct {
	*connect.ServerStreamForClient[pb.ConnectResponse]
}

func (s connectStream) event() *pb.ProcessEvent { return s.Msg().GetEvent() }

// Start starts cmd and returns once envd reported its pid. Output is
// copied to cmd.Stdout/Stderr until the process ends; call Wait.
//
// ctx governs the stream; its deadline, if any, is sent as
// Connect-Timeout-Ms and envd kills the process when it passes. Cancelling
// ctx (or Close) only detaches: the process keeps running.
func (c *Client) Start(ctx context.Context, cmd Command) (*Process, error) {
	req := &pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: cmd.Cmd, Args: cmd.Args, Envs: cmd.Env},
	}
	if cmd.Cwd != "" {
		req.Process.Cwd = &cmd.Cwd
	}
	if cmd.Tag != "" {
		req.Tag = &cmd.Tag
	}
	if cmd.PTY != nil {
		req.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: cmd.PTY.Cols, Rows: cmd.PTY.Rows}}
	} else {
		stdin := cmd.Stdin
		req.Stdin = &stdin
	}
	sctx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(c.streamIdle(), cancel)
	wd.arm()
	s, err := c.procStream.Start(sctx, connect.NewRequest(req))
	if err != nil {
		wd.disarm()
		cancel()
		return nil, wd.check("Start", err)
	}
	p := &Process{c: c, tag: cmd.Tag, pty: cmd.PTY != nil, cancel: cancel, done: make(chan struct{})}
	if err := p.begin("Start", startStream{s}, wd); err != nil {
		return nil, err
	}
	go p.read("Start", startStream{s}, wd, cmd.Stdout, cmd.Stderr)
	return p, nil
}

// ConnectOptions say where an attached process's output goes.
type ConnectOptions struct {
	Stdout io.Writer
	Stderr io.Writer
	// PTY marks the process as a terminal process, so SendStdin and
	// InputStream send terminal input.
	PTY bool
}

// Connect attaches to a running process (or one that exited in the last
// 30 s, whose exit status envd still holds). Only output produced after
// attaching is delivered.
func (c *Client) Connect(ctx context.Context, sel Selector, o ConnectOptions) (*Process, error) {
	sctx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(c.streamIdle(), cancel)
	wd.arm()
	s, err := c.procStream.Connect(sctx, connect.NewRequest(&pb.ConnectRequest{Process: sel.proto()}))
	if err != nil {
		wd.disarm()
		cancel()
		return nil, wd.check("Connect", err)
	}
	p := &Process{c: c, tag: sel.Tag, pty: o.PTY, cancel: cancel, done: make(chan struct{})}
	if err := p.begin("Connect", connectStream{s}, wd); err != nil {
		return nil, err
	}
	go p.read("Connect", connectStream{s}, wd, o.Stdout, o.Stderr)
	return p, nil
}

// begin reads the first message, which must be the start event. On error
// it cleans up the stream.
func (p *Process) begin(op string, s eventStream, wd *watchdog) error {
	ok := s.Receive()
	wd.disarm()
	fail := func(err error) error {
		p.cancel()
		s.Close()
		return err
	}
	if !ok {
		if err := s.Err(); err != nil {
			return fail(wd.check(op, err))
		}
		return fail(protocolError(op, "stream ended before the start event"))
	}
	start := s.event().GetStart()
	if start == nil {
		return fail(protocolError(op, "first message is not a start event"))
	}
	p.pid = start.GetPid()
	return nil
}

// read copies output until the end event or the stream's end.
func (p *Process) read(op string, s eventStream, wd *watchdog, stdout, stderr io.Writer) {
	defer close(p.done)
	defer p.cancel()
	defer s.Close()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	var writeErr error
	for {
		wd.arm()
		ok := s.Receive()
		wd.disarm()
		if !ok {
			break
		}
		ev := s.event()
		switch e := ev.GetEvent().(type) {
		case *pb.ProcessEvent_Data:
			if writeErr != nil {
				continue // keep draining so the end event still arrives
			}
			switch o := e.Data.GetOutput().(type) {
			case *pb.ProcessEvent_DataEvent_Stdout:
				_, writeErr = stdout.Write(o.Stdout)
			case *pb.ProcessEvent_DataEvent_Pty:
				_, writeErr = stdout.Write(o.Pty)
			case *pb.ProcessEvent_DataEvent_Stderr:
				_, writeErr = stderr.Write(o.Stderr)
			}
		case *pb.ProcessEvent_End:
			p.status = exitStatus(e.End)
		}
	}
	if err := s.Err(); err != nil {
		p.err = wd.check(op, err)
		return
	}
	if p.status == nil {
		p.err = protocolError(op, "stream ended without an end event")
		return
	}
	if writeErr != nil {
		p.err = wrap(op, writeErr)
	}
}

// ProcessInfo describes a live process.
type ProcessInfo struct {
	PID  uint32            `json:"pid"`
	Tag  string            `json:"tag,omitempty"`
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args"`
	Env  map[string]string `json:"envs,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
}

// List returns the live processes.
func (c *Client) List(ctx context.Context) ([]ProcessInfo, error) {
	resp, err := c.proc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		return nil, wrap("List", err)
	}
	out := make([]ProcessInfo, 0, len(resp.Msg.GetProcesses()))
	for _, pi := range resp.Msg.GetProcesses() {
		cfg := pi.GetConfig()
		args := cfg.GetArgs()
		if args == nil {
			args = []string{}
		}
		out = append(out, ProcessInfo{PID: pi.GetPid(), Tag: pi.GetTag(), Cmd: cfg.GetCmd(), Args: args, Env: cfg.GetEnvs(), Cwd: cfg.GetCwd()})
	}
	return out, nil
}

// Signal sends sig to the selected process.
func (c *Client) Signal(ctx context.Context, sel Selector, sig Signal) error {
	_, err := c.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel.proto(), Signal: sig}))
	return wrap("SendSignal", err)
}

// Kill sends SIGKILL to the selected process.
func (c *Client) Kill(ctx context.Context, sel Selector) error { return c.Signal(ctx, sel, SIGKILL) }

// SendStdin writes data to the selected process's stdin pipe.
func (c *Client) SendStdin(ctx context.Context, sel Selector, data []byte) error {
	_, err := c.proc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
		Process: sel.proto(), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: data}},
	}))
	return wrap("SendInput", err)
}

// SendPTY writes data to the selected process's terminal (keystrokes).
func (c *Client) SendPTY(ctx context.Context, sel Selector, data []byte) error {
	_, err := c.proc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
		Process: sel.proto(), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: data}},
	}))
	return wrap("SendInput", err)
}

// CloseStdin closes the selected process's stdin pipe.
func (c *Client) CloseStdin(ctx context.Context, sel Selector) error {
	_, err := c.proc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel.proto()}))
	return wrap("CloseStdin", err)
}

// Resize sets the selected PTY process's terminal size.
func (c *Client) Resize(ctx context.Context, sel Selector, size PTYSize) error {
	_, err := c.proc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{
		Process: sel.proto(), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: size.Cols, Rows: size.Rows}},
	}))
	return wrap("Update", err)
}

// InputStream is one StreamInput call: an ordered input channel to a
// process. Write and Close must not be called concurrently with each other.
type InputStream struct {
	mu     sync.Mutex
	s      *connect.ClientStreamForClient[pb.StreamInputRequest, pb.StreamInputResponse]
	pty    bool
	cancel context.CancelFunc
	closed bool
}

// InputStream opens a StreamInput stream to the selected process; pty
// chooses terminal input over stdin.
func (c *Client) InputStream(ctx context.Context, sel Selector, pty bool) (*InputStream, error) {
	sctx, cancel := context.WithCancel(ctx)
	s := c.procStream.StreamInput(sctx)
	err := s.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{
		Start: &pb.StreamInputRequest_StartEvent{Process: sel.proto()},
	}})
	in := &InputStream{s: s, pty: pty, cancel: cancel}
	if err != nil {
		return nil, in.finish(err)
	}
	return in, nil
}

// Write sends p as one input event.
func (in *InputStream) Write(p []byte) (int, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return 0, &Error{Op: "StreamInput", Message: "input stream closed", kind: ErrFailedPrecondition}
	}
	input := &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: bytes.Clone(p)}}
	if in.pty {
		input = &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: bytes.Clone(p)}}
	}
	err := in.s.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{
		Data: &pb.StreamInputRequest_DataEvent{Input: input},
	}})
	if err != nil {
		in.closed = true
		return 0, in.finish(err)
	}
	return len(p), nil
}

// Close ends the stream and returns envd's verdict on it.
func (in *InputStream) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil
	}
	in.closed = true
	return in.finish(nil)
}

// finish closes the stream; a Send error is replaced by the server's error
// (connect reports io.EOF on Send when the server already answered).
func (in *InputStream) finish(sendErr error) error {
	defer in.cancel()
	_, err := in.s.CloseAndReceive()
	if err == nil && sendErr != nil {
		err = sendErr
	}
	return wrap("StreamInput", err)
}
