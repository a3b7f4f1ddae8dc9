package process

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd-go/envd/gen/process"
)

// Read sizes: one read becomes one DataEvent.
const (
	pipeChunk = 32 << 10
	ptyChunk  = 16 << 10

	pipeRead = 128 << 10 // one read of a pipe
	pipeSize = 256 << 10 // F_SETPIPE_SZ for output pipes (default 64 KiB)
)

// drainAfterStop is how long output is still read after a SIGKILL/SIGTERM
// through the API once the process was reaped, for data already in the
// pipes; then envd stops waiting for descendants holding them open.
const drainAfterStop = 100 * time.Millisecond

// proc is one started process. Its own goroutines: one reader per output,
// the input queue, and wait (which owns the end of everything else).
type proc struct {
	log    *slog.Logger
	pid    int
	seq    uint64 // start order, set by table.add
	tag    string
	hasTag bool
	config *pb.ProcessConfig // as received

	master *os.File // PTY master; nil for pipes
	stdin  *os.File // pipe write end; nil without stdin or once closed. Input queue goroutine only.

	out     *fanout
	in      *inputQueue
	outputs []*os.File // read ends (or the master), for the drain deadline
	readers atomic.Int32
	outDone chan struct{} // closed when every reader finished

	reaped   atomic.Bool // the leader was waited for
	stopOnce sync.Once
	stop     chan struct{} // SIGKILL/SIGTERM via API or deadline: stop waiting for pipes

	done chan struct{} // closed after end is set and the output closed
	end  *pb.ProcessEvent_EndEvent
}

func (p *proc) isPTY() bool { return p.master != nil }

// stopWaitingForOutput is idempotent.
func (p *proc) stopWaitingForOutput() {
	p.stopOnce.Do(func() { close(p.stop) })
}

// startReaders starts one reader goroutine per output file.
func (p *proc) startReaders(files []*os.File, kinds []outKind) {
	p.outputs = files
	p.readers.Store(int32(len(files)))
	if len(files) == 0 {
		close(p.outDone)
	}
	for i, f := range files {
		go p.read(f, kinds[i])
	}
}

func (p *proc) read(f *os.File, kind outKind) {
	defer func() {
		if p.readers.Add(-1) == 0 {
			close(p.outDone)
		}
	}()
	if kind != outPTY {
		defer f.Close() // the master is closed by wait, after input stops
	}
	// Pipes are read in large gulps (fewer wake-ups and syscalls) and cut
	// into events of at most pipeChunk.
	size, chunkMax := pipeRead, pipeChunk
	if kind == outPTY {
		size, chunkMax = ptyChunk, ptyChunk
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	buf := make([]byte, size)
	for {
		n, err := f.Read(buf)
		if n > 0 && p.out.has() {
			var data []byte
			if n < size/8 {
				data = append([]byte(nil), buf[:n]...) // keep the big buffer
			} else {
				data, buf = buf[:n], make([]byte, size)
			}
			for len(data) > 0 {
				c := data[:min(len(data), chunkMax):min(len(data), chunkMax)]
				data = data[len(c):]
				p.out.publish(chunk{kind: kind, data: c}, &timer)
			}
		}
		if err != nil {
			// EOF, EIO (PTY slave side closed) and the drain deadline all
			// end the output normally.
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) {
				p.log.Warn("read process output", "pid", p.pid, "error", err)
			}
			return
		}
	}
}

// wait owns the end of the process: reap, output EOF (or the stop), end of
// input, EndEvent, retention. It runs once per process.
func (p *proc) wait(ws <-chan unix.WaitStatus, deadline *time.Timer, t *table) {
	status := <-ws
	p.reaped.Store(true)
	if deadline != nil {
		deadline.Stop()
	}
	select {
	case <-p.outDone:
	case <-p.stop:
		until := time.Now().Add(drainAfterStop)
		for _, f := range p.outputs {
			_ = f.SetReadDeadline(until)
		}
		<-p.outDone
	}
	p.in.close()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	if p.master != nil {
		p.master.Close()
	}
	p.end = endEvent(status)
	t.finish(p)
	p.out.close()
	close(p.done)
	p.log.Debug("process ended", "event_type", "process_end", "pid", p.pid, "status", p.end.Status)
}

// apply runs one input op on the input queue goroutine.
func (p *proc) apply(op *inputOp, q *inputQueue) error {
	switch op.kind {
	case opWrite:
		if op.toPTY {
			if p.master == nil {
				return connect.NewError(connect.CodeInternal, errors.New("error writing to pty: tty not assigned to process"))
			}
			if err := q.write(op, p.master); err != nil {
				return connect.NewError(connect.CodeInternal, fmt.Errorf("error writing to pty: %w", err))
			}
			return nil
		}
		if p.master != nil {
			return connect.NewError(connect.CodeInternal, errors.New("tty assigned to process — input should be written to the pty, not the stdin"))
		}
		if p.stdin == nil {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("error writing to stdin: %w", errNoStdin))
		}
		if err := q.write(op, p.stdin); err != nil {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("error writing to stdin: %w", err))
		}
		return nil
	case opClose:
		if p.master != nil {
			return connect.NewError(connect.CodeUnknown, errors.New("error closing stdin: cannot close stdin for PTY process — send Ctrl+D (0x04) instead"))
		}
		if p.stdin != nil {
			err := p.stdin.Close()
			p.stdin = nil
			if err != nil {
				return connect.NewError(connect.CodeInternal, fmt.Errorf("error closing stdin: %w", err))
			}
		}
		return nil
	case opResize:
		if p.master == nil {
			return connect.NewError(connect.CodeInternal, errors.New("error resizing tty: tty not assigned to process"))
		}
		if err := setWinsize(p.master, op.cols, op.rows); err != nil {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("error resizing tty: %w", err))
		}
		return nil
	case opSignal:
		// The process leads its own group; signal all of it so children
		// started by a shell die too.
		err := unix.Kill(-p.pid, op.sig)
		stops := op.sig == unix.SIGKILL || op.sig == unix.SIGTERM
		if stops {
			p.stopWaitingForOutput()
		}
		// An empty group after the reap means only escaped descendants
		// (new session) hold the output; not waiting for them is the point.
		if err != nil && !(stops && err == unix.ESRCH && p.reaped.Load()) {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("error sending signal: %w", err))
		}
		return nil
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("unknown input op %d", op.kind))
}

// endEvent renders a wait status the way Go's os/exec does.
func endEvent(ws unix.WaitStatus) *pb.ProcessEvent_EndEvent {
	switch {
	case ws.Exited():
		code := ws.ExitStatus()
		e := &pb.ProcessEvent_EndEvent{ExitCode: int32(code), Exited: true, Status: fmt.Sprintf("exit status %d", code)}
		if code != 0 {
			msg := e.Status
			e.Error = &msg
		}
		return e
	case ws.Signaled():
		s := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		msg := s
		return &pb.ProcessEvent_EndEvent{ExitCode: -1, Status: s, Error: &msg}
	}
	s := fmt.Sprintf("unknown wait status %#x", uint32(ws))
	return &pb.ProcessEvent_EndEvent{ExitCode: -1, Status: s, Error: &s}
}

func sortBySeq(ps []*proc) {
	slices.SortFunc(ps, func(a, b *proc) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
}
