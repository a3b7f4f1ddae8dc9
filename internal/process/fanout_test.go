package process

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestFanout: every subscriber gets every chunk in order; one that stops
// reading is cut after the stall and the others are not affected; with
// nobody subscribed nothing blocks.
func TestFanout(t *testing.T) {
	f := newFanout(200 * time.Millisecond)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for i := range 3 * subscriberQueue { // nobody listening: discarded
		f.publish(chunk{data: []byte{byte(i)}}, &timer)
	}
	live, stalled := f.subscribe(), f.subscribe()
	got := make(chan []byte)
	go func() {
		var all []byte
		for {
			select {
			case c := <-live.ch:
				all = append(all, c.data...)
			case <-live.gone:
				for len(live.ch) > 0 {
					all = append(all, (<-live.ch).data...)
				}
				got <- all
				return
			}
		}
	}()
	var want []byte
	for i := range 4 * subscriberQueue {
		b := []byte(fmt.Sprintf("%d,", i))
		want = append(want, b...)
		f.publish(chunk{kind: outStdout, data: b}, &timer)
	}
	select {
	case <-stalled.gone:
	default:
		t.Fatal("stalled subscriber not cut")
	}
	if stalled.err != errStalled || len(stalled.ch) != subscriberQueue {
		t.Fatalf("stalled: err %v, %d queued", stalled.err, len(stalled.ch))
	}
	f.unsubscribe(live)
	if all := <-got; !bytes.Equal(all, want) {
		t.Fatalf("live subscriber got %d of %d bytes", len(all), len(want))
	}
	if live.err != nil {
		t.Fatalf("unsubscribe set err %v", live.err)
	}
	f.close()
	if f.subscribe() != nil {
		t.Fatal("subscribe after close")
	}
}
