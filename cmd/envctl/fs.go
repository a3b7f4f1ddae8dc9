package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/envd-go/envd/envdclient"
)

func lsCmd(g *globals) *cobra.Command {
	var (
		long  bool
		depth uint32
	)
	cmd := &cobra.Command{
		Use:   "ls [-l] [--depth N] [PATH]",
		Short: "List a directory in the guest",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			path := "."
			if len(argv) == 1 {
				path = argv[0]
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			entries, err := c.ListDir(cmd.Context(), path, depth)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(entries)
			}
			tw := g.tabs()
			for _, e := range entries {
				name := e.Name
				if depth > 1 {
					name = e.Path
				}
				if e.IsDir() {
					name += "/"
				}
				if e.SymlinkTarget != "" {
					name += " -> " + e.SymlinkTarget
				}
				if long {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", e.Permissions, e.Owner, e.Group, e.Size,
						e.ModTime.Local().Format("2006-01-02 15:04"), name)
				} else {
					fmt.Fprintln(tw, name)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&long, "long", "l", false, "long format: mode, owner, group, size, mtime")
	cmd.Flags().Uint32Var(&depth, "depth", 1, "levels to descend")
	return cmd
}

func printEntry(g *globals, e *envdclient.Entry) error {
	if g.json {
		return g.printJSON(e)
	}
	tw := g.tabs()
	fmt.Fprintf(tw, "path\t%s\n", e.Path)
	fmt.Fprintf(tw, "type\t%s\n", typeText(e.Type))
	fmt.Fprintf(tw, "size\t%d\n", e.Size)
	fmt.Fprintf(tw, "mode\t%s (%04o)\n", e.Permissions, uint32(e.Mode))
	fmt.Fprintf(tw, "owner\t%s:%s\n", e.Owner, e.Group)
	fmt.Fprintf(tw, "modified\t%s\n", e.ModTime.Local().Format(time.RFC3339Nano))
	if e.SymlinkTarget != "" {
		fmt.Fprintf(tw, "symlink to\t%s\n", e.SymlinkTarget)
	}
	for k, v := range e.Metadata {
		fmt.Fprintf(tw, "metadata\t%s=%s\n", k, v)
	}
	return tw.Flush()
}

func typeText(t string) string {
	switch t {
	case envdclient.TypeFile:
		return "file"
	case envdclient.TypeDirectory:
		return "directory"
	case envdclient.TypeSymlink:
		return "symlink"
	}
	return "other"
}

func statCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stat PATH",
		Short: "Describe a file or directory in the guest",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			e, err := c.Stat(cmd.Context(), argv[0])
			if err != nil {
				return err
			}
			return printEntry(g, e)
		},
	}
}

func mkdirCmd(g *globals) *cobra.Command {
	var parentsOK bool
	cmd := &cobra.Command{
		Use:   "mkdir [-p] PATH",
		Short: "Create a directory (and missing parents) in the guest",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			e, err := c.MakeDir(cmd.Context(), argv[0])
			if parentsOK && errors.Is(err, envdclient.ErrAlreadyExists) {
				e, err = c.Stat(cmd.Context(), argv[0])
			}
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(e)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&parentsOK, "parents", "p", false, "no error if the directory exists")
	return cmd
}

func rmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm PATH...",
		Short: "Remove files or directories (recursively) in the guest",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			for _, p := range argv {
				if err := c.Remove(cmd.Context(), p); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func mvCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "mv SRC DST",
		Short: "Move or rename a file or directory in the guest",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			dst := argv[1]
			if strings.HasSuffix(dst, "/") {
				dst += baseName(argv[0])
			} else if e, err := c.Stat(cmd.Context(), dst); err == nil && e.IsDir() {
				dst = strings.TrimSuffix(dst, "/") + "/" + baseName(argv[0])
			}
			e, err := c.Move(cmd.Context(), argv[0], dst)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(e)
			}
			return nil
		},
	}
}

func watchCmd(g *globals) *cobra.Command {
	var o envdclient.WatchOptions
	cmd := &cobra.Command{
		Use:   "watch [-r] PATH",
		Short: "Print filesystem events under a guest directory until interrupted",
		Long:  "One line per event (\"create sub/a.txt\"); with --json one JSON object per line.",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := interruptible(cmd.Context())
			defer cancel()
			w, err := c.Watch(ctx, argv[0], o)
			if err != nil {
				return err
			}
			defer w.Close()
			enc := json.NewEncoder(g.stdout)
			if !g.json {
				fmt.Fprintf(g.stderr, "watching %s\n", argv[0])
			}
			for {
				ev, err := w.Next()
				if err != nil {
					if ctx.Err() != nil {
						return nil // interrupted: a normal end
					}
					return err
				}
				if g.json {
					if err := enc.Encode(ev); err != nil {
						return err
					}
				} else {
					fmt.Fprintf(g.stdout, "%s %s\n", ev.Type, ev.Name)
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&o.Recursive, "recursive", "r", false, "watch the whole subtree")
	cmd.Flags().BoolVar(&o.IncludeEntry, "entry", false, "include the entry's details in each event")
	cmd.Flags().BoolVar(&o.AllowNetworkMounts, "allow-network-mounts", false, "allow watching NFS/CIFS/FUSE paths")
	return cmd
}

func baseName(p string) string {
	p = strings.TrimRight(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
