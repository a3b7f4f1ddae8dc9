// Package process implements the Process service: spawning programs on
// pipes or a PTY, fanning their output out to subscribers, input, signals,
// and retaining exit results.
package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/auth"
	"github.com/envd-go/envd/internal/cgroups"
	"github.com/envd-go/envd/internal/paths"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
	"github.com/envd-go/envd/internal/writectl"
)

// Defaults for the Options durations.
const (
	DefaultWriteDeadline = 15 * time.Second
	DefaultRetention     = 30 * time.Second
	defaultKeepalive     = 90 * time.Second
	sendBatch            = 16 // chunks per flush at most (512 KiB of pipe output)
)

// SystemTag marks host maintenance processes: they stay in envd's cgroup.
const SystemTag = "_system"

// Options are what the service needs from the rest of envd.
type Options struct {
	State   *state.State
	Reaper  *pid1.Reaper
	Cgroups cgroups.Manager
	Logger  *slog.Logger

	// WriteDeadline is how long a subscriber's output queue may stay full
	// before that stream is cut with resource_exhausted (default 15 s).
	WriteDeadline time.Duration
	// Retention is how long an ended process stays visible to Connect
	// (default 30 s).
	Retention time.Duration
	// ShellWrapper forces every spawn through the /bin/sh wrapper of
	// subsystems.md §3.1 instead of the equivalent direct exec.
	ShellWrapper bool
}

// Service implements processconnect.ProcessHandler.
type Service struct {
	processconnect.UnimplementedProcessHandler
	opts  Options
	log   *slog.Logger
	table *table
	spawn *spawner
}

var errSelector = errors.New("process selector required")

// New returns the Process service.
func New(opts Options) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Cgroups == nil {
		opts.Cgroups = cgroups.Noop{}
	}
	if opts.WriteDeadline <= 0 {
		opts.WriteDeadline = DefaultWriteDeadline
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	unignoreSignals()
	return &Service{
		opts:  opts,
		log:   opts.Logger.With("logger", "process"),
		table: newTable(opts.Retention),
		spawn: newSpawner(opts.ShellWrapper),
	}
}

// unignoreSignals makes signals that envd inherited as ignored (e.g.
// SIGINT/SIGQUIT from a background launch by a shell) reach children with
// their default action: exec keeps SIG_IGN but resets handlers. envd
// itself still ignores them: the channel is never read and Notify drops.
func unignoreSignals() {
	var sigs []os.Signal
	for sig := unix.Signal(1); sig < 32; sig++ {
		if sig != unix.SIGKILL && sig != unix.SIGSTOP && signal.Ignored(sig) {
			sigs = append(sigs, sig)
		}
	}
	if len(sigs) > 0 {
		signal.Notify(make(chan os.Signal, 1), sigs...)
	}
}

// Close kills every live process group and waits (bounded) for their ends.
func (s *Service) Close() {
	live := s.table.list()
	for _, p := range live {
		_ = unix.Kill(-p.pid, unix.SIGKILL)
		p.stopWaitingForOutput()
	}
	timeout := time.After(10 * time.Second)
	for _, p := range live {
		select {
		case <-p.done:
		case <-timeout:
			return
		}
	}
	s.table.close()
}

func (s *Service) user(ctx context.Context, h http.Header) (*users.User, error) {
	if u := auth.UserFrom(ctx); u != nil {
		return u, nil
	}
	return auth.RPCUser(h, s.opts.State)
}

// processDeadline parses Connect-Timeout-Ms: >0 bounds the process lifetime.
func processDeadline(h http.Header) (time.Duration, error) {
	v := h.Get("Connect-Timeout-Ms")
	if v == "" {
		return 0, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid Connect-Timeout-Ms %q: %w", v, err))
	}
	if ms <= 0 {
		return 0, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// keepaliveInterval parses Keepalive-Ping-Interval (seconds, ≥1).
func keepaliveInterval(h http.Header) (time.Duration, error) {
	v := h.Get("Keepalive-Ping-Interval")
	if v == "" {
		return defaultKeepalive, nil
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid Keepalive-Ping-Interval %q: %w", v, err))
	}
	if sec < 1 {
		sec = 1
	}
	if sec > 1<<31 {
		sec = 1 << 31
	}
	return time.Duration(sec) * time.Second, nil
}

func cmdline(c *pb.ProcessConfig) string {
	return strings.TrimSpace(c.GetCmd() + " " + strings.Join(c.GetArgs(), " "))
}

// Start spawns a process and streams its events until it ends.
func (s *Service) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	u, err := s.user(ctx, req.Header())
	if err != nil {
		return err
	}
	lifetime, err := processDeadline(req.Header())
	if err != nil {
		return err
	}
	keepalive, err := keepaliveInterval(req.Header())
	if err != nil {
		return err
	}
	p, sub, err := s.start(req.Msg, u, lifetime)
	if err != nil {
		return err
	}
	return s.stream(ctx, p, sub, keepalive, func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.StartResponse{Event: ev})
	})
}

