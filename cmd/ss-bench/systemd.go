package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/systemdtest"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
	"github.com/ss-bridge/ss-bridge/internal/text"
)

// ---------------------------------------------------------------------------
// Superdaemon restart under systemd
//
// One throwaway container booted by a real systemd (systemdtest.Start),
// sharing the host's network. ss-bridge and this program (the worker) are copied into
// its shared directory; each configuration is installed as units, loaded
// from the host, and restarted with `systemctl restart` a few times.

// systemdScenarioPrefix starts the names of the scenario's rows.
const systemdScenarioPrefix = "superdaemon restart under systemd"

// exec runs a command in the container, bounded by timeout.
func inContainer(c *systemdtest.Container, timeout time.Duration, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.ExecContext(ctx, stdin, args...)
}

// journal is the end of the units' journal, for an error message.
func journal(c *systemdtest.Container, units ...string) string {
	var b strings.Builder
	for _, u := range units {
		j, err := c.Journal(u)
		if err != nil {
			j = err.Error()
		}
		lines := strings.Split(strings.TrimSpace(j), "\n")
		b.WriteString(strings.Join(lines[max(0, len(lines)-30):], "\n") + "\n")
	}
	return b.String()
}

func writeUnits(c *systemdtest.Container, units map[string]string) error {
	for name, content := range units {
		if err := c.WriteUnit(name, content); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

// cell is s fit for a cell of the results table: one line, of at most 200
// bytes.
func cell(s string) string {
	s = strings.TrimSpace(text.OneLine(s))
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
	c, err := systemdtest.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ss-bench: systemd: %v\n", err)
		allNA(cell(err.Error()))
		return
	}
	defer func() {
		if err := c.Remove(); err != nil {
			fmt.Fprintf(os.Stderr, "ss-bench: systemd: %v\n", err)
		}
	}()
	vlogf(p, "container %s booted, init %d", c.Dir(), c.PID())

	share := c.HostDir()
	err = copyFile(subject.Path, filepath.Join(share, "ss-bridge"))
	if err == nil {
		err = copyFile(selfPath, filepath.Join(share, "ss-bench"))
	}
	if err != nil {
		allNA(cell(err.Error()))
		return
	}
	if _, err := inContainer(c, time.Minute, nil, guestDir+"/ss-bridge", "--version"); err != nil {
		allNA("ss-bridge does not run in the container: build it with CGO_ENABLED=0")
		fmt.Fprintf(os.Stderr, "ss-bench: systemd: %v\n", err)
		return
	}
	if _, err := inContainer(c, time.Minute, nil, guestDir+"/ss-bench", "worker", "-h"); err != nil && strings.Contains(err.Error(), "not found") {
		allNA("ss-bench does not run in the container: build it with CGO_ENABLED=0")
		return
	}

	// The anchor: start_server inside, if the container has it.
	anchorFigs := map[bool]sdFigures{}
	anchorWhy := ""
	startServer, err := inContainer(c, time.Minute, nil, "sh", "-c", "perl -MServer::Starter -e1 2>/dev/null && command -v start_server")
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
					why += "; standalone stop/start not run here (-scenarios restart); Perl 0.35 was measured losing about 70 per cycle"
				}
				res.NA(sc, "failed requests per cycle", Count, b.Name, why)
			}
		}
	}
}

// runSystemd installs and starts a configuration on a fresh port, loads it
// in one mode and restarts it cycles times, about a second apart.
func runSystemd(c *systemdtest.Container, cfg sdConfig, keepAlive bool, cycles int, p Params) (f sdFigures, err error) {
	ports, err := testkit.FreePorts(1)
	if err != nil {
		return f, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	if err := writeUnits(c, cfg.units(addr)); err != nil {
		return f, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%v; journal:\n%s", err, journal(c, cfg.stop...))
		}
		if _, serr := c.Systemctl(append([]string{"stop"}, cfg.stop...)...); serr != nil && err == nil {
			err = serr
		}
	}()
	if _, err := c.Systemctl("start", cfg.service); err != nil {
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
	mainPID := func() string { s, _ := c.Systemctl("show", "-P", "MainPID", cfg.service); return s }
	prev := mainPID()

	load := StartLoad(p.load(addr, keepAlive))
	defer load.Stop()
	time.Sleep(time.Second)
	f.replaced = true
	var t0s []time.Time
	for i := 0; i < cycles; i++ {
		t0 := time.Now()
		if _, err := c.Systemctl("restart", cfg.service); err != nil {
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
