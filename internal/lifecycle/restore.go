package lifecycle

import (
	"encoding/json"
	"net/http"
	"time"

	"golang.org/x/sys/unix"
)

// jumpDetector notices a restore nobody announced. In a restored VM every
// guest clock resumes where the snapshot stopped it (QEMU, Firecracker), so
// nothing jumps by itself; what jumps is the wall clock once /init or
// chrony steps it, i.e. REALTIME−MONOTONIC. Hypervisors that keep
// BOOTTIME running show it in BOOTTIME−MONOTONIC. A tick that arrives far
// later than scheduled in MONOTONIC time is counted too.
type jumpDetector struct {
	done, stopped chan struct{}
}

func startJumpDetector(interval, threshold time.Duration, onJump func(time.Duration)) *jumpDetector {
	d := &jumpDetector{done: make(chan struct{}), stopped: make(chan struct{})}
	go d.run(interval, threshold, onJump)
	return d
}

func (d *jumpDetector) stop() {
	select {
	case <-d.done:
	default:
		close(d.done)
	}
	<-d.stopped
}

type clockSample struct{ real, mono, boot time.Duration }

func readClocks() clockSample {
	var r, m, b unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &r)
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &m)
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &b)
	return clockSample{time.Duration(r.Nano()), time.Duration(m.Nano()), time.Duration(b.Nano())}
}

// jumped returns the offset change between two samples when it exceeds
// threshold, else 0. lateBy is how much more MONOTONIC time passed than
// the period asked for.
func jumped(prev, cur clockSample, period, threshold time.Duration) time.Duration {
	wall := (cur.real - cur.mono) - (prev.real - prev.mono)
	boot := (cur.boot - cur.mono) - (prev.boot - prev.mono)
	late := (cur.mono - prev.mono) - period
	for _, d := range []time.Duration{wall, boot} {
		if d > threshold || d < -threshold {
			return d
		}
	}
	// Scheduling delay on a loaded machine stays well under this.
	if late > 5*threshold {
		return late
	}
	return 0
}

func (d *jumpDetector) run(interval, threshold time.Duration, onJump func(time.Duration)) {
	defer close(d.stopped)
	t := time.NewTicker(interval)
	defer t.Stop()
	prev := readClocks()
	for {
		select {
		case <-d.done:
			return
		case <-t.C:
			cur := readClocks()
			if j := jumped(prev, cur, interval, threshold); j != 0 {
				onJump(j)
			}
			prev = cur
		}
	}
}

func snapJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
