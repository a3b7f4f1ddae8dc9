package paths

import (
	"errors"
	"testing"
)

func TestResolve(t *testing.T) {
	tests := []struct {
		p, workdir, want string
		err              error
	}{
		{"", "", "/home/u", nil},
		{"", "/work", "/work", nil},
		{"~", "/work", "/home/u", nil},
		{"~/a/b", "", "/home/u/a/b", nil},
		{`~\a`, "", "/home/u/a", nil},
		{"~root/x", "", "", ErrUserHome},
		{"/abs/./x/../y", "/work", "/abs/./x/../y", nil}, // absolute: unchanged
		{"rel/../x", "/work", "/home/u/x", nil},          // relative: to home, never workdir
		{"../../etc/passwd", "", "/etc/passwd", nil},     // the kernel decides access
		{"a//b/", "", "/home/u/a/b", nil},
		{"rel", "relwork", "/home/u/rel", nil},
	}
	for _, tc := range tests {
		got, err := Resolve(tc.p, "/home/u", tc.workdir)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("Resolve(%q, workdir %q) = %q, %v; want %q, %v", tc.p, tc.workdir, got, err, tc.want, tc.err)
		}
	}
}
