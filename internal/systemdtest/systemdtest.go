//go:build linux

// Package systemdtest boots throwaway containers that run a real systemd (Debian trixie,
// systemd 257, under systemd-nspawn) for tests of ss-bridge's systemd integration: socket
// activation, sd_notify, the fd store, reload, and unit management over D-Bus.
//
// A test calls Boot, which returns a running container and stops it when the test ends.
// The container shares the host's network, so a ListenStream=127.0.0.1:PORT socket inside
// is reachable from the test; HostDir is a host directory visible inside at GuestDir, for
// binaries and data; Exec runs commands inside; BusAddress is the container's system bus,
// reachable from the host.
//
// The work is done by container.sh (embedded here, and usable on its own); see its header
// for what it needs. The rootfs is built once per machine (about 40 s, 150 MB, from the
// Debian mirror) and cached in $SS_BRIDGE_ROOTFS_CACHE (default
// /var/cache/ss-bridge/trixie-rootfs.tar); each container then boots in under a second on
// a fresh overlay of it.
//
// When the prerequisites are missing (not root, no systemd-nspawn, ...) Boot skips the
// test, unless the environment variable CI is set, where it fails it: a test that cannot
// run in CI must not pass silently.
package systemdtest

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

//go:embed container.sh
var script []byte

// GuestDir is where HostDir appears inside every container.
const GuestDir = "/opt/ss-bridge"

// Timeouts of the steps of Boot and Stop, and the default one of Exec.
var (
	RootfsTimeout = 20 * time.Minute
	BootTimeout   = 3 * time.Minute
	StopTimeout   = time.Minute
	ExecTimeout   = 2 * time.Minute
)

// Container is a running container. Its methods may be called from several goroutines.
type Container struct {
	dir    string // state directory of container.sh
	script string // container.sh, written into dir
	pid    int    // host pid of the container's init

	done     chan struct{} // closed once systemd-nspawn has been reaped
	stopOnce sync.Once
	stopErr  error
}

var rootfs struct {
	sync.Mutex
	done bool
	err  error
}

// CI reports whether the environment variable CI is set (to anything but "", "0" or
// "false"), as it is in the project's CI.
func CI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && !strings.EqualFold(v, "false")
}

// unavailable skips the test, or fails it in CI.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("systemdtest: cannot boot a systemd container, and CI is set: %s", msg)
	}
	t.Skipf("systemdtest: cannot boot a systemd container: %s", msg)
}

// Boot boots a fresh container and registers its Stop with t.Cleanup. It builds the
// cached rootfs first if there is none. It skips the test when the prerequisites are
// missing, or fails it when CI is set; it fails the test when the container does not boot.
func Boot(t testing.TB) *Container {
	t.Helper()
	c, err := Start()
	var missing *MissingError
	switch {
	case errors.As(err, &missing):
		unavailable(t, "%s", missing.Reason)
	case err != nil:
		t.Fatalf("systemdtest: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("systemdtest: end of %s:\n%s", filepath.Join(c.dir, "console.log"), c.consoleTail(40))
		}
		if err := c.Remove(); err != nil {
			t.Errorf("systemdtest: %v", err)
		}
	})
	return c
}

// MissingError is Start's error when this machine cannot boot a container at all:
// not root, no bash, container.sh check failing, or the rootfs failing to build.
type MissingError struct{ Reason string }

func (e *MissingError) Error() string { return "cannot boot a systemd container: " + e.Reason }

