package filesystem

import (
	"net/http"

	pb "github.com/envd-go/envd/gen/filesystem"
)

// The old Python SDK (User-Agent exactly "connect-python") crashes on
// fields it does not know: its responses carry only name, type and path
// (protocol.md §6).
const legacyAgent = "connect-python"

func isLegacy(h http.Header) bool { return h.Get("User-Agent") == legacyAgent }

func markLegacy(h http.Header) { h.Set("X-E2B-Legacy-SDK", "true") }

func legacyEntry(e *pb.EntryInfo) *pb.EntryInfo {
	if e == nil {
		return nil
	}
	return &pb.EntryInfo{Name: e.Name, Type: e.Type, Path: e.Path}
}

func legacyEvents(evs []*pb.FilesystemEvent) {
	for _, ev := range evs {
		ev.Entry = nil
	}
}
