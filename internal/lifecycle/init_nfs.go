package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/envd-go/envd/internal/pid1"
)

// VolumeMount is one /init volumeMounts entry (snake_case keys, as e2b's
// orchestrator sends them).
type VolumeMount struct {
	NFSTarget string `json:"nfs_target"`
	Path      string `json:"path"`
}

// nfsOptions are e2b's: synchronous, uncached NFSv3 over TCP on fixed
// ports, so writes are visible to other sandboxes sharing the volume.
const nfsOptions = "fg,hard,sync,rsize=1048576,wsize=1048576,mountproto=tcp,mountport=2049,proto=tcp,port=2049,nfsvers=3,noacl,noac,lookupcache=none"

const (
	nfsPassTimeout = 10 * time.Second
	umountTimeout  = 2 * time.Second
)

// InitCommands names the helper programs (tests point them at stand-ins).
type InitCommands struct {
	Mount, Umount, Findmnt string
}

func (c InitCommands) withDefaults() InitCommands {
	if c.Mount == "" {
		c.Mount = "mount"
	}
	if c.Umount == "" {
		c.Umount = "umount"
	}
	if c.Findmnt == "" {
		c.Findmnt = "findmnt"
	}
	return c
}

// nfsMounter performs /init volume mounts, one pass at a time.
type nfsMounter struct {
	reaper *pid1.Reaper
	cmds   InitCommands

	pass    sync.Mutex // held for a whole pass; TryLock lets a concurrent /init skip
	mu      sync.Mutex
	mounted map[string]string // path → lifecycleID it was mounted for
}

func newNFSMounter(reaper *pid1.Reaper, cmds InitCommands) *nfsMounter {
	return &nfsMounter{reaper: reaper, cmds: cmds.withDefaults(), mounted: map[string]string{}}
}

// mountAll mounts every volume not yet mounted for lifecycleID, in
// parallel. It skips (nil) when another pass is running. The pass has its
// own deadline and is not cancelled when the request ends.
func (m *nfsMounter) mountAll(mounts []VolumeMount, lifecycleID string) error {
	if len(mounts) == 0 {
		return nil
	}
	if !m.pass.TryLock() {
		return nil
	}
	defer m.pass.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), nfsPassTimeout)
	defer cancel()
	errs := make([]error, len(mounts))
	var wg sync.WaitGroup
	for i, vm := range mounts {
		wg.Go(func() { errs[i] = m.mountOne(ctx, vm, lifecycleID) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (m *nfsMounter) mountOne(ctx context.Context, vm VolumeMount, lifecycleID string) error {
	if vm.Path == "" || vm.NFSTarget == "" {
		return fmt.Errorf("volume mount %q → %q: nfs_target and path are required", vm.NFSTarget, vm.Path)
	}
	m.mu.Lock()
	id, ok := m.mounted[vm.Path]
	m.mu.Unlock()
	if ok && id == lifecycleID {
		return nil
	}
	// Something is mounted there already (an earlier lifecycle's volume, or
	// a mount that survived a snapshot): take it down first.
	if src, err := runCmd(ctx, m.reaper, m.cmds.Findmnt, "--noheadings", "--output", "SOURCE", vm.Path); err == nil && strings.TrimSpace(src) != "" {
		uctx, cancel := context.WithTimeout(ctx, umountTimeout)
		_, err := runCmd(uctx, m.reaper, m.cmds.Umount, "--force", vm.Path)
		cancel()
		if err != nil {
			uctx, cancel := context.WithTimeout(ctx, umountTimeout)
			_, err = runCmd(uctx, m.reaper, m.cmds.Umount, "--lazy", vm.Path)
			cancel()
			if err != nil {
				return fmt.Errorf("unmount %s: %w", vm.Path, err)
			}
		}
		m.mu.Lock()
		delete(m.mounted, vm.Path)
		m.mu.Unlock()
	}
	if err := os.MkdirAll(vm.Path, 0o755); err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	if _, err := runCmd(ctx, m.reaper, m.cmds.Mount, "-v", "-t", "nfs", "-o", nfsOptions, vm.NFSTarget, vm.Path); err != nil {
		return fmt.Errorf("mount %s on %s: %w", vm.NFSTarget, vm.Path, err)
	}
	m.mu.Lock()
	m.mounted[vm.Path] = lifecycleID
	m.mu.Unlock()
	return nil
}
