package pid1_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/cgroups"
	"github.com/envd-go/envd/internal/pid1"
	"github.com/envd-go/envd/internal/process"
	"github.com/envd-go/envd/internal/state"
)

// TestStartInitCmd starts -cmd through a real Process service and finds
// it listed under its tag, still running after the start stream closed.
func TestStartInitCmd(t *testing.T) {
	reaper := pid1.NewReaper(false)
	t.Cleanup(reaper.Close)
	log := slog.New(slog.DiscardHandler)
	procs := process.New(process.Options{State: state.New(), Reaper: reaper, Cgroups: cgroups.Noop{}, Logger: log})
	t.Cleanup(procs.Close)
	srv := httptest.NewServer(func() http.Handler {
		mux := http.NewServeMux()
		mux.Handle(processconnect.NewProcessHandler(procs))
		return mux
	}())
	t.Cleanup(srv.Close)

	script := filepath.Join(t.TempDir(), "init cmd") // a space: no shell splitting
	if err := os.WriteFile(script, []byte("#!/bin/sh\nwhile :; do sleep 1; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := pid1.StartInitCmd(context.Background(), srv.URL, script, log); err != nil {
		t.Fatal(err)
	}
	client := processconnect.NewProcessClient(srv.Client(), srv.URL)
	resp, err := client.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var found *pb.ProcessInfo
	for _, p := range resp.Msg.GetProcesses() {
		if p.GetTag() == pid1.InitCmdTag {
			found = p
		}
	}
	if found == nil || found.GetConfig().GetCmd() != script || len(found.GetConfig().GetArgs()) != 0 {
		t.Fatalf("init-cmd not listed as started: %v", resp.Msg.GetProcesses())
	}
	tag := pid1.InitCmdTag
	if _, err := client.SendSignal(context.Background(), connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}, Signal: pb.Signal_SIGNAL_SIGKILL,
	})); err != nil {
		t.Errorf("kill init-cmd: %v", err)
	}

	// A server without the Process service answers; no 30 s of retries.
	bare := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(bare.Close)
	if err := pid1.StartInitCmd(context.Background(), bare.URL, script, log); err == nil {
		t.Error("no Process service: no error")
	}
}
