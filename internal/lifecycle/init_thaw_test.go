package lifecycle

import (
	"testing"

	"github.com/envd-go/envd/internal/cgroups"
)

type auditFreezer struct {
	cgroups.Noop
	frozen bool
	thaws  int
}

func (f *auditFreezer) Audit() (cgroups.AuditResult, bool) {
	return cgroups.AuditResult{Visited: 3, Frozen: 2}, f.frozen
}

func (f *auditFreezer) Thaw() (cgroups.ThawResult, error) {
	f.thaws++
	f.frozen = false
	return cgroups.ThawResult{}, nil
}

func TestThawAfterInit(t *testing.T) {
	f := &auditFreezer{frozen: true}
	e := newInitEnv(t, notFC, func(o *InitOptions, _ *initEnv) { o.Authorized = ThawAfterInit(f, o.Logger) })
	e.st.SetToken([]byte("tok"))
	// Refused: no audit, no thaw.
	if s, h, _ := e.post(`{"accessToken":"bad"}`); s != 401 || h.Get("X-Envd-Freeze-Audit") != "" || f.thaws != 0 {
		t.Fatalf("refused /init: %d audit=%q thaws=%d", s, h.Get("X-Envd-Freeze-Audit"), f.thaws)
	}
	s, h, _ := e.post(`{"accessToken":"tok"}`)
	if s != 204 || h.Get("X-Envd-Freeze-Audit") != `{"visited":3,"frozen":2,"escaped":0,"violations":0,"truncated":false}` || f.thaws != 1 {
		t.Fatalf("authorised /init: %d audit=%q thaws=%d", s, h.Get("X-Envd-Freeze-Audit"), f.thaws)
	}
	// Not frozen: no header, no thaw.
	if s, h, _ := e.post(`{"accessToken":"tok"}`); s != 204 || h.Get("X-Envd-Freeze-Audit") != "" || f.thaws != 1 {
		t.Fatalf("unfrozen /init: %d %q %d", s, h.Get("X-Envd-Freeze-Audit"), f.thaws)
	}
}
