package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/envd-go/envd/envdclient"
)

func healthCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "health",
		Short: "Check that envd answers (GET /health)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			h, err := c.Health(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(h)
			}
			if h.Version == "" {
				fmt.Fprintln(g.stdout, "ok")
			} else {
				fmt.Fprintf(g.stdout, "ok (envd %s)\n", h.Version)
			}
			return nil
		},
	}
}

func metricsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "metrics",
		Short: "Show CPU, memory and disk use of the guest",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			m, err := c.Metrics(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(m)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "cpu\t%d cores, %.2f%% used\n", m.CPUCount, m.CPUUsedPct)
			fmt.Fprintf(tw, "memory\t%s / %s used, %s cache\n", bytesText(m.MemUsed), bytesText(m.MemTotal), bytesText(m.MemCache))
			fmt.Fprintf(tw, "disk\t%s / %s used\n", bytesText(m.DiskUsed), bytesText(m.DiskTotal))
			return tw.Flush()
		},
	}
}

func bytesText(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func envsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "envs",
		Short: "Show the default environment of new processes",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			env, err := c.Envs(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(env)
			}
			keys := make([]string, 0, len(env))
			for k := range env {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(g.stdout, "%s=%s\n", k, env[k])
			}
			return nil
		},
	}
}

// parseEnv turns KEY=VALUE arguments into a map.
func parseEnv(kv []string) (map[string]string, error) {
	m := make(map[string]string, len(kv))
	for _, s := range kv {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Errorf("--env %q: want KEY=VALUE", s)}
		}
		m[k] = v
	}
	return m, nil
}

func initCmd(g *globals) *cobra.Command {
	var (
		req      envdclient.InitRequest
		env      []string
		clearEnv bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Configure envd (POST /init): token, default user, workdir, environment",
		Long: "Sends POST /init with the current time as timestamp. Without --access-token a " +
			"token that is set is cleared (when envd allows it).",
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(env) > 0 || clearEnv {
				m, err := parseEnv(env)
				if err != nil {
					return err
				}
				req.EnvVars = m
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			res, err := c.Init(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]string{"version": res.Version})
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.AccessToken, "access-token", "", "access token envd requires from now on")
	f.StringVar(&req.DefaultUser, "default-user", "", "default user of processes and file operations")
	f.StringVar(&req.DefaultWorkdir, "workdir", "", "default working directory")
	f.StringArrayVar(&env, "env", nil, "default environment variable KEY=VALUE (repeatable; replaces the set)")
	f.BoolVar(&clearEnv, "clear-env", false, "replace the default environment with only the --env given")
	f.BoolVar(&req.NoTimestamp, "no-timestamp", false, "send no timestamp (no clock sync, no ordering)")
	return cmd
}

func snapshotCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Snapshot lifecycle calls"}
	cmd.AddCommand(&cobra.Command{
		Use:   "prepare",
		Short: "Tell envd a snapshot is about to be taken (POST /snapshot/prepare)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.PrepareSnapshot(cmd.Context())
		},
	})
	return cmd
}

// tabs is a tabwriter for tables on stdout.
func (g *globals) tabs() *tabwriter.Writer {
	return tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
}
