// Package state holds the sandbox-wide settings that /init changes and every
// service reads: default user and workdir, the default environment and the
// access token. One value is created at start-up and passed to each service.
package state

import (
	"maps"
	"sync"
)

// Internal environment keys: set by envd itself, never overwritten or
// deleted by /init envVars.
var internalKeys = map[string]bool{
	"E2B_SANDBOX": true, "E2B_SANDBOX_ID": true, "E2B_TEMPLATE_ID": true, "E2B_EVENTS_ADDRESS": true,
	"WRENN_SANDBOX": true, "WRENN_SANDBOX_ID": true, "WRENN_TEMPLATE_ID": true, "WRENN_EVENTS_ADDRESS": true,
}

// IsInternalEnv reports whether key belongs to envd and is protected from /init.
func IsInternalEnv(key string) bool { return internalKeys[key] }

// State is safe for concurrent use.
type State struct {
	mu             sync.RWMutex
	defaultUser    string
	defaultWorkdir string
	internalEnv    map[string]string
	userEnv        map[string]string
	token          secret
}

// New returns a State with default user root, no workdir and no token.
func New() *State {
	return &State{defaultUser: "root", internalEnv: map[string]string{}, userEnv: map[string]string{}}
}

func (s *State) DefaultUser() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defaultUser
}

// SetDefaultUser ignores the empty string, as both originals do.
func (s *State) SetDefaultUser(u string) {
	if u == "" {
		return
	}
	s.mu.Lock()
	s.defaultUser = u
	s.mu.Unlock()
}

// DefaultWorkdir is "" when unset (callers then use the user's home).
func (s *State) DefaultWorkdir() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defaultWorkdir
}

// SetDefaultWorkdir ignores the empty string.
func (s *State) SetDefaultWorkdir(dir string) {
	if dir == "" {
		return
	}
	s.mu.Lock()
	s.defaultWorkdir = dir
	s.mu.Unlock()
}

// SetInternalEnv sets one of envd's own variables.
func (s *State) SetInternalEnv(key, value string) {
	s.mu.Lock()
	s.internalEnv[key] = value
	s.mu.Unlock()
}

// ReplaceUserEnv replaces the user part of the default environment wholesale;
// internal keys in env are ignored.
func (s *State) ReplaceUserEnv(env map[string]string) {
	next := make(map[string]string, len(env))
	for k, v := range env {
		if !internalKeys[k] {
			next[k] = v
		}
	}
	s.mu.Lock()
	s.userEnv = next
	s.mu.Unlock()
}

// Env returns a copy of the default environment (internal and user entries)
// that every process inherits and /envs reports.
func (s *State) Env() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]string, len(s.internalEnv)+len(s.userEnv))
	maps.Copy(out, s.userEnv)
	maps.Copy(out, s.internalEnv)
	return out
}

// SetToken sets the access token; a nil token clears it. The previous
// token's bytes are zeroed. The caller may wipe token afterwards.
func (s *State) SetToken(token []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token.store(token)
}

// HasToken reports whether an access token is set.
func (s *State) HasToken() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.token.set
}

// TokenEquals compares candidate with the token in constant time. It is
// false when no token is set.
func (s *State) TokenEquals(candidate []byte) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.token.equals(candidate)
}

// TokenLocked reports whether the token is held in locked memory that core
// dumps leave out (false when unset or when mmap was unavailable).
func (s *State) TokenLocked() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.token.locked()
}

// WithToken calls f with the token bytes (nil when unset) while holding the
// read lock, so callers such as the URL signer never keep a copy. f must
// not retain token.
func (s *State) WithToken(f func(token []byte, ok bool)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.token.set {
		f(nil, false)
		return
	}
	f(s.token.buf, true)
}
