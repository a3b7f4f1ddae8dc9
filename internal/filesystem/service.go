// Package filesystem implements the Filesystem service: stat, list, move,
// remove, make directories and watch, acting with the requesting user's
// rights.
package filesystem

import (
	"log/slog"

	"github.com/envd-go/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-go/envd/internal/state"
)

// Options are what the service needs from the rest of envd.
type Options struct {
	State  *state.State
	Logger *slog.Logger
}

// Service implements filesystemconnect.FilesystemHandler.
type Service struct {
	filesystemconnect.UnimplementedFilesystemHandler
	opts Options
}

// New returns the Filesystem service.
func New(opts Options) *Service {
	return &Service{opts: opts}
}
