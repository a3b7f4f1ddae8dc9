// Package process implements the Process service: spawning programs on
// pipes or a PTY, fanning their output out to subscribers, input, signals,
// and retaining exit results.
package process

import (
	"log/slog"

	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/cgroups"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/state"
)

// Options are what the service needs from the rest of envd.
type Options struct {
	State   *state.State
	Reaper  *pid1.Reaper
	Cgroups cgroups.Manager
	Logger  *slog.Logger
}

// Service implements processconnect.ProcessHandler.
type Service struct {
	processconnect.UnimplementedProcessHandler
	opts Options
}

// New returns the Process service.
func New(opts Options) *Service {
	return &Service{opts: opts}
}
