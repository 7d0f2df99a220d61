package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ---------------------------------------------------------------------------
// Superdaemon restart under systemd
//
// One throwaway container booted by a real systemd (internal/systemdtest/
// container.sh, run directly: that package needs a testing.TB), sharing the
// host's network. ss-bridge and this program (the worker) are copied into
// its shared directory; each configuration is installed as units, loaded
// from the host, and restarted with `systemctl restart` a few times.

// systemdScenarioPrefix starts the names of the scenario's rows.
const systemdScenarioPrefix = "superdaemon restart under systemd"

// ctr is a running container of container.sh.
type ctr struct {
	script, dir string
	pid         int           // host pid of its init
	done        chan struct{} // closed once systemd-nspawn has been reaped
}

// findScript returns the path of container.sh: the flag's, else
// internal/systemdtest/container.sh in the working directory or one of its
// parents, or above the executable.
func findScript(flagged string) (string, error) {
	if flagged != "" {
		if _, err := os.Stat(flagged); err != nil {
			return "", err
		}
		return filepath.Abs(flagged)
	}
	rel := filepath.Join("internal", "systemdtest", "container.sh")
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if selfPath != "" {
		starts = append(starts, filepath.Dir(selfPath))
	}
	for _, d := range starts {
		for {
			p := filepath.Join(d, rel)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", errors.New("no " + rel + " here or above (give -systemd-script)")
}

func (c *ctr) tool(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// bootContainer checks the prerequisites, builds the rootfs if needed and
// boots a container. The error says why the scenario cannot run.
func bootContainer(script string) (*ctr, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		return nil, errors.New("no bash")
	}
	dir, err := os.MkdirTemp("", "ss-bench-systemd-")
	if err != nil {
		return nil, err
	}
	c := &ctr{script: script, dir: dir, done: make(chan struct{})}
	if out, err := c.tool(time.Minute, "check"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("container.sh check: %s", oneLine(out))
	}
	if out, err := c.tool(20*time.Minute, "rootfs"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("container.sh rootfs: %v: %s", err, oneLine(out))
	}
	if err := os.MkdirAll(filepath.Join(dir, "share"), 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	console, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig comes when the thread that started the child ends:
		// stay on it until the child is reaped.
		runtime.LockOSThread()
		defer close(c.done)
		defer console.Close()
		cmd := exec.Command("bash", script, "run", dir)
		cmd.Stdout, cmd.Stderr = console, console
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
	}()
	if err := <-started; err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("container.sh run: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	cmd := exec.CommandContext(ctx, "bash", script, "wait", dir)
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err == nil {
		c.pid, err = strconv.Atoi(strings.TrimSpace(string(out)))
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("the container did not boot: %v: %s", err, oneLine(stderr.String()))
	}
	return c, nil
}

// stop shuts the container down and removes its directory.
func (c *ctr) stop() {
	if out, err := c.tool(time.Minute, "stop", c.dir); err != nil {
		fmt.Fprintf(os.Stderr, "ss-bench: container.sh stop: %v: %s\n", err, out)
	}
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		fmt.Fprintf(os.Stderr, "ss-bench: systemd-nspawn of %s has not exited\n", c.dir)
		return // leave the directory for inspection
	}
	os.RemoveAll(c.dir)
}

// exec runs a command inside and returns its stdout.
func (c *ctr) exec(timeout time.Duration, stdin io.Reader, args ...string) (string, error) {
	select {
	case <-c.done:
		return "", errors.New("the container has stopped")
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script, "exec", strconv.Itoa(c.pid)}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("in the container: %q: %v: %s", args, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (c *ctr) systemctl(args ...string) (string, error) {
	out, err := c.exec(2*time.Minute, nil, append([]string{"systemctl"}, args...)...)
	return strings.TrimSpace(out), err
}

func (c *ctr) writeUnits(units map[string]string) error {
	for name, content := range units {
		if _, err := c.exec(time.Minute, strings.NewReader(content), "sh", "-c", `cat >"$1"`, "sh", "/etc/systemd/system/"+name); err != nil {
			return err
		}
	}
	_, err := c.systemctl("daemon-reload")
	return err
}

func (c *ctr) journal(units ...string) string {
	args := []string{"journalctl", "--no-pager", "-q", "-o", "short-precise", "-n", "30"}
	for _, u := range units {
		args = append(args, "-u", u)
	}
	out, err := c.exec(time.Minute, nil, args...)
	if err != nil {
		return err.Error()
	}
	return out
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// sdConfig is one way of running a superdaemon as a systemd service.
type sdConfig struct {
	name    string // in the scenario's name
	service string // the unit restarted
	units   func(addr string) map[string]string
	stop    []string // units stopped at the end
}

const guestDir = "/opt/ss-bridge"

func bridgeExec(addr string, p Params) string {
	return fmt.Sprintf("%s/ss-bridge --port=%s --ready=notify -- %s/ss-bench worker -ready -latency=%s", guestDir, addr, guestDir, p.Latency)
}

func sdConfigs(p Params) []sdConfig {
	return []sdConfig{
		{name: "socket unit", service: "ssb-sock.service", stop: []string{"ssb-sock.service", "ssb-sock.socket"},
			units: func(addr string) map[string]string {
				return map[string]string{
					"ssb-sock.socket": "[Socket]\nListenStream=" + addr + "\nReusePort=no\n",
					"ssb-sock.service": "[Unit]\nRequires=ssb-sock.socket\nAfter=ssb-sock.socket\n\n[Service]\nType=notify-reload\nNotifyAccess=main\n" +
						"ExecStart=" + bridgeExec(addr, p) + "\nKillMode=mixed\nTimeoutStopSec=30\n",
				}
			}},
		{name: "fd store", service: "ssb-fdstore.service", stop: []string{"ssb-fdstore.service"},
			units: func(addr string) map[string]string {
				return map[string]string{
					"ssb-fdstore.service": "[Service]\nType=notify-reload\nNotifyAccess=main\nFileDescriptorStoreMax=16\n" +
						"ExecStart=" + bridgeExec(addr, p) + "\nKillMode=mixed\nTimeoutStopSec=30\n",
				}
			}},
	}
}

// anchorConfig runs start_server as a plain service: it can use neither a
// socket unit nor the fd store.
func anchorConfig(p Params, startServer string) sdConfig {
	return sdConfig{name: "anchor", service: "ssb-anchor.service", stop: []string{"ssb-anchor.service"},
		units: func(addr string) map[string]string {
			return map[string]string{
				"ssb-anchor.service": "[Service]\nType=simple\n" +
					fmt.Sprintf("ExecStart=%s --port=%s --interval=1 -- %s/ss-bench worker -latency=%s\n", startServer, addr, guestDir, p.Latency) +
					"KillMode=mixed\nTimeoutStopSec=30\n",
			}
		}}
}

// sdFigures are one configuration's figures in one load mode.
type sdFigures struct {
	perCycle      []Counts // failed requests of each cycle (ended in it)
	all           Counts
	requests      int
	down, restart []time.Duration
	baseGap       time.Duration
	replaced      bool
}

func (f sdFigures) record(res *Results, sc, bin string) {
	failed := make([]float64, len(f.perCycle))
	for i, c := range f.perCycle {
		failed[i] = float64(c.Failed())
	}
	res.Add(sc, "failed requests per cycle", Count, bin, median(failed))
	var kinds []string
	for k := Refused; k < nKinds; k++ {
		xs := make([]float64, len(f.perCycle))
		for i, c := range f.perCycle {
			xs[i] = float64(c.N[k])
		}
		if m := median(xs); m > 0 {
			kinds = append(kinds, strconv.FormatFloat(m, 'f', -1, 64)+" "+k.String())
		}
	}
	byKind := "none"
	if len(kinds) > 0 {
		byKind = strings.Join(kinds, ", ")
	}
	res.AddText(sc, "failed requests per cycle by kind (medians)", bin, byKind)
	res.AddText(sc, "failed requests, all cycles", bin, fmt.Sprintf("%s of %d", f.all, f.requests))
	res.Add(sc, "downtime (longest stretch without responses)", Ms, bin, medianMs(f.down))
	res.Add(sc, "(reference: longest stretch in the second before the restarts)", Ms, bin, ms(f.baseGap))
	res.Add(sc, "systemctl restart, as run from the host (container.sh exec included)", Ms, bin, medianMs(f.restart))
	res.AddText(sc, "a new superdaemon every cycle (MainPID)", bin, yesNo(f.replaced))
}

func systemdScenario(cfg string, cycles int, keepAlive bool) string {
	return fmt.Sprintf("%s, %s: %d × systemctl restart (%s)", systemdScenarioPrefix, cfg, cycles, modeName(keepAlive))
}

func scenarioSystemd(bins []Binary, p Params, res *Results) {
	cycles := max(1, p.SystemdCycles)
	fmt.Fprintf(os.Stderr, "scenario %s\n", systemdScenarioPrefix)
	subject := bins[0]
	cfgs := sdConfigs(p)
	allNA := func(why string) {
		for _, cfg := range cfgs {
			for _, ka := range p.Modes {
				for _, b := range bins {
					res.NA(systemdScenario(cfg.name, cycles, ka), "failed requests per cycle", Count, b.Name, why)
				}
			}
		}
	}
	script, err := findScript(p.SystemdScript)
	if err != nil {
		allNA(err.Error())
		return
	}
	c, err := bootContainer(script)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ss-bench: systemd: %v\n", err)
		allNA(oneLine(err.Error()))
		return
	}
	defer c.stop()
	vlogf(p, "container %s booted, init %d", c.dir, c.pid)

	share := filepath.Join(c.dir, "share")
	err = copyFile(subject.Path, filepath.Join(share, "ss-bridge"))
	if err == nil {
		err = copyFile(selfPath, filepath.Join(share, "ss-bench"))
	}
	if err != nil {
		allNA(oneLine(err.Error()))
		return
	}
	if _, err := c.exec(time.Minute, nil, guestDir+"/ss-bridge", "--version"); err != nil {
		allNA("ss-bridge does not run in the container: build it with CGO_ENABLED=0")
		fmt.Fprintf(os.Stderr, "ss-bench: systemd: %v\n", err)
		return
	}
	if _, err := c.exec(time.Minute, nil, guestDir+"/ss-bench", "worker", "-h"); err != nil && strings.Contains(err.Error(), "not found") {
		allNA("ss-bench does not run in the container: build it with CGO_ENABLED=0")
		return
	}

	// The anchor: start_server inside, if the container has it.
	anchorFigs := map[bool]sdFigures{}
	anchorWhy := ""
	startServer, err := c.exec(time.Minute, nil, "sh", "-c", "perl -MServer::Starter -e1 2>/dev/null && command -v start_server")
	startServer = strings.TrimSpace(startServer)
	if err != nil || startServer == "" {
		anchorWhy = "not in the container: no Server::Starter"
	} else {
		for _, ka := range p.Modes {
			f, err := runSystemd(c, anchorConfig(p, startServer), ka, cycles, p)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s / anchor (%s): %v\n", systemdScenarioPrefix, modeName(ka), err)
				continue
			}
			anchorFigs[ka] = f
		}
	}

	for _, cfg := range cfgs {
		for _, ka := range p.Modes {
			sc := systemdScenario(cfg.name, cycles, ka)
			fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
			f, err := runSystemd(c, cfg, ka, cycles, p)
			if err != nil {
				failure(res, sc, "failed requests per cycle", subject.Name, err)
			} else {
				f.record(res, sc, subject.Name)
			}
			for _, b := range bins[1:] {
				if af, ok := anchorFigs[ka]; ok && b.Name == bins[1].Name {
					af.record(res, sc, b.Name) // start_server as a plain service
					continue
				}
				why := anchorWhy
				if why == "" {
					why = "not run in the container"
				}
				if v, ok := res.Get("superdaemon TERM, then started again ("+modeName(ka)+")", "failed requests per cycle", b.Name); ok {
					why += fmt.Sprintf("; standalone stop/start (superdaemon TERM, then started again): %s per cycle", v.format(Count))
				} else {
					why += "; standalone stop/start not run here (-scenarios restart); the issue: Perl 0.35 lost about 70 per cycle"
				}
				res.NA(sc, "failed requests per cycle", Count, b.Name, why)
			}
		}
	}
}

// runSystemd installs and starts a configuration on a fresh port, loads it
// in one mode and restarts it cycles times, about a second apart.
func runSystemd(c *ctr, cfg sdConfig, keepAlive bool, cycles int, p Params) (f sdFigures, err error) {
	ports, err := freePorts(1)
	if err != nil {
		return f, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	if err := c.writeUnits(cfg.units(addr)); err != nil {
		return f, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%v; journal:\n%s", err, c.journal(cfg.stop...))
		}
		if _, serr := c.systemctl(append([]string{"stop"}, cfg.stop...)...); serr != nil && err == nil {
			err = serr
		}
	}()
	if _, err := c.systemctl("start", cfg.service); err != nil {
		return f, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, _, gerr := get(addr)
		if gerr == nil {
			break
		}
		if time.Now().After(deadline) {
			return f, fmt.Errorf("no response on %s within 15s after the start: %v", addr, gerr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mainPID := func() string { s, _ := c.systemctl("show", "-P", "MainPID", cfg.service); return s }
	prev := mainPID()

	load := StartLoad(p.load(addr, keepAlive))
	defer load.Stop()
	time.Sleep(time.Second)
	f.replaced = true
	var t0s []time.Time
	for i := 0; i < cycles; i++ {
		t0 := time.Now()
		if _, err := c.systemctl("restart", cfg.service); err != nil {
			return f, fmt.Errorf("restart %d: %v", i+1, err)
		}
		f.restart = append(f.restart, time.Since(t0))
		t0s = append(t0s, t0)
		cur := mainPID()
		if cur == prev || cur == "" || cur == "0" {
			f.replaced = false
		}
		prev = cur
		vlogf(p, "%s: restart %d took %v, MainPID %s", cfg.service, i+1, f.restart[i].Round(time.Millisecond), cur)
		time.Sleep(time.Second)
	}
	end := time.Now()
	samples := load.Stop()
	f.requests = len(samples)
	f.all = count(samples)
	f.baseGap = maxGap(samples, 200*time.Millisecond, load.Since(t0s[0]))
	for i, t0 := range t0s {
		from, to := load.Since(t0), load.Since(end)
		if i+1 < len(t0s) {
			to = load.Since(t0s[i+1])
		}
		var in []Sample
		for _, s := range samples {
			if s.End >= from && s.End < to {
				in = append(in, s)
			}
		}
		f.perCycle = append(f.perCycle, count(in))
		f.down = append(f.down, maxGap(samples, from, to))
	}
	return f, nil
}
