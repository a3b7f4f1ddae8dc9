// Command envd is the guest agent of a sandbox microVM. main parses flags
// into a config and calls run; the wiring lives in run.go.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
)

// Set at link time: -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "0.6.11"
	commit  = ""
)

func main() {
	cfg, exit := parseFlags(os.Args[1:])
	if exit >= 0 {
		os.Exit(exit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "envd:", err)
		os.Exit(1)
	}
}

// parseFlags returns the config, or an exit status >= 0 when envd should
// exit right away (-version, -commit, -help, bad flags).
func parseFlags(args []string) (config, int) {
	var cfg config
	fs := flag.NewFlagSet("envd", flag.ContinueOnError)
	fs.Int64Var(&cfg.Port, "port", 49983, "port to listen on (all interfaces)")
	fs.BoolVar(&cfg.IsNotFC, "isnotfc", false, "not running in Firecracker: no MMDS, E2B_SANDBOX=false")
	printVersion := fs.Bool("version", false, "print the version and exit")
	printCommit := fs.Bool("commit", false, "print the source commit and exit")
	fs.StringVar(&cfg.Cmd, "cmd", "", "program to start at boot (no shell), tag init-cmd")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup v2 mount for envd's groups")
	fs.BoolVar(&cfg.NoCgroups, "no-cgroups", false, "do not place processes in cgroups")
	fs.StringVar(&cfg.GuestAddress, "guest-address", "169.254.0.21", "address loopback-only TCP listeners are forwarded to")
	fs.BoolVar(&cfg.Verbose, "verbose", false, "write JSON logs to stdout")
	fs.BoolVar(&cfg.Health204, "health-204", false, "answer /health with e2b's bare 204 instead of 200 {\"version\"}")
	fs.Bool("resume-handover", false, "accepted for e2b compatibility; live upgrade is not supported")
	fs.StringVar(&cfg.MMDSAddress, "mmds-address", "http://169.254.169.254", "metadata service (MMDS) base URL")
	fs.StringVar(&cfg.HostsFile, "hosts-file", "/etc/hosts", "hosts file /init writes the events alias to")
	fs.StringVar(&cfg.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "system CA bundle /init appends caBundle to")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return cfg, 0
		}
		return cfg, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "envd: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return cfg, 2
	}
	switch {
	case *printVersion:
		fmt.Println(version)
		return cfg, 0
	case *printCommit:
		fmt.Println(commit)
		return cfg, 0
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	if a, err := netip.ParseAddr(cfg.GuestAddress); err != nil || a.Unmap().IsLoopback() || a.IsUnspecified() {
		fmt.Fprintf(os.Stderr, "envd: invalid -guest-address %q (need a non-loopback IP)\n", cfg.GuestAddress)
		return cfg, 2
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		fmt.Fprintf(os.Stderr, "envd: invalid -port %d\n", cfg.Port)
		return cfg, 2
	}
	return cfg, -1
}
