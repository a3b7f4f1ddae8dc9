package fsmeta

import (
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestFromHeader(t *testing.T) {
	tests := []struct {
		name    string
		h       http.Header
		want    map[string]string
		wantErr string
	}{
		{"none", http.Header{"Content-Type": {"x"}}, nil, ""},
		{"lowercased", http.Header{"X-Metadata-Author": {"mish", "second"}}, map[string]string{"author": "mish"}, ""},
		{"empty key", http.Header{"X-Metadata-": {"v"}}, nil, "empty"},
		{"long key", http.Header{"X-Metadata-" + strings.Repeat("k", 247): {"v"}}, nil, "longer"},
		{"max key", http.Header{"X-Metadata-" + strings.Repeat("k", 246): {"v"}}, map[string]string{strings.Repeat("k", 246): "v"}, ""},
		{"non-ascii value", http.Header{"X-Metadata-A": {"é"}}, nil, "printable"},
		{"control value", http.Header{"X-Metadata-A": {"a\tb"}}, nil, "printable"},
		{"too big", http.Header{"X-Metadata-A": {strings.Repeat("v", 4000)}, "X-Metadata-B": {strings.Repeat("v", 100)}}, nil, "exceeds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromHeader(tc.h)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestSetAndRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string]string{"author": "mish", "big": strings.Repeat("x", 3000)}
	if err := Set(int(f.Fd()), want); err != nil {
		t.Fatal(err)
	}
	var r Reader
	r.val = make([]byte, 10) // force the ERANGE path
	if got := r.Path(p); !reflect.DeepEqual(got, want) {
		t.Fatalf("Path = %v", got)
	}
	if got := r.Fd(int(f.Fd())); !reflect.DeepEqual(got, want) {
		t.Fatalf("Fd = %v", got)
	}
	link := p + ".link"
	os.Symlink(p, link)
	if got := r.Path(link); !reflect.DeepEqual(got, want) {
		t.Fatalf("via symlink = %v", got)
	}
	if got := r.Path(p + ".missing"); got != nil {
		t.Fatalf("missing = %v", got)
	}
}
