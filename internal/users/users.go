// Package users resolves Linux users and groups by reading /etc/passwd and
// /etc/group directly (no NSS), at each lookup: templates add users at run
// time, so nothing is cached across requests.
package users

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Files read by the lookups. Variables so tests can point them elsewhere.
var (
	PasswdFile = "/etc/passwd"
	GroupFile  = "/etc/group"
)

// ErrUnknown is returned (wrapped) when a user does not exist.
var ErrUnknown = errors.New("unknown user")

// User is one passwd entry plus its supplementary groups.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Home   string
	Shell  string
	Groups []uint32 // primary gid first, then every group listing the user
}

// Lookup finds a user by name.
func Lookup(name string) (*User, error) {
	var found *User
	err := scan(PasswdFile, func(f []string) bool {
		if len(f) < 7 || f[0] != name {
			return true
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return true
		}
		found = &User{Name: f[0], UID: uint32(uid), GID: uint32(gid), Home: f[5], Shell: f[6]}
		return false
	})
	if err != nil {
		return nil, fmt.Errorf("user: read %s: %w", PasswdFile, err)
	}
	if found == nil {
		return nil, fmt.Errorf("user: %w %s", ErrUnknown, name)
	}
	found.Groups = []uint32{found.GID}
	_ = scan(GroupFile, func(f []string) bool {
		if len(f) < 4 {
			return true
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil || uint32(gid) == found.GID {
			return true
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == name {
				found.Groups = append(found.Groups, uint32(gid))
				break
			}
		}
		return true
	})
	return found, nil
}

// Names maps numeric ids to names, reading each file at most once. Create one
// per request (e.g. per ListDir) so a 20k-entry listing parses passwd once.
type Names struct {
	users, groups map[uint32]string
}

// UserName returns the name for uid, or the decimal id when there is none.
func (n *Names) UserName(uid uint32) string {
	if n.users == nil {
		n.users = idNames(PasswdFile)
	}
	if s, ok := n.users[uid]; ok {
		return s
	}
	return strconv.FormatUint(uint64(uid), 10)
}

// GroupName returns the name for gid, or the decimal id when there is none.
func (n *Names) GroupName(gid uint32) string {
	if n.groups == nil {
		n.groups = idNames(GroupFile)
	}
	if s, ok := n.groups[gid]; ok {
		return s
	}
	return strconv.FormatUint(uint64(gid), 10)
}

func idNames(path string) map[uint32]string {
	m := map[uint32]string{}
	_ = scan(path, func(f []string) bool {
		if len(f) >= 3 {
			if id, err := strconv.ParseUint(f[2], 10, 32); err == nil {
				if _, dup := m[uint32(id)]; !dup {
					m[uint32(id)] = f[0]
				}
			}
		}
		return true
	})
	return m
}

// scan calls fn with the colon-separated fields of each non-comment line
// until fn returns false.
func scan(path string, fn func([]string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return nil
		}
	}
	return sc.Err()
}
