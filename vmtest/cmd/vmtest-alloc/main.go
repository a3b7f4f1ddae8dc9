// Command vmtest-alloc is the allocation-heavy guest load of the VM
// lifecycle tests: goroutines allocate, fill, verify and drop buffers of
// random sizes, with GCs and returns of memory to the OS in between, so
// the Go heap and page allocator are busy at every snapshot. Any buffer
// that does not read back what was written is reported as CORRUPT and the
// program exits 1. It prints a progress line per second.
package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

type buf struct {
	seed uint64
	data []uint64
}

func fill(b *buf) {
	x := b.seed
	for i := range b.data {
		x = x*6364136223846793005 + 1442695040888963407
		b.data[i] = x
	}
}

func check(b *buf) bool {
	x := b.seed
	for i := range b.data {
		x = x*6364136223846793005 + 1442695040888963407
		if b.data[i] != x {
			return false
		}
	}
	return true
}

func main() {
	var verified, allocated atomic.Uint64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			live := make([]*buf, 64)
			for {
				i := r.IntN(len(live))
				if b := live[i]; b != nil {
					if !check(b) {
						fmt.Printf("CORRUPT buffer of %d words (seed %d)\n", len(b.data), b.seed)
						os.Exit(1)
					}
					verified.Add(1)
				}
				// Mostly small objects, sometimes large spans (up to 4 MiB).
				n := 1 + r.IntN(512)
				if r.IntN(16) == 0 {
					n = 1 + r.IntN(512<<10)
				}
				b := &buf{seed: r.Uint64(), data: make([]uint64, n)}
				fill(b)
				live[i] = b
				allocated.Add(uint64(n * 8))
			}
		}()
	}
	for t := 0; ; t++ {
		time.Sleep(time.Second)
		if t%5 == 4 {
			debug.FreeOSMemory() // scavenge: return pages, fault them back in
		} else {
			runtime.GC()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("alloc ok %d verified %d MiB allocated heap %d MiB\n", verified.Load(), allocated.Load()>>20, ms.HeapAlloc>>20)
	}
}
