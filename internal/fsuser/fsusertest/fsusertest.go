// Package fsusertest creates real Linux users for tests (we run as root):
// names start with "envdtf" and every user is deleted in t.Cleanup.
package fsusertest

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"testing"
	"time"

	"github.com/envd-go/envd/internal/users"
)

// NewUser adds a user with a home directory and returns it as looked up
// from /etc/passwd. useradd is retried because other test binaries may hold
// the passwd lock at the same moment.
func NewUser(t testing.TB) *users.User {
	t.Helper()
	b := make([]byte, 5)
	rand.Read(b)
	name := "envdtf" + hex.EncodeToString(b)
	retry(t, "useradd", "-m", "-U", "-s", "/bin/sh", name)
	t.Cleanup(func() { retry(t, "userdel", "-r", "-f", name) })
	u, err := users.Lookup(name)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return u
}

func retry(t testing.TB, prog string, args ...string) {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 60; i++ {
		out, err = exec.Command(prog, args...).CombinedOutput()
		if err == nil {
			return
		}
		// userdel -r complains about a missing mail spool but deletes
		// the user: exit code 12 means "couldn't remove home" only.
		if ee, ok := err.(*exec.ExitError); ok && prog == "userdel" && (ee.ExitCode() == 12 || ee.ExitCode() == 6) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Errorf("%s %v: %v: %s", prog, args, err, out)
}
