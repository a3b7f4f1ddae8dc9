package pid1

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
)

// InitCmdTag is the tag of the -cmd process (wrenn's --cmd).
const InitCmdTag = "init-cmd"

// StartInitCmd starts program (wrenn semantics: the string is the
// program, no shell, no arguments, stdin off, default user and workdir)
// through envd's own Process service at baseURL, so it is listed,
// connectable and reaped like any other process. It retries until the
// server answers, for at most 30 s, and returns once the process started;
// closing the stream leaves the process running.
func StartInitCmd(ctx context.Context, baseURL, program string, log *slog.Logger) error {
	client := processconnect.NewProcessClient(&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, baseURL)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tag, stdin := InitCmdTag, false
	var last error
	for ctx.Err() == nil {
		sctx, scancel := context.WithCancel(ctx)
		stream, err := client.Start(sctx, connect.NewRequest(&pb.StartRequest{
			Process: &pb.ProcessConfig{Cmd: program}, Tag: &tag, Stdin: &stdin,
		}))
		if err == nil && stream.Receive() {
			pid := stream.Msg().GetEvent().GetStart().GetPid()
			scancel()
			stream.Close()
			log.Info("started -cmd", "cmd", program, "pid", pid)
			return nil
		}
		if err == nil {
			err = stream.Err()
			stream.Close()
		}
		scancel()
		last = err
		if code := connect.CodeOf(err); code != connect.CodeUnavailable && code != connect.CodeUnknown {
			break // the service answered: retrying will not help
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	log.Error("start -cmd failed", "cmd", program, "error", last)
	return fmt.Errorf("start -cmd %q: %w", program, last)
}
