package process

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// controlGrace bounds how long blocked input writes may hold up a signal,
// resize or close queued behind them: every write ahead of it must finish
// within controlGrace of its arrival, or fails with an error (nothing is
// dropped silently, and no control op waits forever).
const controlGrace = 500 * time.Millisecond

type opKind uint8

const (
	opWrite  opKind = iota // data to stdin or the PTY master
	opResize               // TIOCSWINSZ
	opSignal               // kill(-pgid, sig)
	opClose                // close stdin
)

// inputOp is one input-side request, applied in arrival order.
type inputOp struct {
	ctx        context.Context
	kind       opKind
	toPTY      bool // opWrite: the target is the PTY master
	data       []byte
	cols, rows uint32
	sig        unix.Signal
	res        chan error // buffered; receives the outcome once
	queued     time.Time  // control ops: arrival
}

// errExited fails input that reaches a process after it finished.
var errExited = errors.New("process exited")

// inputQueue applies SendInput, StreamInput, Update, SendSignal and
// CloseStdin of one process strictly in arrival order on one goroutine.
// Nothing is merged or dropped. A write that blocks (the program does not
// read) is interrupted when its caller gives up or when a control op
// queued behind it has waited controlGrace.
type inputQueue struct {
	apply func(*inputOp, *inputQueue) error // runs on the queue goroutine

	mu       sync.Mutex
	ops      []*inputOp
	closed   bool
	started  bool      // run goroutine exists
	controls int       // non-write ops queued and not yet applied
	hurryBy  time.Time // writes must end by then while controls > 0
	cur      *inputOp  // write in progress
	curFile  *os.File
	wake     chan struct{}
	finished chan struct{}
}

// newInputQueue returns an idle queue; its goroutine starts with the
// first op (most processes never get input).
func newInputQueue(apply func(*inputOp, *inputQueue) error) *inputQueue {
	return &inputQueue{apply: apply, wake: make(chan struct{}, 1), finished: make(chan struct{})}
}

// do queues op and waits for its outcome or ctx. A queued op whose caller
// gave up is skipped; a running write is interrupted.
func (q *inputQueue) do(op *inputOp) error {
	op.res = make(chan error, 1)
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errExited
	}
	q.ops = append(q.ops, op)
	if !q.started {
		q.started = true
		go q.run()
	}
	if op.kind != opWrite {
		op.queued = time.Now()
		if q.controls == 0 {
			q.hurryBy = op.queued.Add(controlGrace)
			if q.cur != nil {
				_ = q.curFile.SetWriteDeadline(q.hurryBy)
			}
		}
		q.controls++
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	select {
	case err := <-op.res:
		return err
	case <-op.ctx.Done():
		q.mu.Lock()
		if q.cur == op {
			_ = q.curFile.SetWriteDeadline(time.Now())
		}
		q.mu.Unlock()
		return op.ctx.Err()
	}
}

// write is called by apply on the queue goroutine for opWrite.
func (q *inputQueue) write(op *inputOp, f *os.File) error {
	q.mu.Lock()
	q.cur, q.curFile = op, f
	switch {
	case op.ctx.Err() != nil || q.closed:
		_ = f.SetWriteDeadline(time.Now())
	case q.controls > 0:
		_ = f.SetWriteDeadline(q.hurryBy)
	}
	q.mu.Unlock()
	_, err := f.Write(op.data)
	q.mu.Lock()
	q.cur, q.curFile = nil, nil
	_ = f.SetWriteDeadline(time.Time{})
	q.mu.Unlock()
	return err
}

func (q *inputQueue) run() {
	defer close(q.finished)
	for {
		q.mu.Lock()
		for len(q.ops) == 0 {
			if q.closed {
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
			<-q.wake
			q.mu.Lock()
		}
		op := q.ops[0]
		q.ops[0] = nil
		q.ops = q.ops[1:]
		closed := q.closed
		q.mu.Unlock()

		var err error
		switch {
		case op.ctx.Err() != nil:
			err = op.ctx.Err()
		case closed:
			err = errExited
		default:
			err = q.apply(op, q)
		}
		if op.kind != opWrite {
			q.mu.Lock()
			q.controls--
			for _, next := range q.ops { // the next control sets the pace
				if next.kind != opWrite {
					q.hurryBy = next.queued.Add(controlGrace)
					break
				}
			}
			q.mu.Unlock()
		}
		op.res <- err
	}
}

// close stops accepting input, hurries a running write and waits until
// every queued op has its outcome.
func (q *inputQueue) close() {
	q.mu.Lock()
	q.closed = true
	if q.cur != nil {
		_ = q.curFile.SetWriteDeadline(time.Now())
	}
	started := q.started
	q.mu.Unlock()
	if !started {
		return
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
	<-q.finished
}
