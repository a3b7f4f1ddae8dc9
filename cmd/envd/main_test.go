package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		exit int
		port int64
	}{
		{nil, -1, 49983},
		{[]string{"-port", "5000"}, -1, 5000},
		{[]string{"--port=5001", "--isnotfc", "-verbose"}, -1, 5001},
		{[]string{"-version"}, 0, 49983},
		{[]string{"--version"}, 0, 49983},
		{[]string{"-commit"}, 0, 49983},
		{[]string{"-h"}, 0, 49983},
		{[]string{"-bogus"}, 2, 49983},
		{[]string{"-port", "x"}, 2, 49983},
		{[]string{"-port", "70000"}, 2, 70000},
		{[]string{"stray"}, 2, 49983},
		{[]string{"-resume-handover", "-no-cgroups", "-cgroup-root="}, -1, 49983},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cfg, exit := parseFlags(tc.args)
			if exit != tc.exit {
				t.Fatalf("exit %d, want %d", exit, tc.exit)
			}
			if exit == -1 && cfg.Port != tc.port {
				t.Errorf("port %d, want %d", cfg.Port, tc.port)
			}
			if exit == -1 && cfg.CgroupRoot != "/sys/fs/cgroup" {
				t.Errorf("cgroup root %q", cfg.CgroupRoot)
			}
		})
	}
}

// The binary prints the version for template builds (`envd -version`) and
// exits 2 with a message on a bad flag.
func TestBinaryVersionAndBadFlag(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "envd")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=9.8.7", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-version").Output()
	if err != nil || string(out) != "9.8.7\n" {
		t.Fatalf("-version: %q, %v", out, err)
	}
	cmd := exec.Command(bin, "-nope")
	stderr, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(stderr), "flag provided but not defined: -nope") {
		t.Fatalf("bad flag: exit %d, %q", cmd.ProcessState.ExitCode(), stderr)
	}
	_ = os.Remove(bin)
}
