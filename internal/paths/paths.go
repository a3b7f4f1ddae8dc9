// Package paths turns a requested path into the absolute path envd acts on,
// the same way for filesystem RPCs, /files, compose and process cwd.
package paths

import (
	"errors"
	"path/filepath"
	"strings"
)

// ErrUserHome is returned for "~name" paths, which are not supported.
var ErrUserHome = errors.New("cannot expand user-specific home dir")

// Resolve applies the rules of subsystems.md §4: empty → workdir (if set),
// "~" and "~/x" → home, absolute paths unchanged, relative paths cleaned and
// joined to home (never to workdir).
func Resolve(p, home, workdir string) (string, error) {
	if p == "" {
		p = workdir
	}
	if strings.HasPrefix(p, "~") {
		rest := p[1:]
		switch {
		case rest == "":
			p = home
		case rest[0] == '/' || rest[0] == '\\':
			p = filepath.Join(home, rest[1:])
		default:
			return "", ErrUserHome
		}
	}
	if filepath.IsAbs(p) {
		return p, nil
	}
	return filepath.Clean(home + "/" + p), nil
}
