package process

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// outKind says which output a chunk came from.
type outKind uint8

const (
	outStdout outKind = iota
	outStderr
	outPTY
)

// chunk is one read from an output. data is shared by every subscriber and
// must not be modified.
type chunk struct {
	kind outKind
	data []byte
}

// subscriberQueue is how many chunks a subscriber may have pending (at most
// 2 MiB of pipe output) before the reader waits for it.
const subscriberQueue = 64

// errStalled is why a subscriber whose queue stayed full is cut.
var errStalled = errors.New("output subscriber stalled: queue full past the write deadline")

// subscriber is one attached stream (Start or Connect).
type subscriber struct {
	ch   chan chunk
	gone chan struct{} // closed when cut or unsubscribed
	once sync.Once
	err  error // why it was cut; written before gone is closed
}

func (s *subscriber) drop(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.gone)
	})
}

// fanout broadcasts output to every subscriber. Readers push each chunk to
// every queue in order; a subscriber whose queue stays full for longer than
// stall is cut, so a dead client delays the others at most once by stall
// while a slow but moving one still gets every byte (backpressure, no
// drops). With no subscriber, chunks are discarded.
type fanout struct {
	stall time.Duration

	mu     sync.Mutex
	subs   atomic.Pointer[[]*subscriber] // copy-on-write; read lock-free by readers
	closed bool
	done   chan struct{} // closed by close: in-flight pushes give up
}

func newFanout(stall time.Duration) *fanout {
	f := &fanout{stall: stall, done: make(chan struct{})}
	f.subs.Store(&[]*subscriber{})
	return f
}

// subscribe attaches a new subscriber, or returns nil once the output ended.
func (f *fanout) subscribe() *subscriber {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	s := &subscriber{ch: make(chan chunk, subscriberQueue), gone: make(chan struct{})}
	old := *f.subs.Load()
	next := make([]*subscriber, len(old), len(old)+1)
	copy(next, old)
	next = append(next, s)
	f.subs.Store(&next)
	return s
}

// unsubscribe detaches s (idempotent). A reader blocked on s gives up.
func (f *fanout) unsubscribe(s *subscriber) {
	f.mu.Lock()
	old := *f.subs.Load()
	next := make([]*subscriber, 0, len(old))
	for _, x := range old {
		if x != s {
			next = append(next, x)
		}
	}
	f.subs.Store(&next)
	f.mu.Unlock()
	s.drop(nil)
}

// has reports whether anyone listens (readers then keep their buffer).
func (f *fanout) has() bool { return len(*f.subs.Load()) > 0 }

// publish pushes c to every subscriber. timer is the caller's own reusable
// timer (one per reader goroutine).
func (f *fanout) publish(c chunk, timer **time.Timer) {
	for _, s := range *f.subs.Load() {
		select {
		case s.ch <- c:
			continue
		case <-s.gone:
			continue
		default:
		}
		if *timer == nil {
			*timer = time.NewTimer(f.stall)
		} else {
			(*timer).Reset(f.stall)
		}
		select {
		case s.ch <- c:
		case <-s.gone:
		case <-f.done:
		case <-(*timer).C:
			s.drop(errStalled)
			f.unsubscribe(s)
		}
		(*timer).Stop()
	}
}

// close ends the output: no new subscribers, pending pushes give up.
func (f *fanout) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	close(f.done)
}