// start spawns the process with a subscriber already attached, so no
// output is missed.
func (s *Service) start(msg *pb.StartRequest, u *users.User, lifetime time.Duration) (*proc, *subscriber, error) {
	cfg := msg.GetProcess()
	if cfg == nil {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process config required"))
	}
	dir, err := paths.Resolve(cfg.GetCwd(), u.Home, s.opts.State.DefaultWorkdir())
	if err != nil {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("resolve cwd %q: %w", cfg.GetCwd(), err))
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cwd '%s' does not exist", dir))
	}

	p := &proc{
		log:     s.log,
		config:  proto.Clone(cfg).(*pb.ProcessConfig),
		out:     newFanout(s.opts.WriteDeadline),
		outDone: make(chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if msg.Tag != nil {
		p.tag, p.hasTag = *msg.Tag, true
	}
	spec := &spawnSpec{
		cmd:  cfg.GetCmd(),
		args: cfg.GetArgs(),
		env:  buildEnv(u, s.opts.State.Env(), cfg.GetEnvs()),
		dir:  dir,
		sys:  &syscall.SysProcAttr{Credential: credential(u)},
	}
	kind := cgroups.KindUser
	switch {
	case p.hasTag && p.tag == SystemTag:
		kind = cgroups.KindSystem
	case msg.Pty != nil:
		kind = cgroups.KindPTY
	}
	if fd, ok := s.opts.Cgroups.FD(kind); ok {
		spec.sys.UseCgroupFD, spec.sys.CgroupFD = true, fd
	}

	var (
		childFiles []*os.File // closed once the child has them
		childFDs   []int      // raw fds closed likewise
		readFiles  []*os.File
		readKinds  []outKind
	)
	closeChild := func() {
		for _, f := range childFiles {
			f.Close()
		}
		for _, fd := range childFDs {
			unix.Close(fd)
		}
	}
	failParent := func() {
		for _, f := range readFiles {
			f.Close()
		}
		if p.stdin != nil {
			p.stdin.Close()
		}
		if p.master != nil {
			p.master.Close()
		}
	}
	if msg.Pty != nil {
		cols, rows := msg.Pty.GetSize().GetCols(), msg.Pty.GetSize().GetRows()
		master, slave, err := openPTY(cols, rows)
		if err != nil {
			return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("error starting pty with command '%s' in dir '%s' with '%d' cols and '%d' rows: %w", cmdline(cfg), dir, cols, rows, err))
		}
		p.master = master
		childFDs = append(childFDs, slave)
		spec.files = []uintptr{uintptr(slave), uintptr(slave), uintptr(slave)}
		spec.sys.Setsid, spec.sys.Setctty, spec.sys.Ctty = true, true, 0
		readFiles, readKinds = []*os.File{master}, []outKind{outPTY}
	} else {
		fail := func(err error) (*proc, *subscriber, error) {
			closeChild()
			failParent()
			return nil, nil, connect.NewError(connect.CodeInternal, fmt.Errorf("create pipes: %w", err))
		}
		var stdin *os.File
		if msg.Stdin == nil || *msg.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			stdin, p.stdin = r, w
		} else if stdin, err = os.Open(os.DevNull); err != nil {
			return fail(err)
		}
		childFiles = append(childFiles, stdin)
		outR, outW, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		childFiles, readFiles = append(childFiles, outW), append(readFiles, outR)
		errR, errW, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		childFiles, readFiles = append(childFiles, errW), append(readFiles, errR)
		readKinds = []outKind{outStdout, outStderr}
		for _, f := range readFiles {
			setPipeSize(f, pipeSize)
		}
		// Fd switches the child's ends to blocking mode, as programs expect.
		spec.files = []uintptr{stdin.Fd(), outW.Fd(), errW.Fd()}
		spec.sys.Setpgid = true
	}

	sub := p.out.subscribe()
	pid, ws, err := s.opts.Reaper.Start(func() (int, error) { return s.spawn.start(spec) })
	closeChild()
	if err != nil {
		failParent()
		if msg.Pty != nil {
			return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("error starting pty with command '%s' in dir '%s' with '%d' cols and '%d' rows: %w", cmdline(cfg), dir, msg.Pty.GetSize().GetCols(), msg.Pty.GetSize().GetRows(), err))
		}
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("error starting process '%s': %w", cmdline(cfg), err))
	}
	p.pid = pid
	p.in = newInputQueue(p.apply)
	s.table.add(p)
	p.startReaders(readFiles, readKinds)
	var deadline *time.Timer
	if lifetime > 0 {
		deadline = time.AfterFunc(lifetime, func() {
			_ = unix.Kill(-pid, unix.SIGKILL)
			p.stopWaitingForOutput()
		})
	}
	go p.wait(ws, deadline, s.table)
	s.log.Debug("process started", "event_type", "process_start", "pid", pid, "command", cfg.GetCmd(), "username", u.Name, "pty", msg.Pty != nil)
	return p, sub, nil
}

