package users

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func withFiles(t *testing.T, passwd, group string) {
	t.Helper()
	dir := t.TempDir()
	p, g := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	os.WriteFile(p, []byte(passwd), 0o644)
	os.WriteFile(g, []byte(group), 0o644)
	oldP, oldG := PasswdFile, GroupFile
	PasswdFile, GroupFile = p, g
	t.Cleanup(func() { PasswdFile, GroupFile = oldP, oldG })
}

func TestLookup(t *testing.T) {
	withFiles(t, `root:x:0:0:root:/root:/bin/bash
# comment
broken:x:notanumber:0::/x:/bin/sh
user:x:1000:1000:User:/srv/user:/bin/zsh
`, `root:x:0:
user:x:1000:
docker:x:998:user,other
wheel:x:10:other
audio:x:29:user
`)
	u, err := Lookup("user")
	if err != nil {
		t.Fatal(err)
	}
	if u.UID != 1000 || u.GID != 1000 || u.Home != "/srv/user" || u.Shell != "/bin/zsh" {
		t.Errorf("got %+v", u)
	}
	if !slices.Equal(u.Groups, []uint32{1000, 998, 29}) {
		t.Errorf("groups %v", u.Groups)
	}
	for _, name := range []string{"nobody", "broken", ""} {
		if _, err := Lookup(name); !errors.Is(err, ErrUnknown) {
			t.Errorf("Lookup(%q) = %v, want ErrUnknown", name, err)
		}
	}
	if _, err := Lookup("nobody"); err == nil || err.Error() != "user: unknown user nobody" {
		t.Errorf("message %v", err)
	}
}

func TestNames(t *testing.T) {
	withFiles(t, "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n", "root:x:0:\nstaff:x:50:\n")
	var n Names
	cases := []struct {
		got, want string
	}{
		{n.UserName(0), "root"}, {n.UserName(1000), "user"}, {n.UserName(4242), "4242"},
		{n.GroupName(50), "staff"}, {n.GroupName(1000), "1000"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	// Cached: a changed file is not re-read within one Names.
	os.WriteFile(PasswdFile, []byte("other:x:0:0::/:/bin/sh\n"), 0o644)
	if n.UserName(0) != "root" {
		t.Error("Names re-read passwd")
	}
}
