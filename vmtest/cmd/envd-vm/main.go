// Command envd-vm boots envd as PID 1 in a QEMU microVM (the vmtest
// image: static envd as /init, busybox, a root and a user account) and
// prints its address; with -exec it runs one command there and exits with
// its status.
//
//	go run ./vmtest/cmd/envd-vm                 # boot, print address, wait for Ctrl-C
//	go run ./vmtest/cmd/envd-vm -exec 'uname -a'
//	ENVD_ADDR=http://127.0.0.1:PORT go run ./cmd/envctl shell
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd-go/envd/gen/process"
	"github.com/envd-go/envd/gen/process/processconnect"
	"github.com/envd-go/envd/internal/host/mmdstest"
	"github.com/envd-go/envd/vmtest"
)

func main() {
	execCmd := flag.String("exec", "", "run this shell command in the VM, print its output and exit with its status")
	mem := flag.Int("mem", 256, "guest memory in MiB")
	flag.Parse()
	code, err := run(*execCmd, *mem)
	if err != nil {
		fmt.Fprintln(os.Stderr, "envd-vm:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(execCmd string, mem int) (int, error) {
	root, err := vmtest.RepoRoot()
	if err != nil {
		return 0, err
	}
	k, err := vmtest.FindKernel(root)
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "envd-vm-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	envd, initrd := filepath.Join(dir, "envd"), filepath.Join(dir, "initramfs.cpio")
	fmt.Fprintln(os.Stderr, "building envd and the initramfs...")
	if err := vmtest.BuildEnvd(root, envd); err != nil {
		return 0, err
	}
	if err := vmtest.BuildInitramfs(initrd, envd, k, nil); err != nil {
		return 0, err
	}
	mmds := mmdstest.New()
	defer mmds.Close()
	mmds.SetFields("envd-vm", "envd-vm", "", "")

	start := time.Now()
	vm, err := vmtest.Boot(vmtest.Config{Dir: dir, Kernel: k, Initrd: initrd, MemMB: mem, SharedMem: true,
		MMDSAddr: strings.TrimPrefix(mmds.URL, "http://")})
	if err != nil {
		return 0, err
	}
	defer vm.Close()
	if err := waitHealthy(vm.URL(), 90*time.Second); err != nil {
		return 0, fmt.Errorf("%w\nconsole:\n%s", err, vm.Console())
	}
	fmt.Fprintf(os.Stderr, "envd healthy at %s after %v (kernel %s)\n", vm.URL(), time.Since(start).Round(time.Millisecond), k.Version)
	if execCmd != "" {
		return execIn(vm.URL(), execCmd)
	}
	fmt.Printf("ENVD_ADDR=%s\n", vm.URL())
	fmt.Fprintf(os.Stderr, "shell:   ENVD_ADDR=%s go run ./cmd/envctl shell\nconsole: %s\nCtrl-C stops the VM.\n",
		vm.URL(), filepath.Join(dir, "console.log"))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0, nil
}

func waitHealthy(url string, timeout time.Duration) error {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("envd not healthy after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func execIn(url, script string) (int, error) {
	client := processconnect.NewProcessClient(http.DefaultClient, url)
	stream, err := client.Start(context.Background(), connect.NewRequest(&pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}}))
	if err != nil {
		return 0, err
	}
	defer stream.Close()
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			os.Stdout.Write(d.GetStdout())
			os.Stderr.Write(d.GetStderr())
		}
		if e := ev.GetEnd(); e != nil {
			return int(e.GetExitCode()), nil
		}
	}
	return 0, fmt.Errorf("exec: %v", stream.Err())
}
