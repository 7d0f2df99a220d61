//go:build linux

package systemdtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
)

func TestSystemRunning(t *testing.T) {
	c := Boot(t)
	state, err := c.Systemctl("is-system-running")
	if state != "running" && state != "degraded" {
		failed, _ := c.Systemctl("--failed", "--no-legend")
		t.Fatalf("is-system-running = %q (%v); failed units:\n%s", state, err, failed)
	}
	if c.PID() <= 1 {
		t.Fatalf("PID() = %d", c.PID())
	}
	// Exec really runs inside: the container's pid namespace and root.
	out, err := c.Exec("sh", "-c", "echo $$; cat /etc/debian_version")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("inside: %q", out)
	if host, _ := os.ReadFile("/etc/debian_version"); strings.HasSuffix(out, string(host)) {
		t.Errorf("Exec sees the host's /etc/debian_version %q", host)
	}
}

func TestSystemdVersion(t *testing.T) {
	c := Boot(t)
	out, err := c.Exec("systemctl", "--version")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^systemd (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemctl --version: %q", out)
	}
	if v, _ := strconv.Atoi(m[1]); v < 253 {
		t.Fatalf("systemd %d inside; want >= 253 (Type=notify-reload)", v)
	}
	t.Logf("%s", strings.SplitN(out, "\n", 2)[0])
}

func TestExecError(t *testing.T) {
	c := Boot(t)
	out, err := c.Exec("sh", "-c", "echo partial; echo oops >&2; exit 3")
	if err == nil {
		t.Fatal("no error")
	}
	if !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "oops") {
		t.Errorf("error %q lacks the exit status or stderr", err)
	}
	if out != "partial\n" {
		t.Errorf("stdout %q", out)
	}
}

