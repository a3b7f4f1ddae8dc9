package lifecycle

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/envd-go/envd/internal/cgroups"
)

// ThawAfterInit is an InitOptions.Authorized hook for e2b's resume: while a
// /freeze is in effect it reports the frozen tree in X-Envd-Freeze-Audit
// and thaws the workload when the /init request ends, whatever its outcome.
// A refused /init never reaches it, so it cannot be used to thaw.
func ThawAfterInit(f cgroups.Freezer, log *slog.Logger) func(context.Context, http.Header) func() {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(_ context.Context, h http.Header) func() {
		a, frozen := f.Audit()
		if !frozen {
			return nil
		}
		if b, err := json.Marshal(a); err == nil {
			h.Set("X-Envd-Freeze-Audit", string(b))
		}
		return func() {
			if _, err := f.Thaw(); err != nil {
				log.Warn("init: thaw workload", "error", err)
			}
		}
	}
}