// stream sends start, data, keepalives and end to one subscriber. Leaving
// (client gone, cancel, deadline) only unsubscribes; the process lives on.
func (s *Service) stream(ctx context.Context, p *proc, sub *subscriber, keepalive time.Duration, sendRaw func(*pb.ProcessEvent) error) error {
	if sub != nil {
		defer p.out.unsubscribe(sub)
	}
	// A send may block this long; twice the queue's stall so a cut stream
	// can still deliver its resource_exhausted to a reader that resumes.
	sendTimeout := 2 * s.opts.WriteDeadline
	send := func(ev *pb.ProcessEvent) error {
		writectl.SetWriteDeadline(ctx, time.Now().Add(sendTimeout))
		return sendRaw(ev)
	}
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: uint32(p.pid)}}}); err != nil {
		return connect.NewError(connect.CodeUnknown, fmt.Errorf("send start event: %w", err))
	}
	sendEnd := func() error {
		// The end event and connect's end-of-stream leave in one write:
		// net/http flushes when the handler returns.
		_ = writectl.Hold(ctx)
		if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: p.end}}); err != nil {
			return connect.NewError(connect.CodeUnknown, fmt.Errorf("send end event: %w", err))
		}
		return nil
	}
	if sub == nil { // already ended: serve the retained result
		<-p.done
		return sendEnd()
	}
	sendData := func(c chunk) error {
		d := &pb.ProcessEvent_DataEvent{}
		switch c.kind {
		case outStdout:
			d.Output = &pb.ProcessEvent_DataEvent_Stdout{Stdout: c.data}
		case outStderr:
			d.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: c.data}
		default:
			d.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: c.data}
		}
		if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: d}}); err != nil {
			return connect.NewError(connect.CodeUnknown, fmt.Errorf("send data event: %w", err))
		}
		return nil
	}
	ka := time.NewTimer(keepalive)
	defer ka.Stop()
	for {
		select {
		case c := <-sub.ch:
			// Queued chunks leave in one flush; the write deadline frees
			// this goroutine from a client that stopped reading.
			release := writectl.Hold(ctx)
			err := sendData(c)
			for n := 1; err == nil && n < sendBatch; n++ {
				select {
				case c = <-sub.ch:
					err = sendData(c)
					continue
				default:
				}
				break
			}
			if ferr := release(); err == nil && ferr != nil {
				err = connect.NewError(connect.CodeUnknown, fmt.Errorf("flush: %w", ferr))
			}
			if err != nil {
				return err
			}
			ka.Reset(keepalive)
		case <-sub.gone:
			return cutErr(sub)
		case <-p.done:
			select {
			case <-sub.gone: // a cut stream must not look complete
				return cutErr(sub)
			default:
			}
			for {
				select {
				case c := <-sub.ch:
					if err := sendData(c); err != nil {
						return err
					}
					continue
				default:
				}
				break
			}
			return sendEnd()
		case <-ka.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return connect.NewError(connect.CodeUnknown, fmt.Errorf("send keepalive: %w", err))
			}
			ka.Reset(keepalive)
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
			}
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
}

