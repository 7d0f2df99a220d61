package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Every way of asking for help works and exits 0: --help, help, help
// COMMAND and COMMAND --help (status --help used to exit 4, unit --help 1).
func TestHelpForEveryCommand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"--listen-fds", "--ready-timeout", "--worker-watchdog", "ENVDIR", "KILL_OLD_DELAY", "Commands:", "  status "}},
		{[]string{"help"}, []string{"--listen-fds", "Commands:"}},
		{[]string{"help", "unit"}, []string{"Usage: ss-bridge unit", "--output-dir"}},
		{[]string{"unit", "--help"}, []string{"Usage: ss-bridge unit"}},
		{[]string{"unit", "--name", "x", "--help", "--", "worker"}, []string{"Usage: ss-bridge unit"}},
		{[]string{"reload", "--help"}, []string{"Usage: ss-bridge reload"}},
		{[]string{"status", "--help"}, []string{"Usage: ss-bridge status", "LSB"}},
		{[]string{"help", "status"}, []string{"Usage: ss-bridge status"}},
		{[]string{"stop", "-help"}, []string{"Usage: ss-bridge stop"}},
		{[]string{"log", "--help"}, []string{"Usage: ss-bridge log"}},
		{[]string{"help", "help"}, []string{"Usage: ss-bridge help"}},
	} {
		res := runBridgeCmd(t, 5*time.Second, nil, tc.args...)
		if res.code != 0 || res.stderr != "" {
			t.Errorf("%q: exit %d, stderr %q", tc.args, res.code, res.stderr)
		}
		for _, want := range tc.want {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("%q does not print %q:\n%s", tc.args, want, res.stdout)
			}
		}
	}
	res := runBridgeCmd(t, 5*time.Second, nil, "help", "nope")
	if res.code != 1 || !strings.HasPrefix(res.stderr, `ss-bridge: help: "nope" is not a command (`) || strings.Count(res.stderr, "\n") != 1 {
		t.Errorf("help nope: exit %d, stderr %q", res.code, res.stderr)
	}
}

// Under the name start_server, --help is 0.35's list: no ss-bridge commands
// or systemd options.
func TestStartServerHelpIs035(t *testing.T) {
	t.Parallel()
	link := filepath.Join(t.TempDir(), "start_server")
	if err := os.Symlink(e2eBridgeBin, link); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(link, "--help").Output()
	if err != nil {
		t.Fatalf("start_server --help: %v", err)
	}
	for _, want := range []string{"Usage: start_server", "--port", "--enable-auto-restart", "--restart"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("start_server --help lacks %q", want)
		}
	}
	for _, not := range []string{"--ready", "--listen-fds", "Commands:"} {
		if strings.Contains(string(out), not) {
			t.Errorf("start_server --help lists %q, which 0.35 has not", not)
		}
	}
}

// stop without --pid-file names the command typed, not --stop.
func TestStopCommandNeedsPidFile(t *testing.T) {
	t.Parallel()
	res := runBridgeCmd(t, 5*time.Second, nil, "stop")
	if res.code != 1 || res.stderr != "ss-bridge: stop: give --pid-file\n" {
		t.Errorf("stop: exit %d, stderr %q", res.code, res.stderr)
	}
}

// The version comes from the build: -ldflags sets it (packaging/deb.sh
// does), and under the name start_server it stays 0.35.
func TestVersionFromBuild(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "ss-bridge")
	if err := e2eGoBuild(".", bin, "-ldflags=-X github.com/ss-bridge/ss-bridge/cli.version=7.7.7+test"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "ss-bridge 7.7.7+test (") || !strings.Contains(string(out), "start_server 0.35 compatible)") {
		t.Errorf("--version: %q, %v", out, err)
	}
	link := filepath.Join(dir, "start_server")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(link, "--version").Output(); err != nil || string(out) != "0.35\n" {
		t.Errorf("start_server --version: %q, %v", out, err)
	}
}
