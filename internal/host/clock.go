package host

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// The guest clock is stepped when it is further than this behind or ahead
// of a timestamp from the host. Behind is tight (after a restore the guest
// clock is stale by the pause length); ahead is loose so host/guest jitter
// never makes the clock go backwards.
const (
	MaxClockBehind = 50 * time.Millisecond
	MaxClockAhead  = 5 * time.Second
)

// ClockNeedsStep reports whether a clock reading now should be set to
// target. The first timestamp since boot is applied when it is off by more
// than MaxClockBehind either way: until then the guest clock came from the
// RTC (one-second resolution), a worse source than a slightly late host
// timestamp. After that, e2b's asymmetric bounds apply.
func ClockNeedsStep(now, target time.Time, first bool) bool {
	d := target.Sub(now)
	if first {
		return d > MaxClockBehind || -d > MaxClockBehind
	}
	return d > MaxClockBehind || -d > MaxClockAhead
}

// SetRealtime sets CLOCK_REALTIME (needs CAP_SYS_TIME).
func SetRealtime(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime(CLOCK_REALTIME): %w", err)
	}
	return nil
}

// Clock reads and sets the wall clock; tests replace it.
type Clock struct {
	Now func() time.Time
	Set func(time.Time) error
}

// SystemClock is the real wall clock.
var SystemClock = Clock{Now: time.Now, Set: SetRealtime}

// SyncTo steps the clock to target when ClockNeedsStep says so, and
// reports whether it did. first is true until a timestamp was applied.
func (c Clock) SyncTo(target time.Time, first bool) (bool, error) {
	if !ClockNeedsStep(c.Now(), target, first) {
		return false, nil
	}
	return true, c.Set(target)
}
