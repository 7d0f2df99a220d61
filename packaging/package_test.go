//go:build linux

// Tests of the Debian package that packaging/deb.sh builds: its contents and man pages on
// this machine, and in a real systemd 257 (internal/systemdtest) that it installs, that its
// template unit starts, reloads and stops a worker, and that it removes cleanly.
package packaging_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/systemdtest"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
)

// buildDeb runs deb.sh and returns the package's path.
func buildDeb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		if systemdtest.CI() {
			t.Fatal("dpkg-deb is missing, and CI is set")
		}
		t.Skip("dpkg-deb is missing")
	}
	out, err := exec.Command("bash", "deb.sh", t.TempDir()).Output()
	if err != nil {
		t.Fatalf("bash packaging/deb.sh: %v: %s", err, stderrOf(err))
	}
	deb := strings.TrimSpace(string(out))
	if !strings.HasPrefix(filepath.Base(deb), "ss-bridge_") || !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("deb.sh printed %q", out)
	}
	return deb
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %q: %v: %s", name, args, err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("%s %q wrote to stderr: %s", name, args, stderr.String())
	}
	return stdout.String()
}

// The package's files, its version, and its man pages as man finds them (ss-bridge, and
// start_server once /usr/lib/ss-bridge/bin is first in PATH), on this machine.
func TestPackageContents(t *testing.T) {
	deb := buildDeb(t)
	fields := run(t, nil, "dpkg-deb", "-f", deb, "Package", "Version", "Architecture")
	version := strings.TrimPrefix(strings.Split(fields, "\n")[1], "Version: ")
	if !strings.HasPrefix(fields, "Package: ss-bridge\n") || !strings.HasPrefix(version, "0.") {
		t.Fatalf("control fields:\n%s", fields)
	}
	if want := fmt.Sprintf("ss-bridge_%s_", version); !strings.HasPrefix(filepath.Base(deb), want) {
		t.Errorf("file name %s, want %s...", filepath.Base(deb), want)
	}
	root := t.TempDir()
	run(t, nil, "dpkg-deb", "-x", deb, root)
	for _, f := range []string{
		"usr/bin/ss-bridge", "usr/share/man/man1/ss-bridge.1.gz",
		"usr/lib/ss-bridge/bin/start_server", "usr/lib/ss-bridge/share/man/man1/start_server.1.gz",
		"usr/share/bash-completion/completions/ss-bridge", "usr/lib/systemd/system/ss-bridge@.service",
		"usr/share/doc/ss-bridge/copyright", "usr/share/doc/ss-bridge/changelog.gz",
		"usr/share/doc/ss-bridge/examples/example.env",
	} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil { // follows the links
			t.Errorf("package: %v", err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "usr/bin/start_server")); err == nil {
		t.Error("the package ships /usr/bin/start_server, which is Perl's package's")
	}
	// The binary names the package's version, which names the commit.
	if got := run(t, nil, filepath.Join(root, "usr/bin/ss-bridge"), "--version"); !strings.HasPrefix(got, "ss-bridge "+version+" (") {
		t.Errorf("--version %q, want the package's %s", got, version)
	}
	if got := run(t, nil, filepath.Join(root, "usr/lib/ss-bridge/bin/start_server"), "--version"); got != "0.35\n" {
		t.Errorf("start_server --version %q", got)
	}
	unit, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/ss-bridge@.service"))
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/ss-bridge ") || !strings.Contains(string(unit), "Documentation=man:ss-bridge(1)") {
		t.Errorf("template unit:\n%s", unit)
	}

	if _, err := exec.LookPath("man"); err != nil {
		if systemdtest.CI() {
			t.Fatal("man (Debian package man-db) is missing, and CI is set")
		}
		t.Skip("man is missing")
	}
	// man finds pages through PATH: bin/../share/man.
	env := []string{"MANPATH=", "MANROFFOPT=-ww", "MANPAGER=cat", "PAGER=cat", "MANWIDTH=80", "LC_ALL=C.UTF-8",
		"PATH=" + filepath.Join(root, "usr/lib/ss-bridge/bin") + ":" + filepath.Join(root, "usr/bin") + ":" + os.Getenv("PATH")}
	if got := strings.TrimSpace(run(t, env, "man", "-w", "ss-bridge")); got != filepath.Join(root, "usr/share/man/man1/ss-bridge.1.gz") {
		t.Errorf("man -w ss-bridge: %s", got)
	}
	if got := strings.TrimSpace(run(t, env, "man", "-w", "start_server")); got != filepath.Join(root, "usr/share/man/man1/ss-bridge.1.gz") {
		t.Errorf("man -w start_server with /usr/lib/ss-bridge/bin first in PATH: %s", got)
	}
	if page := run(t, env, "man", "ss-bridge"); !strings.Contains(page, "SS-BRIDGE(1)") {
		t.Errorf("man ss-bridge:\n%s", page)
	}
}