// Start boots a fresh container, for programs (tests use Boot). It builds the cached
// rootfs first if there is none. The caller must Remove the container.
func Start() (*Container, error) {
	if os.Geteuid() != 0 {
		return nil, &MissingError{"not running as root"}
	}
	if _, err := exec.LookPath("bash"); err != nil {
		return nil, &MissingError{"no bash"}
	}
	// Not t.TempDir: test names may bring characters (",", " ", "=") that the overlayfs
	// options and nspawn's --bind cannot take.
	dir, err := os.MkdirTemp("", "systemdtest-")
	if err != nil {
		return nil, err
	}
	c := &Container{dir: dir, script: filepath.Join(dir, "container.sh"), done: make(chan struct{})}
	fail := func(err error) (*Container, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(c.script, script, 0o755); err != nil {
		return fail(err)
	}
	if out, err := c.tool(context.Background(), "check"); err != nil {
		return fail(&MissingError{out})
	}
	if err := buildRootfs(c); err != nil {
		return fail(&MissingError{"building the rootfs: " + err.Error()})
	}
	if err := c.start(); err != nil {
		return fail(err)
	}
	return c, nil
}

// Remove stops the container (see Stop) and removes its state directory.
func (c *Container) Remove() error {
	err := c.Stop()
	return errors.Join(err, os.RemoveAll(c.dir))
}

func buildRootfs(c *Container) error {
	rootfs.Lock()
	defer rootfs.Unlock()
	if !rootfs.done {
		ctx, cancel := context.WithTimeout(context.Background(), RootfsTimeout)
		defer cancel()
		if out, err := c.tool(ctx, "rootfs"); err != nil {
			rootfs.err = fmt.Errorf("%v: %s", err, out)
		}
		rootfs.done = true
	}
	return rootfs.err
}

// tool runs container.sh and returns its combined output.
func (c *Container) tool(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// start runs systemd-nspawn as a child of this process (so that it is reaped here, not by
// the host's init) and waits until the container's systemd is up.
func (c *Container) start() error {
	console, err := os.Create(filepath.Join(c.dir, "console.log"))
	if err != nil {
		return err
	}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig is sent when the thread that started the child ends: keep this
		// goroutine on its thread until the child has been reaped.
		runtime.LockOSThread()
		defer close(c.done)
		defer console.Close()
		cmd := exec.Command("bash", c.script, "run", c.dir)
		cmd.Stdout, cmd.Stderr = console, console
		// Should this process die without stopping the container, nspawn gets SIGTERM and
		// halts it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting container.sh run: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), BootTimeout)
	defer cancel()
	go func() { // no use waiting for a container whose nspawn is gone
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	cmd := exec.CommandContext(ctx, "bash", c.script, "wait", c.dir)
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err == nil {
		c.pid, err = strconv.Atoi(strings.TrimSpace(string(out)))
	}
	if err != nil {
		stopErr := c.Stop()
		return errors.Join(fmt.Errorf("container did not boot: %v: %s\nconsole:\n%s",
			err, strings.TrimSpace(stderr.String()), c.consoleTail(40)), stopErr)
	}
	return nil
}

func (c *Container) consoleTail(n int) string {
	b, err := os.ReadFile(filepath.Join(c.dir, "console.log"))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop halts the container and removes its overlay, its cgroups and its processes; it
// leaves Dir with HostDir and the console log, which Boot's cleanup removes after it. Boot
// registers it with t.Cleanup; calling it earlier is fine, and later calls return the
// first one's result.
func (c *Container) Stop() error {
	c.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), StopTimeout)
		defer cancel()
		if out, err := c.tool(ctx, "stop", c.dir); err != nil {
			c.stopErr = fmt.Errorf("stopping the container: %v: %s", err, out)
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			c.stopErr = errors.Join(c.stopErr, errors.New("systemd-nspawn has not exited"))
		}
	})
	return c.stopErr
}

// Stopped is closed once the container's systemd-nspawn has exited, for whatever reason.
func (c *Container) Stopped() <-chan struct{} { return c.done }

// PID is the host pid of the container's init (systemd).
func (c *Container) PID() int { return c.pid }

// Dir is the container's state directory on the host (see container.sh).
func (c *Container) Dir() string { return c.dir }

// HostDir is the host directory shared read-write into the container at GuestDir.
func (c *Container) HostDir() string { return filepath.Join(c.dir, "share") }

// GuestDir is where HostDir appears inside the container: /opt/ss-bridge.
func (c *Container) GuestDir() string { return GuestDir }

// GuestPath is the path inside the container of HostDir's name.
func (c *Container) GuestPath(name string) string { return path.Join(GuestDir, name) }

