package lifecycle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// setHostsAlias makes the hosts file at path map names to ip and to
// nothing else: the names are removed from every other line (a line left
// with only an address is dropped) and one "ip\tnames" line is appended.
// Nothing is written when exactly one line names them and it maps all of
// them, and only them, to ip.
func setHostsAlias(path, ip string, names []string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var out strings.Builder
	hits, exact := 0, false
	for _, line := range strings.SplitAfter(string(old), "\n") {
		if line == "" {
			continue
		}
		body, _, _ := strings.Cut(strings.TrimRight(line, "\n"), "#")
		f := strings.Fields(body)
		if len(f) < 2 || !slices.ContainsFunc(f[1:], func(h string) bool { return slices.Contains(names, h) }) {
			out.WriteString(line)
			continue
		}
		hits++
		hosts := slices.Clone(f[1:])
		slices.Sort(hosts)
		want := slices.Clone(names)
		slices.Sort(want)
		if f[0] == ip && slices.Equal(hosts, want) {
			exact = true
		}
		keep := slices.DeleteFunc(slices.Clone(f[1:]), func(h string) bool { return slices.Contains(names, h) })
		if len(keep) > 0 {
			out.WriteString(f[0] + "\t" + strings.Join(keep, " ") + "\n")
		}
	}
	if hits == 1 && exact {
		return nil
	}
	if s := out.String(); s != "" && !strings.HasSuffix(s, "\n") {
		out.WriteString("\n")
	}
	out.WriteString(ip + "\t" + strings.Join(names, " ") + "\n")
	return replaceFile(path, []byte(out.String()), 0o644)
}

// replaceFile writes data to path via a temp file and rename, so readers
// never see half a file. The mode of an existing file is kept; mode is used
// for a new one. A bind-mounted target (container /etc/hosts) cannot be
// renamed over, so it is rewritten in place instead.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
		if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV) {
			err = os.WriteFile(path, data, mode)
		}
	}
	if err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}