// In a real systemd: the package installs; the template unit starts a worker from an
// /etc/ss-bridge/NAME.env, reloads it to a new generation and stops it; the bash
// completion completes; and dpkg --purge, with an instance enabled and running, stops it
// and leaves no file of the package behind.
func TestPackageUnderSystemd(t *testing.T) {
	deb := buildDeb(t)
	c := systemdtest.Boot(t)
	b, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.HostDir(), "ss-bridge.deb"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	worker, err := c.BuildGo("../listener/example", "example-worker")
	if err != nil {
		t.Fatal(err)
	}
	in := func(args ...string) string {
		t.Helper()
		out, err := c.Exec(args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	list := func() map[string]bool {
		files := map[string]bool{}
		for _, f := range strings.Split(in("find", "/", "-xdev", "-path", "/proc", "-prune", "-o", "-path", systemdtest.GuestDir, "-prune", "-o", "-print"), "\n") {
			files[f] = true
		}
		return files
	}
	pristine := list()
	in("dpkg", "-i", c.GuestPath("ss-bridge.deb"))
	if got := strings.TrimSpace(in("sh", "-c", "command -v ss-bridge")); got != "/usr/bin/ss-bridge" {
		t.Fatalf("ss-bridge is %q", got)
	}

	// Without --man=no, verify fails for want of man in the container.
	if out, err := c.Exec("sh", "-c", "systemd-analyze verify --man=no ss-bridge@demo.service 2>&1"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify ss-bridge@demo.service: %v\n%s", err, out)
	}

	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	env := fmt.Sprintf("SS_BRIDGE_OPTIONS=--port=%s --interval=0\nSS_BRIDGE_COMMAND=%s\n", addr, worker)
	if err := c.WriteFile("/etc/ss-bridge/demo.env", []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	unit := "ss-bridge@demo.service"
	in("systemctl", "enable", "--now", unit)
	waitGeneration(t, addr, "1")
	if doc, _ := c.Property(unit, "Documentation"); strings.Trim(doc, `"`) != "man:ss-bridge(1)" {
		t.Errorf("Documentation=%q", doc)
	}
	in("systemctl", "reload", unit)
	waitGeneration(t, addr, "2")
	if out := in("ss-bridge", "status", unit); !strings.Contains(out, "generation 2:") {
		t.Errorf("ss-bridge status %s:\n%s", unit, out)
	}
	in("systemctl", "stop", unit)
	if state, _ := c.Property(unit, "ActiveState"); state != "inactive" {
		t.Errorf("after stop: %s", state)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("the socket is still open after stop")
	}

	completion := in("bash", "-c", `source /usr/share/bash-completion/completions/ss-bridge
COMP_WORDS=(ss-bridge stat); COMP_CWORD=1; COMP_LINE="ss-bridge stat"; COMP_POINT=${#COMP_LINE}
_ss_bridge; echo "${COMPREPLY[*]}"
COMP_WORDS=(ss-bridge --listen); COMP_CWORD=1; COMP_LINE="ss-bridge --listen"; COMP_POINT=${#COMP_LINE}
_ss_bridge; echo "${COMPREPLY[*]}"`)
	if completion != "status\n--listen-fds\n" {
		t.Errorf("completion:\n%s", completion)
	}

	// Removal: with the instance enabled and running.
	in("systemctl", "start", unit)
	waitGeneration(t, addr, "1")
	installed := list()
	in("dpkg", "--purge", "ss-bridge")
	if state, _ := c.Property(unit, "ActiveState"); state != "inactive" {
		t.Errorf("after purge, %s is %s", unit, state)
	}
	if pid, _ := c.Property(unit, "MainPID"); pid != "0" {
		t.Errorf("after purge, ss-bridge still runs as pid %s", pid)
	}
	// Of what was not there before the install, only the instance's configuration, which
	// is the administrator's, may stay.
	for f := range list() {
		if !pristine[f] && strings.Contains(f, "ss-bridge") && f != "/etc/ss-bridge" && f != "/etc/ss-bridge/demo.env" {
			t.Errorf("left after purge: %s", f)
		}
	}
	for _, f := range []string{"/usr/bin/ss-bridge", "/etc/systemd/system/multi-user.target.wants/ss-bridge@demo.service"} {
		if !installed[f] {
			t.Errorf("%s was not there before the purge", f)
		}
	}
	if out, err := c.Exec("dpkg", "-s", "ss-bridge"); err == nil {
		t.Errorf("dpkg -s after purge:\n%s", out)
	}
}

var freePort = testkit.FreePort

// waitGeneration waits until a new connection to addr is answered by the example worker
// of generation gen.
func waitGeneration(t *testing.T, addr, gen string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	want := "hello from generation " + gen + " "
	var last string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if last = string(body); strings.HasPrefix(last, want) {
			return
		}
	}
	t.Fatalf("%s never answered %q; last: %s", addr, want, last)
}
