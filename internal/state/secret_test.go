package state

import (
	"bytes"
	"crypto/subtle"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestTokenLifecycle(t *testing.T) {
	s := New()
	if s.HasToken() || s.TokenEquals(nil) || s.TokenEquals([]byte("")) {
		t.Fatal("fresh state must have no token and match nothing")
	}
	s.SetToken([]byte("abc"))
	if !s.HasToken() || !s.TokenEquals([]byte("abc")) {
		t.Fatal("token abc not set")
	}
	for _, c := range []string{"", "ab", "abcd", "abd", "ABC"} {
		if s.TokenEquals([]byte(c)) {
			t.Errorf("TokenEquals(%q) = true", c)
		}
	}
	if !s.TokenLocked() {
		t.Error("token not held in the locked page")
	}
	// A longer token than one page forces a new mapping.
	long := bytes.Repeat([]byte("x"), os.Getpagesize()+10)
	s.SetToken(long)
	if !s.TokenEquals(long) || s.TokenEquals([]byte("abc")) {
		t.Fatal("long token not stored")
	}
	var old []byte
	s.WithToken(func(tok []byte, ok bool) { old = tok })
	s.SetToken([]byte("new"))
	if !bytes.Equal(old[:len("new")], []byte("new")) {
		// same page reused: first bytes now hold the new token, rest zero
		t.Errorf("page not reused: %q", old[:3])
	}
	if strings.Contains(string(old[3:]), "x") {
		t.Error("previous token bytes not wiped")
	}
	s.SetToken(nil)
	if s.HasToken() || s.TokenEquals([]byte("new")) {
		t.Fatal("token not cleared")
	}
	s.WithToken(func(tok []byte, ok bool) {
		if ok || tok != nil {
			t.Errorf("WithToken after clear = %q, %v", tok, ok)
		}
	})
}

func TestTokenCompareIsConstantTime(t *testing.T) {
	if reflect.ValueOf(tokenCompare).Pointer() != reflect.ValueOf(subtle.ConstantTimeCompare).Pointer() {
		t.Fatal("token comparison is not crypto/subtle.ConstantTimeCompare")
	}
	calls := 0
	orig := tokenCompare
	tokenCompare = func(a, b []byte) int { calls++; return orig(a, b) }
	t.Cleanup(func() { tokenCompare = orig })
	s := New()
	s.SetToken([]byte("t"))
	s.TokenEquals([]byte("t"))
	s.TokenEquals([]byte("u"))
	if calls != 2 {
		t.Fatalf("TokenEquals bypassed tokenCompare: %d calls", calls)
	}
}

func TestReplaceUserEnvProtectsInternal(t *testing.T) {
	s := New()
	s.SetInternalEnv("E2B_SANDBOX", "true")
	s.ReplaceUserEnv(map[string]string{"A": "1", "E2B_SANDBOX": "false", "E2B_EVENTS_ADDRESS": "x"})
	s.ReplaceUserEnv(map[string]string{"B": "2"})
	got := s.Env()
	want := map[string]string{"E2B_SANDBOX": "true", "B": "2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Env() = %v, want %v", got, want)
	}
}