func TestHostDir(t *testing.T) {
	c := Boot(t)
	if err := os.WriteFile(filepath.Join(c.HostDir(), "from-host"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Exec("cat", c.GuestPath("from-host")); err != nil || out != "hi\n" {
		t.Fatalf("cat from-host = %q, %v", out, err)
	}
	if _, err := c.Exec("sh", "-c", "echo back >"+c.GuestPath("from-guest")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(c.HostDir(), "from-guest")); err != nil || string(b) != "back\n" {
		t.Fatalf("from-guest = %q, %v", b, err)
	}
}

var freePort = testkit.FreePort

// ask connects to addr and returns the one line it answers.
func ask(t testing.TB, addr string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from %s: %v (got %q)", addr, err, line)
	}
	return strings.TrimSpace(line)
}

// demo sets up a socket-activated sdhelper as demo.socket + demo.service
// (Type=notify-reload) and returns the address it listens on.
func demo(t testing.TB, c *Container) string {
	t.Helper()
	helper, err := c.BuildGo("./testdata/sdhelper", "sdhelper")
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if err := c.WriteUnit("demo.socket", "[Socket]\nListenStream="+addr+"\nFileDescriptorName=web\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteUnit("demo.service", "[Service]\nType=notify-reload\nExecStart="+helper+"\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Systemctl("start", "demo.socket"); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestSocketActivation(t *testing.T) {
	c := Boot(t)
	addr := demo(t, c)
	if state, _ := c.Property("demo.service", "ActiveState"); state != "inactive" {
		t.Fatalf("demo.service is %s before the first connection", state)
	}
	answer := ask(t, addr)
	t.Logf("answer: %s", answer)
	if !strings.HasPrefix(answer, "pid=") || !strings.Contains(answer, "gen=1 fds=1 names=web") {
		t.Fatalf("answer %q", answer)
	}
	pid := strings.Fields(answer)[0]
	if main, _ := c.Property("demo.service", "MainPID"); "pid="+main != pid {
		t.Errorf("MainPID %s, the answer came from %s", main, pid)
	}
	if err := c.WaitProperty("demo.service", "StatusText", "generation 1", 10*time.Second); err != nil {
		t.Error(err)
	}
	journal, err := c.Journal("demo.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(journal, "sdhelper: serving on fd 3") {
		t.Errorf("journal of demo.service:\n%s", journal)
	}
}

// Type=notify-reload: systemctl reload sends SIGHUP and returns once the service has
// answered RELOADING=1 then READY=1.
func TestNotifyReload(t *testing.T) {
	c := Boot(t)
	addr := demo(t, c)
	if _, err := c.Systemctl("start", "demo.service"); err != nil {
		t.Fatal(err)
	}
	first := ask(t, addr)
	if _, err := c.Systemctl("reload", "demo.service"); err != nil {
		t.Fatal(err)
	}
	if status, _ := c.Property("demo.service", "StatusText"); status != "generation 2" {
		t.Errorf("StatusText after reload %q", status)
	}
	second := ask(t, addr)
	if strings.Fields(first)[0] != strings.Fields(second)[0] || !strings.Contains(second, "gen=2") {
		t.Errorf("before reload %q, after %q", first, second)
	}
	if _, err := c.Systemctl("stop", "demo.service"); err != nil {
		t.Fatal(err)
	}
	if journal, _ := c.Journal("demo.service"); !strings.Contains(journal, "SIGTERM, exiting") {
		t.Errorf("journal of demo.service:\n%s", journal)
	}
}

func TestNotifyShell(t *testing.T) {
	c := Boot(t)
	// systemd-notify --exec sends READY=1 from the main pid itself, then becomes sleep.
	unit := "[Service]\nType=notify\n" +
		`ExecStart=/usr/bin/systemd-notify --ready --status=shell-ready --exec \; /usr/bin/sleep infinity` + "\n"
	if err := c.WriteUnit("shellnotify.service", unit); err != nil {
		t.Fatal(err)
	}
	// start returns only once READY=1 has arrived (or the start failed).
	if _, err := c.Systemctl("start", "shellnotify.service"); err != nil {
		j, _ := c.Journal("shellnotify.service")
		t.Fatalf("%v\n%s", err, j)
	}
	for prop, want := range map[string]string{"ActiveState": "active", "SubState": "running", "StatusText": "shell-ready"} {
		if got, err := c.Property("shellnotify.service", prop); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", prop, got, err, want)
		}
	}
	mainPID, _ := c.Property("shellnotify.service", "MainPID")
	if comm, err := c.Exec("cat", "/proc/"+mainPID+"/comm"); err != nil || strings.TrimSpace(comm) != "sleep" {
		t.Errorf("main process %s is %q (%v), want sleep", mainPID, comm, err)
	}
}

func TestDBusFromHost(t *testing.T) {
	c := Boot(t)
	want, err := c.Exec("systemctl", "--version")
	if err != nil {
		t.Fatal(err)
	}
	// "systemd 257 (257.13-1~deb13u1)" -> 257.13-1~deb13u1
	m := regexp.MustCompile(`^systemd \d+ \(([^)]+)\)`).FindStringSubmatch(want)
	if m == nil {
		t.Fatalf("systemctl --version: %q", want)
	}

	// godbus directly.
	conn, err := dbus.Dial(c.BusAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Auth(nil); err != nil {
		t.Fatal(err)
	}
	if err := conn.Hello(); err != nil {
		t.Fatal(err)
	}
	v, err := conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").
		GetProperty("org.freedesktop.systemd1.Manager.Version")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := v.Value().(string); got != m[1] {
		t.Errorf("Manager.Version over D-Bus %q, systemctl says %q", v.Value(), m[1])
	}

	// go-systemd, with the container's bus as its dialer; manage a unit through it.
	sd, err := sddbus.NewConnection(c.SystemBus)
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	version, err := sd.GetManagerProperty("Version")
	if err != nil {
		t.Fatal(err)
	}
	if version != strconv.Quote(m[1]) {
		t.Errorf("go-systemd Version %s, want %q", version, m[1])
	}
	if err := c.WriteUnit("bus.service", "[Service]\nExecStart=/usr/bin/sleep infinity\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan string, 1)
	if _, err := sd.StartUnitContext(ctx, "bus.service", "replace", done); err != nil {
		t.Fatal(err)
	}
	if result := <-done; result != "done" {
		t.Fatalf("starting bus.service over D-Bus: %s", result)
	}
	if state, _ := c.Property("bus.service", "ActiveState"); state != "active" {
		t.Errorf("bus.service is %s", state)
	}
	p, err := sd.GetUnitPropertyContext(ctx, "bus.service", "ActiveState")
	if err != nil || p.Value.Value() != "active" {
		t.Errorf("ActiveState over D-Bus %v, %v", p, err)
	}
}

// leftovers lists what of a stopped container is still there.
func leftovers(t testing.TB, c *Container, pids []int, cgroups []string) []string {
	t.Helper()
	var left []string
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, fs.ErrNotExist) {
			stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			left = append(left, fmt.Sprintf("process %d: %s", pid, stat))
		}
	}
	for _, cg := range cgroups {
		if _, err := os.Stat(cg); !errors.Is(err, fs.ErrNotExist) {
			left = append(left, "cgroup "+cg)
		}
	}
	for _, name := range []string{"root", "upper", "work", "init.pid", "nspawn.pid", "cgroups"} {
		if _, err := os.Lstat(filepath.Join(c.Dir(), name)); !errors.Is(err, fs.ErrNotExist) {
			left = append(left, "file "+filepath.Join(c.Dir(), name))
		}
	}
	// No mount of the container in any mount namespace of any process.
	mountinfos, _ := filepath.Glob("/proc/[0-9]*/mountinfo")
	for _, mi := range mountinfos {
		b, err := os.ReadFile(mi)
		if err != nil {
			continue // exited meanwhile
		}
		if strings.Contains(string(b), c.Dir()+"/") {
			left = append(left, "mount in "+mi)
		}
	}
	return left
}

// bootAndCheck boots a container, checks it works, stops it and checks that nothing of it
// is left.
func bootAndCheck(t *testing.T) {
	c := Boot(t)
	if state, err := c.Systemctl("is-system-running"); state != "running" && state != "degraded" {
		t.Fatalf("is-system-running = %q (%v)", state, err)
	}
	if answer := ask(t, demo(t, c)); !strings.Contains(answer, "gen=1") {
		t.Fatalf("answer %q", answer)
	}
	bus, err := c.SystemBus()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").
		GetProperty("org.freedesktop.systemd1.Manager.Version"); err != nil {
		t.Fatal(err)
	}
	bus.Close()

	nspawn, err := os.ReadFile(filepath.Join(c.Dir(), "nspawn.pid"))
	if err != nil {
		t.Fatal(err)
	}
	nspawnPID, _ := strconv.Atoi(strings.Fields(string(nspawn))[0])
	cgroups, err := os.ReadFile(filepath.Join(c.Dir(), "cgroups"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start))
	if left := leftovers(t, c, []int{c.PID(), nspawnPID}, strings.Fields(string(cgroups))); len(left) > 0 {
		t.Fatalf("left behind after Stop:\n%s", strings.Join(left, "\n"))
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := c.Exec("true"); err == nil {
		t.Fatal("Exec works after Stop")
	}
}

func TestOneAfterAnother(t *testing.T) {
	for i := range 2 {
		t.Run(strconv.Itoa(i), bootAndCheck)
	}
}

func TestConcurrent(t *testing.T) {
	for i := range 2 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			bootAndCheck(t)
		})
	}
}