// BusAddress is the D-Bus address of the container's system bus, usable from the host.
func (c *Container) BusAddress() string {
	return fmt.Sprintf("unix:path=/proc/%d/root/run/dbus/system_bus_socket", c.pid)
}

// SystemBus connects to the container's system bus (authenticated as root, Hello sent).
// The caller closes it. It suits go-systemd's dbus.NewConnection as its dialer.
func (c *Container) SystemBus() (*dbus.Conn, error) {
	conn, err := dbus.Dial(c.BusAddress())
	if err != nil {
		return nil, err
	}
	if err := conn.Auth(nil); err != nil {
		conn.Close()
		return nil, err
	}
	if err := conn.Hello(); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Exec runs a command as root inside the container (its mount, pid, uts and ipc
// namespaces, a clean environment with a standard PATH) and returns its stdout. The error
// names the command and includes its exit status and stderr. It times out after
// ExecTimeout.
func (c *Container) Exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	return c.ExecContext(ctx, nil, args...)
}

// ExecContext is Exec with a context and the command's standard input (nil: none).
func (c *Container) ExecContext(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("systemdtest: Exec: no command")
	}
	select {
	case <-c.done:
		return "", fmt.Errorf("in container: %q: the container has stopped", args)
	default:
	}
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script, "exec", strconv.Itoa(c.pid)}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "no stderr"
		}
		return stdout.String(), fmt.Errorf("in container: %q: %v: %s", args, err, msg)
	}
	return stdout.String(), nil
}

// WriteFile writes a file inside the container (the directory must exist).
func (c *Container) WriteFile(guestPath string, data []byte, perm os.FileMode) error {
	ctx, cancel := context.WithTimeout(context.Background(), ExecTimeout)
	defer cancel()
	_, err := c.ExecContext(ctx, bytes.NewReader(data), "sh", "-c", `cat >"$1" && chmod "$2" "$1"`,
		"sh", guestPath, strconv.FormatUint(uint64(perm.Perm()), 8))
	return err
}

// WriteUnit writes a unit file (or, with a name like "foo.service.d/x.conf", a drop-in)
// into /etc/systemd/system inside the container and runs systemctl daemon-reload.
func (c *Container) WriteUnit(name, content string) error {
	p := path.Join("/etc/systemd/system", name)
	if _, err := c.Exec("mkdir", "-p", path.Dir(p)); err != nil {
		return err
	}
	if err := c.WriteFile(p, []byte(content), 0o644); err != nil {
		return err
	}
	_, err := c.Exec("systemctl", "daemon-reload")
	return err
}

// Systemctl runs systemctl inside with the given arguments and returns its trimmed stdout.
func (c *Container) Systemctl(args ...string) (string, error) {
	out, err := c.Exec(append([]string{"systemctl"}, args...)...)
	return strings.TrimSpace(out), err
}

// Property is a property of a unit (systemctl show -P), e.g. "ActiveState", "MainPID",
// "StatusText", "NRestarts".
func (c *Container) Property(unit, name string) (string, error) {
	return c.Systemctl("show", "-P", name, unit)
}

// WaitProperty waits until a property of a unit has the wanted value, and fails after
// timeout with the last value seen.
func (c *Container) WaitProperty(unit, name, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := c.Property(unit, name)
		if err == nil && got == want {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("%s %s is %q after %v, want %q", unit, name, got, timeout, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Journal returns the journal of a unit since boot ("" for the whole journal), one entry a
// line with precise timestamps.
func (c *Container) Journal(unit string) (string, error) {
	args := []string{"journalctl", "--no-pager", "-q", "-o", "short-precise"}
	if unit != "" {
		args = append(args, "-u", unit)
	}
	return c.Exec(args...)
}

// BuildGo builds a Go main package (statically: CGO_ENABLED=0) into HostDir under name
// and returns its path inside the container. pkg is as `go build` takes it, relative to
// the test's working directory (its package's directory).
func (c *Container) BuildGo(pkg, name string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "build", "-o", filepath.Join(c.HostDir(), name), pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v: %s", pkg, err, out)
	}
	return c.GuestPath(name), nil
}
