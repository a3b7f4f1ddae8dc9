package host

import (
	"errors"
	"testing"
	"time"
)

func TestClockNeedsStep(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		target time.Duration // target - now
		first  bool
		want   bool
	}{
		{0, false, false},
		{50 * time.Millisecond, false, false},
		{50*time.Millisecond + 1, false, true},
		{time.Hour, false, true},
		{-5 * time.Second, false, false},
		{-5*time.Second - 1, false, true},
		{-time.Second, false, false},
		// The first sync since boot corrects an RTC-derived clock both ways.
		{0, true, false},
		{-50 * time.Millisecond, true, false},
		{-50*time.Millisecond - 1, true, true},
		{-time.Second, true, true},
		{50*time.Millisecond + 1, true, true},
	} {
		if got := ClockNeedsStep(now, now.Add(c.target), c.first); got != c.want {
			t.Errorf("guest %v behind (first %v): got %v, want %v", c.target, c.first, got, c.want)
		}
	}
}

func TestClockSyncTo(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var set []time.Time
	c := Clock{Now: func() time.Time { return now }, Set: func(t time.Time) error { set = append(set, t); return nil }}
	if stepped, err := c.SyncTo(now.Add(10*time.Millisecond), false); stepped || err != nil {
		t.Fatalf("small drift stepped: %v %v", stepped, err)
	}
	target := now.Add(3 * time.Minute)
	if stepped, err := c.SyncTo(target, false); !stepped || err != nil || len(set) != 1 || !set[0].Equal(target) {
		t.Fatalf("stale clock not stepped: %v %v %v", stepped, err, set)
	}
	c.Set = func(time.Time) error { return errors.New("EPERM") }
	if stepped, err := c.SyncTo(target, false); !stepped || err == nil {
		t.Fatal("set error not reported")
	}
}

// TestSetRealtime steps the real clock 300 ms ahead and restores it from
// the monotonic clock right away (we run as root; the step lasts
// microseconds, below the 1 s clock-jump detectors of other envd code).
func TestSetRealtime(t *testing.T) {
	const step = 300 * time.Millisecond
	start := time.Now()
	if err := SetRealtime(start.Add(step)); err != nil {
		t.Fatalf("SetRealtime: %v", err)
	}
	wall := time.Now().Round(0) // strip the monotonic reading
	restoreErr := SetRealtime(start.Add(time.Since(start)))
	if restoreErr != nil {
		t.Fatalf("restore clock: %v", restoreErr)
	}
	if skew := wall.Sub(start.Round(0)); skew < step || skew > step+10*time.Second {
		t.Fatalf("after stepping +%v the wall clock moved by %v", step, skew)
	}
	if d := time.Now().Round(0).Sub(start.Round(0)) - time.Since(start); d > time.Second || d < -time.Second {
		t.Fatalf("clock not restored: off by %v", d)
	}
}
