package units_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/systemdtest"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
)

const module = "github.com/ss-bridge/ss-bridge"

func freePort(t *testing.T) string {
	return strconv.Itoa(testkit.FreePort(t))
}

// run runs a command in the container and returns its combined output and
// exit status.
func run(t *testing.T, c *systemdtest.Container, args ...string) (string, int) {
	t.Helper()
	out, err := c.Exec(append([]string{"sh", "-c", `"$@" 2>&1; echo "EXIT=$?"`, "sh"}, args...)...)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	i := strings.LastIndex(out, "EXIT=")
	code, _ := strconv.Atoi(strings.TrimSpace(out[i+5:]))
	return out[:i], code
}

var client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get returns the generation that answered.
func get(port string) (int, error) {
	_, gen, err := testkit.Ask(client, "http://127.0.0.1:"+port+"/")
	return gen, err
}

func startLoad(port string, clients int) *testkit.Load {
	return testkit.StartLoad(clients, 0, func(int) (int, error) { return get(port) })
}

func TestCommandsAgainstSystemd(t *testing.T) {
	c := systemdtest.Boot(t)
	bridge, err := c.BuildGo(module+"/cmd/ss-bridge", "ss-bridge")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.BuildGo(module+"/internal/testworker", "testworker"); err != nil {
		t.Fatal(err)
	}
	// The worker fails to start while the flag file "fail" exists, and
	// takes 3 s to start while "slow" exists.
	script := "#!/bin/sh\n[ -e " + c.GuestPath("fail") + " ] && exit 3\n[ -e " + c.GuestPath("slow") + " ] && sleep 3\nexec " + c.GuestPath("testworker") + " -ready\n"
	if err := os.WriteFile(filepath.Join(c.HostDir(), "run-worker"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)

	t.Run("unit --install --enable --now", func(t *testing.T) {
		out, code := run(t, c, bridge, "unit", "--name=web", "--socket", "--port=127.0.0.1:"+port, "--ready=notify",
			"--ready-timeout=5", "--install", "--enable", "--now", "--", c.GuestPath("run-worker"))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		for _, want := range []string{"installed /etc/systemd/system/web.service\n", "installed /etc/systemd/system/web.socket\n",
			"enabled web.socket\n", "started web.socket\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if out, code := run(t, c, "systemd-analyze", "verify", "/etc/systemd/system/web.service", "/etc/systemd/system/web.socket"); code != 0 {
			t.Errorf("systemd-analyze verify: %s", out)
		}
		if enabled, _ := c.Systemctl("is-enabled", "web.socket"); enabled != "enabled" {
			t.Errorf("web.socket is %q", enabled)
		}
		// As systemctl enable does, install reloads systemd after enabling:
		// else systemctl warns at every command that the unit changed on disk.
		for _, unit := range []string{"web.service", "web.socket"} {
			if need, _ := c.Systemctl("show", "-P", "NeedDaemonReload", unit); need != "no" {
				t.Errorf("%s: NeedDaemonReload=%q after install", unit, need)
			}
		}
		if gen, err := get(port); err != nil || gen != 1 {
			t.Fatalf("first request: generation %d, %v", gen, err)
		}
		// Installing other content over it needs --force.
		out, code = run(t, c, bridge, "unit", "--name=web", "--socket", "--port=127.0.0.1:"+port, "--install", "--", "/bin/true")
		if code == 0 || !strings.Contains(out, "exists and differs") || strings.Count(out, "\n") != 1 {
			t.Errorf("overwrote without --force (exit %d): %s", code, out)
		}
	})

	t.Run("reload under load", func(t *testing.T) {
		l := startLoad(port, 4)
		for want := 2; want <= 6; want++ {
			out, code := run(t, c, bridge, "reload", "web")
			if code != 0 || !regexp.MustCompile(fmt.Sprintf(`^web\.service reloaded: generation %d \(pid \d+\) serving\n$`, want)).MatchString(out) {
				t.Fatalf("reload: exit %d: %q", code, out)
			}
			// reload returns once the new generation serves.
			if gen, err := get(port); err != nil || gen != want {
				t.Fatalf("after reload %d: generation %d, %v", want, gen, err)
			}
		}
		l.Finish(t, "load")
	})

	t.Run("status", func(t *testing.T) {
		out, code := run(t, c, bridge, "status", "web")
		if code != 0 || !strings.HasPrefix(out, "web.service: active (running) since ") ||
			!regexp.MustCompile(`(?m)^generation 6: pid \d+$`).MatchString(out) || !strings.Contains(out, "status: generation 6 (pid ") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		out, code = run(t, c, bridge, "status", "--json", "web")
		var r struct {
			Running     bool   `json:"running"`
			ActiveState string `json:"active_state"`
			MainPID     int    `json:"main_pid"`
			Generations []struct{ Generation, PID int }
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || !r.Running || r.ActiveState != "active" ||
			r.MainPID == 0 || len(r.Generations) != 1 || r.Generations[0].Generation != 6 {
			t.Fatalf("exit %d, %v: %s", code, err, out)
		}
	})

	t.Run("a failed reload is reported", func(t *testing.T) {
		os.WriteFile(filepath.Join(c.HostDir(), "fail"), nil, 0o644)
		defer os.Remove(filepath.Join(c.HostDir(), "fail"))
		out, code := run(t, c, bridge, "reload", "web")
		if code == 0 || !strings.Contains(out, "reload failed") || strings.Count(out, "\n") != 1 {
			t.Fatalf("exit %d: %q", code, out)
		}
		if gen, err := get(port); err != nil || gen != 6 {
			t.Fatalf("the old generation stopped serving: generation %d, %v", gen, err)
		}
		// The unit's control socket, in its RuntimeDirectory=, has the live
		// account of that reload.
		out, code = run(t, c, bridge, "status", "--json", "web")
		var r struct {
			Live *struct {
				Serving    int `json:"serving"`
				LastReload struct {
					Generation int    `json:"generation"`
					Outcome    string `json:"outcome"`
					Error      string `json:"error"`
				} `json:"last_reload"`
			} `json:"live"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || r.Live == nil || r.Live.Serving != 1 ||
			r.Live.LastReload.Outcome != "failed" || r.Live.LastReload.Generation != 7 || !strings.Contains(r.Live.LastReload.Error, "exited with status 768") {
			t.Errorf("status --json after a failed reload: exit %d, %v: %s", code, err, out)
		}
		if out, code := run(t, c, bridge, "scale", "web", "2"); code != 1 || out != "ss-bridge: scale: the server runs a single worker: scaling needs --workers\n" {
			t.Errorf("scale of a single worker: exit %d: %q", code, out)
		}
	})

	// A reload job queued while a start job runs is merged into it by
	// systemd: no SIGHUP is sent. reload must wait for the start, then
	// reload, and name a generation that started after it was asked.
	t.Run("reload while the unit starts", func(t *testing.T) {
		if _, err := c.Systemctl("stop", "web.service"); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(c.HostDir(), "slow"), nil, 0o644)
		defer os.Remove(filepath.Join(c.HostDir(), "slow"))
		// A request activates the service through the socket.
		first := make(chan error, 1)
		go func() {
			gen, err := get(port)
			if err == nil && gen != 1 {
				err = fmt.Errorf("generation %d", gen)
			}
			first <- err
		}()
		if err := c.WaitProperty("web.service", "ActiveState", "activating", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, code := run(t, c, bridge, "reload", "web")
		took := time.Since(start)
		t.Logf("reload during the start took %v: %q", took.Round(time.Millisecond), out)
		if code != 0 || !regexp.MustCompile(`^web\.service reloaded: generation 2 \(pid \d+\) serving\n$`).MatchString(out) {
			t.Fatalf("exit %d: %q", code, out)
		}
		if err := <-first; err != nil {
			t.Fatalf("the request that started the service: %v", err)
		}
		if gen, err := get(port); err != nil || gen != 2 {
			t.Fatalf("after the reload: generation %d, %v", gen, err)
		}
	})

	t.Run("reload of a unit that is not running", func(t *testing.T) {
		if _, err := c.Systemctl("stop", "web.service"); err != nil {
			t.Fatal(err)
		}
		out, code := run(t, c, bridge, "reload", "web")
		if code != 0 || out != "web.service is not running; its next start runs the new code\n" {
			t.Fatalf("exit %d: %q", code, out)
		}
		if state, _ := c.Property("web.service", "ActiveState"); state != "inactive" {
			t.Errorf("web.service is %s", state)
		}
		// The socket still activates it.
		if gen, err := get(port); err != nil || gen != 1 {
			t.Fatalf("after the reload: generation %d, %v", gen, err)
		}
	})

	t.Run("reload of a failed unit", func(t *testing.T) {
		if err := c.WriteUnit("web.service.d/no-restart.conf", "[Service]\nRestart=no\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Systemctl("start", "web.service"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Systemctl("kill", "--signal=KILL", "web.service"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitProperty("web.service", "ActiveState", "failed", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		out, code := run(t, c, bridge, "reload", "web")
		if code != 1 || out != "ss-bridge: reload web.service: the unit has failed (result signal); not reloaded\n" {
			t.Errorf("exit %d: %q", code, out)
		}
		// Serving again, for the tests after this one.
		if _, err := c.Exec("rm", "-r", "/etc/systemd/system/web.service.d"); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"daemon-reload"}, {"reset-failed", "web.service"}, {"start", "web.socket"}} {
			if _, err := c.Systemctl(args...); err != nil {
				t.Fatal(err)
			}
		}
		if gen, err := get(port); err != nil || gen != 1 {
			t.Fatalf("after reset-failed: generation %d, %v", gen, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		out, code := run(t, c, bridge, "reload", "nosuch")
		if code != 1 || out != "ss-bridge: unit nosuch.service is not-found\n" {
			t.Errorf("unknown unit: exit %d: %q", code, out)
		}
		out, code = run(t, c, bridge, "status", "nosuch")
		if code != 4 || !strings.Contains(out, "not-found") {
			t.Errorf("status of an unknown unit: exit %d: %q", code, out)
		}
		out, code = run(t, c, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bridge, "reload", "web")
		if code != 1 || !strings.HasPrefix(out, "ss-bridge: reload web.service: ") || strings.Count(out, "\n") != 1 ||
			!regexp.MustCompile(`(?i)denied|authenticat|permission`).MatchString(out) {
			t.Errorf("unprivileged reload: exit %d: %q", code, out)
		}
	})

	t.Run("stop", func(t *testing.T) {
		if _, err := c.Systemctl("stop", "web.socket", "web.service"); err != nil {
			t.Fatal(err)
		}
		out, code := run(t, c, bridge, "status", "web")
		if code != 3 || !strings.HasPrefix(out, "web.service: inactive (dead)") {
			t.Fatalf("exit %d: %q", code, out)
		}
		if _, err := get(port); err == nil {
			t.Fatal("still served after stop")
		}
	})

	t.Run("legacy unit", func(t *testing.T) {
		port := freePort(t)
		out, code := run(t, c, bridge, "unit", "--name=old", "--systemd-version=252", "--port=127.0.0.1:"+port,
			"--interval=0.2", "--install", "--now", "--", c.GuestPath("testworker"))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		if out, code := run(t, c, "systemd-analyze", "verify", "/etc/systemd/system/old.service"); code != 0 {
			t.Errorf("systemd-analyze verify: %s", out)
		}
		if gen, err := get(port); err != nil || gen != 1 {
			t.Fatalf("generation %d, %v", gen, err)
		}
		out, code = run(t, c, bridge, "reload", "old")
		if code != 0 || !strings.HasPrefix(out, "old.service reloaded: ") {
			t.Fatalf("reload: exit %d: %q", code, out)
		}
		if gen, err := get(port); err != nil || gen != 2 {
			t.Fatalf("after reload: generation %d, %v", gen, err)
		}
		// The legacy unit's control socket is beside its pid file.
		if out, code := run(t, c, bridge, "status", "--json", "old"); code != 0 || !strings.Contains(out, `"live":{"generation":2,`) {
			t.Errorf("status --json old: exit %d: %s", code, out)
		}
	})

	// scale UNIT N goes through the unit's control socket, in its
	// RuntimeDirectory=, and returns once N workers serve.
	t.Run("scale a pool", func(t *testing.T) {
		port := freePort(t)
		out, code := run(t, c, bridge, "unit", "--name=pool", "--port=127.0.0.1:"+port, "--workers=2",
			"--interval=0.2", "--install", "--now", "--", c.GuestPath("testworker"))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		defer c.Systemctl("stop", "pool.service")
		if gen, err := get(port); err != nil || gen != 1 {
			t.Fatalf("generation %d, %v", gen, err)
		}
		l := startLoad(port, 4)
		for _, n := range []int{6, 1} {
			out, code := run(t, c, bridge, "scale", "--timeout=30", "pool", strconv.Itoa(n))
			want := fmt.Sprintf("%d workers serving\n", n)
			if n == 1 {
				want = "1 worker serving\n"
			}
			if code != 0 || out != want {
				t.Fatalf("scale pool %d: exit %d: %q", n, code, out)
			}
			out, code = run(t, c, bridge, "status", "--json", "pool")
			var r struct {
				Live *struct{ Workers, Serving int } `json:"live"`
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || r.Live == nil || r.Live.Workers != n || r.Live.Serving != n {
				t.Errorf("status --json pool after scale %d: exit %d, %v: %s", n, code, err, out)
			}
		}
		time.Sleep(300 * time.Millisecond)
		l.Finish(t, "scaling a unit's pool 2 -> 6 -> 1")
	})
}

// hostBridge builds ss-bridge for the host.
func hostBridge(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ss-bridge")
	if out, err := exec.Command("go", "build", "-o", bin, module+"/cmd/ss-bridge").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return bin
}

func TestBusErrorsAreQuickAndClear(t *testing.T) {
	bin := hostBridge(t)
	dir := t.TempDir()
	// A bus that accepts connections and never answers.
	silent, err := net.Listen("unix", filepath.Join(dir, "silent"))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	for _, tc := range []struct {
		name, bus string
		args      []string
		want      string
		code      int
		within    time.Duration
	}{
		{"no bus", "unix:path=" + filepath.Join(dir, "none"), []string{"reload", "web"}, "ss-bridge: connect to the system bus: ", 1, 5 * time.Second},
		{"silent bus", "unix:path=" + filepath.Join(dir, "silent"), []string{"reload", "--timeout=1", "web"}, "ss-bridge: connect to the system bus: context deadline exceeded", 1, 5 * time.Second},
		{"status, no bus", "unix:path=" + filepath.Join(dir, "none"), []string{"status", "web"}, "connect to the system bus: ", 4, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tc.args...)
			cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+tc.bus)
			start := time.Now()
			out, _ := cmd.CombinedOutput()
			took := time.Since(start)
			if cmd.ProcessState.ExitCode() != tc.code || !strings.Contains(string(out), tc.want) || strings.Count(string(out), "\n") != 1 {
				t.Errorf("exit %d: %q; want %d and %q on one line", cmd.ProcessState.ExitCode(), out, tc.code, tc.want)
			}
			if took > tc.within {
				t.Errorf("took %v", took)
			}
		})
	}
}

// inDir runs a command in the container in the directory dir.
func inDir(t *testing.T, c *systemdtest.Container, dir string, args ...string) (string, int) {
	t.Helper()
	return run(t, c, append([]string{"sh", "-c", `cd "$1" || exit 99; shift; exec "$@"`, "sh", dir}, args...)...)
}

// startUnit daemon-reloads, starts a unit and returns the generation that
// answers on port.
func startUnit(t *testing.T, c *systemdtest.Container, unit, port string) {
	t.Helper()
	if _, err := c.Systemctl("daemon-reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Systemctl("start", unit); err != nil {
		j, _ := c.Journal(unit)
		t.Fatalf("%v\n%s", err, j)
	}
	if gen, err := get(port); err != nil || gen != 1 {
		t.Fatalf("%s: generation %d, %v", unit, gen, err)
	}
}

// reloadUnit reloads a unit with ss-bridge reload and checks that
// generation 2 serves.
func reloadUnit(t *testing.T, c *systemdtest.Container, bridge, unit, port string) {
	t.Helper()
	out, code := run(t, c, bridge, "reload", unit)
	if code != 0 || !strings.HasPrefix(out, unit+".service reloaded: generation 2 (pid ") {
		t.Fatalf("reload: exit %d: %q", code, out)
	}
	if gen, err := get(port); err != nil || gen != 2 {
		t.Fatalf("%s after the reload: generation %d, %v", unit, gen, err)
	}
}

// A unit is printed from a working directory other than "/", which systemd
// starts services in, and names its worker with a relative path; it must
// run as printed.
func TestUnitWorksAsPrinted(t *testing.T) {
	c := systemdtest.Boot(t)
	bridge, err := c.BuildGo(module+"/cmd/ss-bridge", "ss-bridge")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(c.HostDir(), "app", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := c.BuildGo(module+"/internal/testworker", "app/bin/testworker"); err != nil {
		t.Fatal(err)
	}
	app := c.GuestPath("app")

	t.Run("printed, relative worker path", func(t *testing.T) {
		port := freePort(t)
		// ss-bridge itself is run by a relative path too.
		out, code := inDir(t, c, app, "sh", "-c", `../ss-bridge unit --name=demo --port=127.0.0.1:$0 -- bin/testworker -ready >/etc/systemd/system/demo.service`, port)
		if code != 0 || out != "" {
			t.Fatalf("exit %d: %q", code, out)
		}
		unit, err := c.Exec("cat", "/etc/systemd/system/demo.service")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"\nWorkingDirectory=" + app + "\n",
			"\nExecStart=" + bridge + " --port=127.0.0.1:" + port + " -- " + app + "/bin/testworker -ready\n"} {
			if !strings.Contains(unit, want) {
				t.Errorf("the unit lacks %q:\n%s", want, unit)
			}
		}
		if out, code := run(t, c, "systemd-analyze", "verify", "/etc/systemd/system/demo.service"); code != 0 {
			t.Errorf("systemd-analyze verify: %s", out)
		}
		startUnit(t, c, "demo.service", port)
		reloadUnit(t, c, bridge, "demo", port)
	})

	t.Run("--output-dir, worker found in PATH", func(t *testing.T) {
		port := freePort(t)
		out, code := inDir(t, c, app, "env", "PATH="+app+"/bin:/usr/bin:/bin", bridge, "unit", "--name=demo2", "--socket",
			"--port=127.0.0.1:"+port, "--output-dir=/etc/systemd/system", "--", "testworker")
		if code != 0 || out != "wrote /etc/systemd/system/demo2.service\nwrote /etc/systemd/system/demo2.socket\n" {
			t.Fatalf("exit %d: %q", code, out)
		}
		if out, code := run(t, c, "systemd-analyze", "verify", "/etc/systemd/system/demo2.service", "/etc/systemd/system/demo2.socket"); code != 0 {
			t.Errorf("systemd-analyze verify: %s", out)
		}
		startUnit(t, c, "demo2.socket", port)
		if got, _ := c.Property("demo2.service", "WorkingDirectory"); got != app {
			t.Errorf("WorkingDirectory %q", got)
		}
		reloadUnit(t, c, bridge, "demo2", port)
		// The same files again are left alone; other ones need --force.
		out, code = inDir(t, c, app, "env", "PATH="+app+"/bin:/usr/bin:/bin", bridge, "unit", "--name=demo2", "--socket",
			"--port=127.0.0.1:"+port, "--output-dir=/etc/systemd/system", "--", "testworker")
		if code != 0 || out != "unchanged /etc/systemd/system/demo2.service\nunchanged /etc/systemd/system/demo2.socket\n" {
			t.Fatalf("again: exit %d: %q", code, out)
		}
	})

	t.Run("worker not found", func(t *testing.T) {
		out, code := inDir(t, c, "/", bridge, "unit", "--name=demo3", "--port=8080", "--", "bin/testworker")
		if code != 1 || out != "ss-bridge: unit: server program bin/testworker: no such file or directory\n" {
			t.Fatalf("exit %d: %q", code, out)
		}
	})
}

// Whatever goes into a unit, systemd must read it as written: a newline
// must not start a directive of its own, and a worker must get its
// arguments byte for byte. What a setting cannot hold is refused.
func TestUnitEscaping(t *testing.T) {
	c := systemdtest.Boot(t)
	bridge, err := c.BuildGo(module+"/cmd/ss-bridge", "ss-bridge")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.BuildGo(module+"/internal/testworker", "testworker"); err != nil {
		t.Fatal(err)
	}
	// The worker writes its argv, NUL-terminated, to "argv" in its working
	// directory, and serves.
	worker := "#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" >argv\nexec " + c.GuestPath("testworker") + " -ready\n"

	args := []string{"a\nb", "c\rd", "tab\tx", "\x01\x1b\x7f", "ünï", "\u0085", ";", "", "%h", "$HOME", "${X}",
		`back\slash`, `q"uote`, "'", "ExecStartPre=/bin/false"}
	for i, tc := range []struct {
		name, worker string
		args         []string
	}{
		{"arguments", "worker", args},
		// A directive of [Unit], where Description= is: the start would be skipped.
		{"newline in the worker's path", "w\nConditionUser=nobody", nil},
		{"CR, control character and % in the worker's path", "w\r\x01%", []string{"x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("esc%d", i)
			dir := filepath.Join(c.HostDir(), name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, tc.worker), []byte(worker), 0o755); err != nil {
				t.Fatal(err)
			}
			port := freePort(t)
			guestDir := c.GuestPath(name)
			out, code := inDir(t, c, guestDir, append([]string{bridge, "unit", "--name=" + name, "--port=127.0.0.1:" + port,
				"--ready=notify", "--output-dir=/etc/systemd/system", "--", "./" + tc.worker}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %q", code, out)
			}
			file := "/etc/systemd/system/" + name + ".service"
			if out, code := run(t, c, "systemd-analyze", "verify", file); code != 0 || out != "" {
				t.Errorf("systemd-analyze verify: exit %d: %s", code, out)
			}
			startUnit(t, c, name+".service", port)
			if cond, err := c.Property(name+".service", "ConditionResult"); err != nil || cond != "yes" {
				t.Errorf("ConditionResult=%s, %v", cond, err)
			}
			b, err := os.ReadFile(filepath.Join(dir, "argv"))
			if err != nil {
				t.Fatal(err)
			}
			want := append([]string{guestDir + "/" + tc.worker}, tc.args...)
			if got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"); fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
				t.Errorf("the worker got argv\n%q\nwant\n%q", got, want)
			}
			desc, err := c.Property(name+".service", "Description")
			if err != nil {
				t.Error(err)
			}
			if strings.ContainsAny(desc, "\r\n") || !strings.HasSuffix(desc, " under ss-bridge") {
				t.Errorf("Description=%q", desc)
			}
			t.Logf("Description=%s", desc)
			reloadUnit(t, c, bridge, name, port)
			if _, err := c.Systemctl("stop", name+".service"); err != nil {
				t.Fatal(err)
			}
		})
	}

	if err := os.Mkdir(filepath.Join(c.HostDir(), "dir\nx"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"newline in --name", []string{"--name=a\nb"}, `ss-bridge: unit: unit name "a\nb": only letters, digits and ":-_.\@" are allowed` + "\n"},
		{"newline in --path", []string{"--name=p", "--socket", "--path=/run/a\nb.sock"}, `ss-bridge: unit: --path "/run/a\nb.sock" has a control character, which a unit file cannot hold` + "\n"},
		{"CR in --path", []string{"--name=p", "--socket", "--path=/run/a\rb.sock"}, `ss-bridge: unit: --path "/run/a\rb.sock" has a control character, which a unit file cannot hold` + "\n"},
		{"invalid UTF-8 in --path", []string{"--name=p", "--socket", "--path=/run/a\xffb.sock"}, `ss-bridge: unit: argument "--path=/run/a\xffb.sock" is not valid UTF-8, which systemd cannot show over D-Bus` + "\n"},
		// systemd would run the worker with these bytes, but systemctl show
		// and status fail on such a unit: D-Bus strings are UTF-8.
		{"invalid UTF-8 in an argument", []string{"--name=u", "--port=8080", "--", "/bin/true", "a\xffb"}, `ss-bridge: unit: argument "a\xffb" is not valid UTF-8, which systemd cannot show over D-Bus` + "\n"},
		{"newline in --dir", []string{"--name=d", "--dir=" + c.GuestPath("dir\nx")}, `ss-bridge: unit: working directory "` + c.GuestPath("dir") + `\nx" has a control character, which a unit file cannot hold` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{bridge, "unit"}, tc.args...)
			if !slices.Contains(args, "--") {
				args = append(args, "--", "/bin/true")
			}
			out, code := run(t, c, args...)
			if code != 1 || out != tc.want {
				t.Errorf("exit %d: %q\nwant %q", code, out, tc.want)
			}
		})
	}
}

// The unit names the ss-bridge it was made by as that was run, and warns
// when that is a build that will not stay where it is.
func TestUnitBinary(t *testing.T) {
	bin := hostBridge(t) // in a temporary directory
	link := filepath.Join(t.TempDir(), "linked-ss-bridge")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	cmd := exec.Command(link, "unit", "--name=x", "--systemd-version=257", "--", "/bin/true")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "\nExecStart="+link+" -- /bin/true\n") {
		t.Errorf("ExecStart= does not name the path ss-bridge was run by (%s):\n%s", link, stdout.String())
	}
	if want := "ss-bridge: warning: ExecStart= runs " + link + ", which lies in the temporary directory "; !strings.HasPrefix(stderr.String(), want) ||
		strings.Count(stderr.String(), "\n") != 1 {
		t.Errorf("stderr %q, want a one-line warning starting %q", stderr.String(), want)
	}
	out, err := exec.Command(bin, "unit", "--name=x", "--systemd-version=257", "--install", "--output-dir=/tmp", "--", "/bin/true").CombinedOutput()
	if err == nil || string(out) != "ss-bridge: unit: --output-dir and --install exclude each other\n" {
		t.Errorf("%v: %q", err, out)
	}
}

// Without a bus, status --json still says which unit it is about.
func TestStatusJSONWithoutBusNamesTheUnit(t *testing.T) {
	bin := hostBridge(t)
	cmd := exec.Command(bin, "status", "--json", "web")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS=unix:path="+filepath.Join(t.TempDir(), "none"))
	out, _ := cmd.Output()
	var r struct {
		Unit    string `json:"unit"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(out, &r); err != nil || cmd.ProcessState.ExitCode() != 4 || r.Unit != "web.service" ||
		!strings.Contains(r.Message, "connect to the system bus") {
		t.Fatalf("exit %d, %v: %s", cmd.ProcessState.ExitCode(), err, out)
	}
}
