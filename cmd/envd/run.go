package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/term"

	"github.com/envd-go/envd/internal/cgroups"
	"github.com/envd-go/envd/internal/files"
	"github.com/envd-go/envd/internal/filesystem"
	"github.com/envd-go/envd/internal/host"
	"github.com/envd-go/envd/internal/lifecycle"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/ports"
	"github.com/envd-go/envd/internal/process"
	"github.com/envd-go/envd/internal/server"
	"github.com/envd-go/envd/internal/state"
)

type config struct {
	Port       int64
	IsNotFC    bool
	Cmd        string
	CgroupRoot string
	NoCgroups  bool
	Verbose    bool
	Health204  bool

	// GuestAddress is where loopback-only listeners are mirrored.
	GuestAddress string

	// MMDSAddress, HostsFile and CABundle are where /init and the MMDS
	// poll read and write (flags so tests can point them elsewhere).
	MMDSAddress, HostsFile, CABundle string
}

func newLogger(cfg config) *slog.Logger {
	var w io.Writer = io.Discard
	level := slog.LevelDebug
	if cfg.Verbose || cfg.IsNotFC {
		w = os.Stdout
	} else {
		w, level = os.Stderr, slog.LevelWarn
	}
	opts := &slog.HandlerOptions{Level: level}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func run(ctx context.Context, cfg config) error {
	log := newLogger(cfg)
	pid1.SetDefaultPath()
	if pid1.IsPID1() {
		_ = pid1.Boot(log, "/lib/modules") // logs what failed; serve anyway
	}
	st := state.New()
	if err := host.WriteSandboxFlag(st, host.DefaultRunDirs, !cfg.IsNotFC); err != nil {
		log.Warn("write sandbox flag files", "error", err)
	}
	// MMDS: polled at boot until it answers (Firecracker only), and again
	// for up to 60 s after every /init so a restored or cloned sandbox
	// learns its new id.
	mmds := host.NewMMDS(cfg.MMDSAddress)
	mmdsPoll := host.NewPoller(mmds, 50*time.Millisecond, func(md host.Metadata) {
		if err := host.ApplyMetadata(st, host.DefaultRunDirs, md); err != nil {
			log.Warn("write sandbox id files", "error", err)
		}
	}, log)
	defer mmdsPoll.Close()
	var initMMDS lifecycle.MetadataFetcher
	if !cfg.IsNotFC {
		initMMDS = mmds
		mmdsPoll.Poll(0)
	}

	reaper := pid1.NewReaper(os.Getpid() == 1)
	defer reaper.Close()
	// Runs before reaper.Close: children are signalled and reaped; as PID 1
	// this powers off instead of returning.
	defer pid1.Shutdown(log, reaper, 5*time.Second)

	sampler := host.NewCPUSampler(time.Second)
	sampler.Start()
	defer sampler.Stop()

	// Port forwarding: stopped by snapshot prepare, restarted on recovery.
	guest, _ := netip.ParseAddr(cfg.GuestAddress) // validated by parseFlags; zero → default
	fwd, err := ports.New(ports.Options{GuestAddr: guest, Logger: log})
	if err != nil {
		return err
	}
	fwd.Start()
	defer fwd.Stop()

	conns := lifecycle.NewConnTracker()
	snap := lifecycle.NewSnapshot(lifecycle.SnapshotOptions{Tracker: conns, Sampler: sampler, Logger: log, StopPorts: fwd.Stop, StartPorts: fwd.Start, CloseIdleClients: mmds.CloseIdleConnections})
	defer snap.Close()

	// Falls back to Noop (logged once) when cgroup2 is absent or unusable.
	var cg cgroups.Groups = cgroups.Noop{}
	if cfg.NoCgroups {
		log.Info("cgroups disabled by -no-cgroups")
	} else {
		cg = cgroups.Open(cgroups.Options{Root: cfg.CgroupRoot, Logger: log})
	}
	defer cg.Close()
	initAPI := lifecycle.NewInit(lifecycle.InitOptions{
		State: st, Version: version, Logger: log, Reaper: reaper, MMDS: initMMDS,
		HostsFile: cfg.HostsFile, CABundle: cfg.CABundle,
		BeforeApply: snap.OnInit,
		Authorized:  lifecycle.ThawAfterInit(cg, log),
		// Not with -isnotfc (unlike e2b): there is no MMDS to reach.
		AfterInit: func() {
			if !cfg.IsNotFC {
				mmdsPoll.Poll(60 * time.Second)
			}
		},
	})
	defer initAPI.Wait()

	procs := process.New(process.Options{State: st, Reaper: reaper, Cgroups: cg, Logger: log})
	fs := filesystem.New(filesystem.Options{State: st, Logger: log})
	fileRoutes := files.New(files.Options{State: st, Logger: log}).Routes()

	h := server.Handler(server.Deps{
		Version:         version,
		HealthNoContent: cfg.Health204,
		State:           st,
		Sampler:         sampler,
		Logger:          log,
		Process:         procs,
		Filesystem:      fs,
		Routes:          append(append(append(snap.Routes(), lifecycle.NewFreeze(cg).Routes()...), fileRoutes...), initAPI.Route()),
		OnHealth:        snap.OnHealth,
		PortStats: func() host.PortStats {
			s := fwd.Stats()
			return host.PortStats{PortsForwarded: s.Forwarded, PortsConnections: s.Connections, PortsConnectionsTotal: s.ConnectionsTotal}
		},
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", cfg.Port))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", cfg.Port, err)
	}
	log.Info("envd listening", "port", cfg.Port, "version", version)
	srv := server.New(h, conns.ConnState)
	snap.SetServer(srv)
	if cfg.Cmd != "" {
		// Through the Process service (listed, tag init-cmd); ends once started.
		go pid1.StartInitCmd(ctx, fmt.Sprintf("http://127.0.0.1:%d", cfg.Port), cfg.Cmd, log)
	}
	return server.Serve(ctx, srv, ln, 5*time.Second)
}
