// Command envctl is the command line for people to drive an envd: run
// commands and shells, copy files, list and watch directories, check
// health and metrics.
//
//	envctl [--addr URL] [--token T] [--user U] <command>
//
// The address and token also come from ENVD_ADDR and ENVD_TOKEN (and the
// user from ENVD_USER). Errors are one line on stderr and a non-zero exit;
// exec, shell and attach exit with the remote process's exit code.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/envd-go/envd/envdclient"
)

// globals are the persistent flags every command sees.
type globals struct {
	addr    string
	token   string
	user    string
	timeout time.Duration
	json    bool
	stdout  io.Writer
	stderr  io.Writer
}

func (g *globals) client() (*envdclient.Client, error) {
	return envdclient.New(g.addr,
		envdclient.WithAccessToken(g.token),
		envdclient.WithUser(g.user),
		envdclient.WithUnaryTimeout(g.timeout),
	)
}

// printJSON writes v as indented JSON.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exitError carries a process exit code out of a command without a
// message (the remote process already said what it had to say).
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError marks bad command lines (exit 2).
type usageError struct{ error }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return 0
	}
	if code, ok := err.(exitError); ok {
		return int(code)
	}
	fmt.Fprintf(stderr, "envctl: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	if errors.Is(err, context.Canceled) {
		return 130
	}
	return 1
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "envctl",
		Short:         "Drive an envd guest agent",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	addr := os.Getenv("ENVD_ADDR")
	if addr == "" {
		addr = envdclient.DefaultAddr
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.addr, "addr", addr, "envd address (env ENVD_ADDR)")
	pf.StringVar(&g.token, "token", os.Getenv("ENVD_TOKEN"), "access token (env ENVD_TOKEN)")
	pf.StringVar(&g.user, "user", os.Getenv("ENVD_USER"), "guest user to act as (env ENVD_USER; default: envd's default user)")
	pf.DurationVar(&g.timeout, "timeout", envdclient.DefaultUnaryTimeout, "timeout of each short call (streams and transfers have none)")
	pf.BoolVar(&g.json, "json", false, "print JSON instead of text")
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		healthCmd(g), metricsCmd(g), envsCmd(g), initCmd(g), snapshotCmd(g),
		execCmd(g), shellCmd(g), attachCmd(g), psCmd(g), killCmd(g),
		cpCmd(g), lsCmd(g), statCmd(g), mkdirCmd(g), rmCmd(g), mvCmd(g), watchCmd(g),
	)
	return root
}

// args wraps a cobra positional-argument check so its failure exits 2.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// interruptible returns a context cancelled by SIGINT/SIGTERM/SIGHUP, for
// commands that simply stop when interrupted.
func interruptible(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
}