// cutErr is the stream's end once its subscription was dropped.
func cutErr(sub *subscriber) error {
	if sub.err != nil {
		return connect.NewError(connect.CodeResourceExhausted, sub.err)
	}
	return nil
}

// Connect attaches to a live process (output from now on) or reports the
// retained end of one that finished recently.
func (s *Service) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	keepalive, err := keepaliveInterval(req.Header())
	if err != nil {
		return err
	}
	p, err := s.table.find(req.Msg.GetProcess(), true)
	if err != nil {
		return err
	}
	sub := p.out.subscribe() // nil once the output ended
	return s.stream(ctx, p, sub, keepalive, func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.ConnectResponse{Event: ev})
	})
}

// List returns the live processes with their configs as received.
func (s *Service) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	resp := &pb.ListResponse{}
	for _, p := range s.table.list() {
		info := &pb.ProcessInfo{Config: p.config, Pid: uint32(p.pid)}
		if p.hasTag {
			info.Tag = proto.String(p.tag)
		}
		resp.Processes = append(resp.Processes, info)
	}
	return connect.NewResponse(resp), nil
}

// do finds the live target and applies op in arrival order.
func (s *Service) do(ctx context.Context, sel *pb.ProcessSelector, op *inputOp) error {
	p, err := s.table.find(sel, false)
	if err != nil {
		return err
	}
	return s.doOn(ctx, p, op)
}

func (s *Service) doOn(ctx context.Context, p *proc, op *inputOp) error {
	op.ctx = ctx
	err := p.in.do(op)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errExited):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", p.pid))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	}
	return err
}

// inputOpFor validates a ProcessInput.
func inputOpFor(in *pb.ProcessInput) (*inputOp, error) {
	switch x := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		return &inputOp{kind: opWrite, data: x.Stdin}, nil
	case *pb.ProcessInput_Pty:
		return &inputOp{kind: opWrite, toPTY: true, data: x.Pty}, nil
	}
	return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("input required: stdin or pty"))
}

// Update resizes a PTY; without pty it is a no-op.
func (s *Service) Update(ctx context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := s.table.find(req.Msg.GetProcess(), false)
	if err != nil {
		return nil, err
	}
	if req.Msg.Pty == nil {
		return connect.NewResponse(&pb.UpdateResponse{}), nil
	}
	size := req.Msg.Pty.GetSize()
	if err := s.doOn(ctx, p, &inputOp{kind: opResize, cols: size.GetCols(), rows: size.GetRows()}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

// SendInput writes to stdin or the PTY.
func (s *Service) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	if req.Msg.GetProcess().GetSelector() == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errSelector)
	}
	op, err := inputOpFor(req.Msg.GetInput())
	if err != nil {
		return nil, err
	}
	if err := s.do(ctx, req.Msg.GetProcess(), op); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// StreamInput applies a client stream of input in order.
func (s *Service) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var target *proc
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			p, err := s.table.find(ev.Start.GetProcess(), false)
			if err != nil {
				return nil, err
			}
			target = p
		case *pb.StreamInputRequest_Data:
			if target == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("no start event received"))
			}
			op, err := inputOpFor(ev.Data.GetInput())
			if err != nil {
				return nil, err
			}
			if err := s.doOn(ctx, target, op); err != nil {
				return nil, err
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("stream input event required"))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, connect.NewError(connect.CodeUnknown, fmt.Errorf("read input stream: %w", err))
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// SendSignal sends SIGKILL or SIGTERM to the process's whole group.
func (s *Service) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	var sig unix.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = unix.SIGKILL
	case pb.Signal_SIGNAL_SIGTERM:
		sig = unix.SIGTERM
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid signal: %s", req.Msg.GetSignal()))
	}
	if err := s.do(ctx, req.Msg.GetProcess(), &inputOp{kind: opSignal, sig: sig}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// CloseStdin closes the stdin pipe (EOF to the process); idempotent.
func (s *Service) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	if err := s.do(ctx, req.Msg.GetProcess(), &inputOp{kind: opClose}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}
