package main

import (
	"fmt"
	"github.com/ss-bridge/ss-bridge/internal/proc"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
	"os"
	"strings"
	"syscall"
	"time"
)

// Params are the benchmark's parameters.
type Params struct {
	Runs     int           // repetitions (HUPs, cycles, starts) per measurement
	Rate     float64       // load, requests per second
	Conns    int           // load, concurrent connections
	Latency  time.Duration // the worker's per-request latency
	Window   time.Duration // how long idle and loaded usage is measured
	Restarts int           // consecutive restarts in the scale scenario
	Sockets  int           // listening sockets in the scale scenario
	Churn    int           // live generations in the status-file churn
	Upgrades int           // self-upgrades in a row in the upgrade scenario
	Modes    []bool        // keep-alive off, on
	Verbose  bool

	SystemdCycles int // systemctl restarts per configuration and mode

	PoolRolls   int           // reloads of a pool under load
	PoolKillFor time.Duration // how long a pool's workers are SIGKILLed, one a second
	// PoolParts: the parts of the pool scenario to run (roll, bad, kill,
	// scale, cost) and its workers (go, node); none of a kind runs them all.
	PoolParts map[string]bool
}

func (p Params) load(addr string, keepAlive bool) LoadConfig {
	return LoadConfig{Addr: addr, Conns: p.Conns, Rate: p.Rate, KeepAlive: keepAlive, Timeout: 5 * time.Second, Max: 5 * time.Minute}
}

func (p Params) worker(extra ...string) []string {
	return append([]string{"-latency=" + p.Latency.String()}, extra...)
}

func modeName(keepAlive bool) string {
	if keepAlive {
		return "keep-alive"
	}
	return "new conn"
}

func vlogf(p Params, format string, args ...any) {
	if p.Verbose {
		fmt.Fprintf(os.Stderr, "  "+format+"\n", args...)
	}
}

// failure records an error that stopped a measurement, in the table.
func failure(res *Results, scenario, metric, bin string, err error) {
	fmt.Fprintf(os.Stderr, "%s / %s / %s: %v\n", scenario, metric, bin, err)
	res.AddText(scenario, metric, bin, "ERROR (see stderr)")
}

// ---------------------------------------------------------------------------
// HUP under load

type hupConfig struct {
	name   string
	opts   []string
	worker []string
	notify bool // needs --ready=notify
}

func hupConfigs() []hupConfig {
	return []hupConfig{
		{"HUP, --interval=1", []string{"--interval=1"}, nil, false},
		{"HUP, --interval=0", []string{"--interval=0"}, nil, false},
		{"HUP, --ready=notify", []string{"--ready=notify"}, []string{"-ready"}, true},
		{"HUP, 200 ms start, --interval=0", []string{"--interval=0"}, []string{"-start-delay=200ms"}, false},
		{"HUP, 200 ms start, --ready=notify", []string{"--ready=notify"}, []string{"-start-delay=200ms", "-ready"}, true},
	}
}

type hupRound struct {
	t0                 time.Time
	oldGen, oldPID     int
	newGen, newPID     int
	statusAt, oldGone  time.Time
	first, signalled   time.Duration
	readyNew, gap      time.Duration
	hasFirst, hasSig   bool
	hasReady           bool
	signalledAfterRdy  time.Duration
	hasSignalledAfterR bool
}

type hupStats struct {
	counts   Counts
	requests int
	rounds   []hupRound
	p99      time.Duration // latency before the first HUP
	baseGap  time.Duration // longest gap in as long a window before the first HUP
}

func runHUP(b Binary, cfg hupConfig, keepAlive bool, p Params) (hupStats, error) {
	var st hupStats
	in, err := start(b, Spec{Opts: cfg.opts, WorkerArgs: p.worker(cfg.worker...), Tag: "hup"})
	if err != nil {
		return st, err
	}
	defer in.Kill()
	if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
		return st, err
	}
	if _, _, _, err := in.WaitOnly(0, 15*time.Second, time.Millisecond); err != nil {
		return st, err
	}
	load := StartLoad(p.load(in.Addr, keepAlive))
	defer load.Stop()
	time.Sleep(time.Second)
	for r := 0; r < p.Runs; r++ {
		gen, pid, ok := in.only()
		if !ok {
			return st, fmt.Errorf("status file does not show a single generation before HUP %d", r+1)
		}
		rd := hupRound{oldGen: gen, oldPID: pid, t0: time.Now()}
		syscall.Kill(in.PID, syscall.SIGHUP)
		deadline := rd.t0.Add(20 * time.Second)
		for rd.statusAt.IsZero() || rd.oldGone.IsZero() {
			now := time.Now()
			if rd.oldGone.IsZero() && !proc.Alive(pid) {
				rd.oldGone = now
			}
			if rd.statusAt.IsZero() {
				if g, np, ok := in.only(); ok && g > gen {
					rd.statusAt, rd.newGen, rd.newPID = now, g, np
				}
			}
			if now.After(deadline) || in.Exited() {
				return st, fmt.Errorf("HUP %d: no single new generation with the old worker gone within 20s; log:\n%s", r+1, tail(in.Log()))
			}
			time.Sleep(250 * time.Microsecond)
		}
		st.rounds = append(st.rounds, rd)
		// With --interval=0 the new worker counts as started the moment it
		// is spawned: the next HUP must find it past its start-up (its
		// signal handler in place, its events recorded), or it dies of a
		// TERM it has not yet caught, which a loaded machine makes likely.
		for {
			if _, ok := eventAt(in.ReadEvents(), rd.newPID, "ready"); ok {
				break
			}
			if time.Now().After(deadline) || in.Exited() {
				return st, fmt.Errorf("HUP %d: new worker %d not ready within 20s; log:\n%s", r+1, rd.newPID, tail(in.Log()))
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(400 * time.Millisecond)
	}
	samples := load.Stop()
	evs := in.ReadEvents()
	st.counts = count(samples)
	st.requests = len(samples)
	firstHUP := load.Since(st.rounds[0].t0)
	lat := latencies(samples, 200*time.Millisecond, firstHUP)
	st.p99 = percentile(lat, 0.99)
	for i := range st.rounds {
		rd := &st.rounds[i]
		t0 := load.Since(rd.t0)
		if f, ok := firstFrom(samples, rd.oldGen, t0); ok {
			rd.first, rd.hasFirst = f-t0, true
		}
		if at, ok := eventAt(evs, rd.oldPID, "term"); ok {
			rd.signalled, rd.hasSig = at.Sub(rd.t0), true
		}
		if at, ok := eventAt(evs, rd.newPID, "ready"); ok {
			rd.readyNew, rd.hasReady = at.Sub(rd.t0), true
			if rd.hasSig {
				rd.signalledAfterRdy, rd.hasSignalledAfterR = rd.signalled-rd.readyNew, true
			}
		}
		end := max(load.Since(rd.statusAt), load.Since(rd.oldGone), t0+rd.first) + 50*time.Millisecond
		rd.gap = maxGap(samples, t0, end)
		if i == 0 {
			// Normal: the longest stretch in the steady state, the
			// second before the first HUP (after a warm-up).
			st.baseGap = maxGap(samples, 200*time.Millisecond, firstHUP)
		}
	}
	if _, err := in.Stop(15 * time.Second); err != nil {
		return st, err
	}
	return st, nil
}

func scenarioHUP(bins []Binary, p Params, res *Results) {
	for _, cfg := range hupConfigs() {
		for _, ka := range p.Modes {
			sc := cfg.name + " (" + modeName(ka) + ")"
			fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
			for _, b := range bins {
				if cfg.notify && !b.Notify {
					for _, m := range []string{"failed requests", "HUP → first response of the new generation", "HUP → old worker signalled", "old worker signalled − new worker READY", "HUP → old worker exited", "HUP → status file shows only the new generation", "longest stretch without responses"} {
						res.NA(sc, m, Ms, b.Name, "no --ready=notify")
					}
					continue
				}
				st, err := runHUP(b, cfg, ka, p)
				if err != nil {
					failure(res, sc, "failed requests", b.Name, err)
					continue
				}
				var first, sig, sigRdy, gone, status, gap []time.Duration
				for _, rd := range st.rounds {
					if rd.hasFirst {
						first = append(first, rd.first)
					}
					if rd.hasSig {
						sig = append(sig, rd.signalled)
					}
					if rd.hasSignalledAfterR {
						sigRdy = append(sigRdy, rd.signalledAfterRdy)
					}
					gone = append(gone, rd.oldGone.Sub(rd.t0))
					status = append(status, rd.statusAt.Sub(rd.t0))
					gap = append(gap, rd.gap)
				}
				res.AddText(sc, "failed requests", b.Name, fmt.Sprintf("%s of %d", st.counts, st.requests))
				res.Add(sc, "HUP → first response of the new generation", Ms, b.Name, medianMs(first))
				res.Add(sc, "HUP → old worker signalled", Ms, b.Name, medianMs(sig))
				res.Add(sc, "old worker signalled − new worker READY", Ms, b.Name, medianMs(sigRdy))
				res.Add(sc, "HUP → old worker exited", Ms, b.Name, medianMs(gone))
				res.Add(sc, "HUP → status file shows only the new generation", Ms, b.Name, medianMs(status))
				res.Add(sc, "longest stretch without responses", Ms, b.Name, medianMs(gap))
				res.Add(sc, "(reference: longest stretch in the second before the HUPs)", Ms, b.Name, ms(st.baseGap))
				res.Add(sc, "(reference: p99 latency before the HUPs)", Ms, b.Name, ms(st.p99))
				vlogf(p, "%s: %d requests, %s failed, gaps %v", b.Name, st.requests, st.counts, gap)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// HUP burst

func scenarioBurst(bins []Binary, p Params, res *Results) {
	const hups, spacing = 13, 250 * time.Millisecond
	for _, ka := range p.Modes {
		sc := fmt.Sprintf("HUP burst: %d HUPs %v apart, --interval=1 (%s)", hups, spacing, modeName(ka))
		fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
		for _, b := range bins {
			if err := runBurst(b, ka, hups, spacing, p, res, sc); err != nil {
				failure(res, sc, "failed requests", b.Name, err)
			}
		}
	}
}

func runBurst(b Binary, keepAlive bool, hups int, spacing time.Duration, p Params, res *Results, sc string) error {
	in, err := start(b, Spec{Opts: []string{"--interval=1"}, WorkerArgs: p.worker(), Tag: "burst"})
	if err != nil {
		return err
	}
	defer in.Kill()
	if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
		return err
	}
	load := StartLoad(p.load(in.Addr, keepAlive))
	defer load.Stop()
	time.Sleep(300 * time.Millisecond)
	firstHUP := time.Now()
	var last time.Time
	for i := 0; i < hups; i++ {
		last = time.Now()
		syscall.Kill(in.PID, syscall.SIGHUP)
		if i < hups-1 {
			time.Sleep(spacing)
		}
	}
	// Wait until the status file shows a single generation whose worker
	// started after the last HUP.
	actedOn := false
	var settled time.Duration
	var finalGen int
	for deadline := last.Add(15 * time.Second); time.Now().Before(deadline) && !in.Exited(); time.Sleep(2 * time.Millisecond) {
		g, pid, ok := in.only()
		if !ok {
			continue
		}
		if at, ok := eventAt(in.ReadEvents(), pid, "start"); ok && at.After(last) {
			actedOn, settled, finalGen = true, time.Since(last), g
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	samples := load.Stop()
	evs := in.ReadEvents()
	started := 0
	for _, e := range evs {
		if e.Name == "start" && e.At.After(firstHUP) {
			started++
		}
	}
	serves := false
	if actedOn {
		for i := len(samples) - 1; i >= 0; i-- {
			if samples[i].Kind == OK {
				serves = int(samples[i].Gen) == finalGen
				break
			}
		}
	}
	c := count(samples)
	res.AddText(sc, "failed requests", b.Name, fmt.Sprintf("%s of %d", c, len(samples)))
	res.Add(sc, "workers started after the first HUP", Count, b.Name, float64(started))
	res.AddText(sc, "last HUP acted on, and its generation serves", b.Name, yesNo(actedOn && serves))
	if actedOn {
		res.Add(sc, "last HUP → status file shows only its generation", Ms, b.Name, ms(settled))
	} else {
		res.NA(sc, "last HUP → status file shows only its generation", Ms, b.Name, "never")
	}
	_, err = in.Stop(15 * time.Second)
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

// ---------------------------------------------------------------------------
// Superdaemon stop and start

func scenarioRestart(bins []Binary, p Params, res *Results) {
	for _, ka := range p.Modes {
		sc := "superdaemon TERM, then started again (" + modeName(ka) + ")"
		fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
		for _, b := range bins {
			if err := runRestart(b, ka, p, res, sc); err != nil {
				failure(res, sc, "failed requests per cycle", b.Name, err)
			}
		}
	}
}

func runRestart(b Binary, keepAlive bool, p Params, res *Results, sc string) error {
	ports, err := testkit.FreePorts(1)
	if err != nil {
		return err
	}
	spec := Spec{Ports: ports, Opts: []string{"--interval=1"}, WorkerArgs: p.worker(), Tag: "restart"}
	in, err := start(b, spec)
	if err != nil {
		return err
	}
	defer func() { in.Kill() }()
	if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
		return err
	}
	load := StartLoad(p.load(in.Addr, keepAlive))
	defer load.Stop()
	time.Sleep(300 * time.Millisecond)
	type cycle struct{ t0, up time.Time }
	var cycles []cycle
	for r := 0; r < p.Runs; r++ {
		t0 := time.Now()
		if _, err := in.Stop(15 * time.Second); err != nil {
			return err
		}
		if in, err = start(b, spec); err != nil {
			return err
		}
		up, err := in.WaitServing(in.Addr, 1, 15*time.Second)
		if err != nil {
			return err
		}
		cycles = append(cycles, cycle{t0, up})
		time.Sleep(300 * time.Millisecond)
	}
	samples := load.Stop()
	c := count(samples)
	var down []time.Duration
	for _, cy := range cycles {
		down = append(down, maxGap(samples, load.Since(cy.t0), load.Since(cy.up)+50*time.Millisecond))
	}
	res.Add(sc, "failed requests per cycle", Count, b.Name, float64(c.Failed())/float64(len(cycles)))
	res.AddText(sc, "failed requests, all cycles", b.Name, fmt.Sprintf("%s of %d", c, len(samples)))
	res.Add(sc, "downtime (longest stretch without responses)", Ms, b.Name, medianMs(down))
	_, err = in.Stop(15 * time.Second)
	return err
}

// ---------------------------------------------------------------------------
// Cost

func scenarioCost(bins []Binary, p Params, res *Results) {
	sc := "cost"
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	for _, b := range bins {
		if err := runCost(b, p, res, sc); err != nil {
			failure(res, sc, "startup: exec → first response", b.Name, err)
		}
	}
}

func runCost(b Binary, p Params, res *Results, sc string) error {
	var startup, termExit, drain, beyond []time.Duration
	for r := 0; r < p.Runs; r++ {
		in, err := start(b, Spec{Opts: []string{"--interval=1"}, WorkerArgs: p.worker(), Tag: "cost"})
		if err != nil {
			return err
		}
		up, err := in.WaitServing(in.Addr, 1, 15*time.Second)
		if err != nil {
			in.Kill()
			return err
		}
		startup = append(startup, up.Sub(in.Started))
		if r == 0 {
			if err := measureUsage(in, p, res, sc); err != nil {
				in.Kill()
				return err
			}
		}
		_, pid, _ := in.only()
		time.Sleep(100 * time.Millisecond)
		d, err := in.Stop(15 * time.Second)
		if err != nil {
			return err
		}
		termExit = append(termExit, d)
		evs := in.ReadEvents()
		t, ok1 := eventAt(evs, pid, "term")
		e, ok2 := eventAt(evs, pid, "exit")
		if ok1 && ok2 {
			drain = append(drain, e.Sub(t))
			beyond = append(beyond, d-e.Sub(t))
		}
	}
	res.Add(sc, "startup: exec → first response", Ms, b.Name, medianMs(startup))
	res.Add(sc, "TERM → exit, idle", Ms, b.Name, medianMs(termExit))
	res.Add(sc, "(reference: the worker's own drain, TERM → exit)", Ms, b.Name, medianMs(drain))
	res.Add(sc, "TERM → exit beyond the worker's drain, idle", Ms, b.Name, medianMs(beyond))

	// TERM while a new worker is in its --interval.
	var during []time.Duration
	for r := 0; r < p.Runs; r++ {
		in, err := start(b, Spec{Opts: []string{"--interval=1"}, WorkerArgs: p.worker(), Tag: "term-interval"})
		if err != nil {
			return err
		}
		if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
			in.Kill()
			return err
		}
		syscall.Kill(in.PID, syscall.SIGHUP)
		time.Sleep(150 * time.Millisecond) // the new worker is up, in its interval
		d, err := in.Stop(15 * time.Second)
		if err != nil {
			return err
		}
		during = append(during, d)
	}
	res.Add(sc, "TERM → exit, TERM 150 ms into --interval=1", Ms, b.Name, medianMs(during))
	return nil
}

func measureUsage(in *Instance, p Params, res *Results, sc string) error {
	name := in.bin.Name
	time.Sleep(time.Second)
	u0 := readUsage(in.PID)
	time.Sleep(p.Window)
	u1 := readUsage(in.PID)
	cpu, cs := rates(u0, u1)
	res.Add(sc, "RSS idle", MB, name, float64(rssKB(in.PID))/1024)
	res.Add(sc, "threads idle", Count, name, float64(threads(in.PID)))
	res.Add(sc, "CPU time idle (ms per s)", Ms, name, ms(cpu))
	res.Add(sc, "context switches idle", PerSec, name, cs)

	load := StartLoad(p.load(in.Addr, false))
	time.Sleep(time.Second)
	u0 = readUsage(in.PID)
	var rss int64
	for end := time.Now().Add(p.Window); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		rss = max(rss, rssKB(in.PID))
	}
	u1 = readUsage(in.PID)
	thr := threads(in.PID)
	samples := load.Stop()
	cpu, cs = rates(u0, u1)
	lsc := fmt.Sprintf("%s under load (new conn, %.0f req/s offered)", sc, p.Rate)
	c := count(samples)
	var span time.Duration
	if len(samples) > 0 {
		span = samples[len(samples)-1].End - samples[0].Start
	}
	res.Add(lsc, "requests per second achieved", PerSec, name, float64(c.N[OK])/span.Seconds())
	res.AddText(lsc, "failed requests", name, fmt.Sprintf("%s of %d", c, len(samples)))
	res.Add(lsc, "RSS under load (max)", MB, name, float64(rss)/1024)
	res.Add(lsc, "threads under load", Count, name, float64(thr))
	res.Add(lsc, "CPU time under load (ms per s)", Ms, name, ms(cpu))
	res.Add(lsc, "context switches under load", PerSec, name, cs)
	return nil
}

// ---------------------------------------------------------------------------
// Scale

func scenarioScale(bins []Binary, p Params, res *Results) {
	sc := fmt.Sprintf("scale: %d listening sockets, --interval=0", p.Sockets)
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	for _, b := range bins {
		if err := runSockets(b, p, res, sc); err != nil {
			failure(res, sc, "startup: exec → first response on the last socket", b.Name, err)
		}
	}
	sc = fmt.Sprintf("scale: %d consecutive restarts, --interval=0", p.Restarts)
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	for _, b := range bins {
		if err := runRestarts(b, p, res, sc); err != nil {
			failure(res, sc, "restart (HUP → status file shows only the new generation)", b.Name, err)
		}
	}
	sc = fmt.Sprintf("scale: status-file churn, %d live generations (--signal-on-hup=USR2, ignored), --interval=0", p.Churn)
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	for _, b := range bins {
		if err := runChurn(b, p, res, sc); err != nil {
			failure(res, sc, "HUP → status file lists the new generation", b.Name, err)
		}
	}
}

func runSockets(b Binary, p Params, res *Results, sc string) error {
	ports, err := testkit.FreePorts(p.Sockets)
	if err != nil {
		return err
	}
	in, err := start(b, Spec{Ports: ports, Opts: []string{"--interval=0"}, WorkerArgs: p.worker(), Tag: "sockets"})
	if err != nil {
		return err
	}
	defer in.Kill()
	lastAddr := fmt.Sprintf("127.0.0.1:%d", ports[len(ports)-1])
	up, err := in.WaitServing(lastAddr, 1, 30*time.Second)
	if err != nil {
		return err
	}
	res.Add(sc, "startup: exec → first response on the last socket", Ms, b.Name, ms(up.Sub(in.Started)))
	if _, _, _, err := in.WaitOnly(0, 15*time.Second, time.Millisecond); err != nil {
		return err
	}
	var restart, serve []time.Duration
	for r := 0; r < p.Runs; r++ {
		g, _, _ := in.only()
		t0 := time.Now()
		syscall.Kill(in.PID, syscall.SIGHUP)
		_, _, at, err := in.WaitOnly(g, 30*time.Second, 500*time.Microsecond)
		if err != nil {
			return err
		}
		restart = append(restart, at.Sub(t0))
		if up, err := in.WaitServing(lastAddr, g+1, 30*time.Second); err == nil {
			serve = append(serve, up.Sub(t0))
		}
	}
	res.Add(sc, "restart: HUP → status file shows only the new generation", Ms, b.Name, medianMs(restart))
	res.Add(sc, "restart: HUP → new generation answers on the last socket", Ms, b.Name, medianMs(serve))
	res.Add(sc, "descriptors open in the superdaemon", Count, b.Name, float64(proc.FDCount(in.PID)))
	res.Add(sc, "RSS", MB, b.Name, float64(rssKB(in.PID))/1024)
	d, err := in.Stop(30 * time.Second)
	if err != nil {
		return err
	}
	res.Add(sc, "TERM → exit", Ms, b.Name, ms(d))
	return nil
}

func runRestarts(b Binary, p Params, res *Results, sc string) error {
	in, err := start(b, Spec{Opts: []string{"--interval=0"}, WorkerArgs: p.worker(), Tag: "restarts"})
	if err != nil {
		return err
	}
	defer in.Kill()
	if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
		return err
	}
	g, _, _, err := in.WaitOnly(0, 15*time.Second, time.Millisecond)
	if err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	fd0, rss0 := proc.FDCount(in.PID), rssKB(in.PID)
	maxZ, maxFD, maxRSS := 0, fd0, rss0
	var rss10 int64 // after a tenth of the restarts
	var each []time.Duration
	t := time.Now()
	every := max(1, p.Restarts/20)
	lost := 0
	for i := 1; i <= p.Restarts; i++ {
		t0 := time.Now()
		syscall.Kill(in.PID, syscall.SIGHUP)
		ng, _, at, err := in.WaitOnly(g, 3*time.Second, 200*time.Microsecond)
		if err != nil && !in.Exited() {
			// The HUP was lost (0.35 can miss one that comes while it
			// handles a child's exit): count it and send another.
			lost++
			syscall.Kill(in.PID, syscall.SIGHUP)
			ng, _, at, err = in.WaitOnly(g, 30*time.Second, 200*time.Microsecond)
		}
		if err != nil {
			return fmt.Errorf("restart %d: %w", i, err)
		}
		each = append(each, at.Sub(t0))
		g = ng
		if i == max(1, p.Restarts/10) {
			rss10 = rssKB(in.PID)
		}
		if i%every == 0 {
			maxZ = max(maxZ, zombies(in.PID))
			maxFD = max(maxFD, proc.FDCount(in.PID))
			maxRSS = max(maxRSS, rssKB(in.PID))
			vlogf(p, "%s: %d restarts, fds %d, RSS %d kB", b.Name, i, proc.FDCount(in.PID), rssKB(in.PID))
		}
	}
	total := time.Since(t)
	time.Sleep(500 * time.Millisecond)
	fd1, rss1, z1 := proc.FDCount(in.PID), rssKB(in.PID), zombies(in.PID)
	if _, err := in.WaitServing(in.Addr, g, 5*time.Second); err != nil {
		return err
	}
	res.Add(sc, "restart (HUP → status file shows only the new generation), median", Ms, b.Name, medianMs(each))
	res.Add(sc, "total time", Ms, b.Name, ms(total))
	res.Add(sc, "HUPs lost (no restart within 3 s; sent again)", Count, b.Name, float64(lost))
	res.AddText(sc, "descriptors: before → after (max)", b.Name, fmt.Sprintf("%d → %d (%d)", fd0, fd1, maxFD))
	res.AddText(sc, fmt.Sprintf("RSS: before → after %d → after %d (max)", max(1, p.Restarts/10), p.Restarts), b.Name,
		fmt.Sprintf("%.1f → %.1f → %.1f (%.1f) MB", float64(rss0)/1024, float64(rss10)/1024, float64(rss1)/1024, float64(maxRSS)/1024))
	res.AddText(sc, "zombies: after (max seen)", b.Name, fmt.Sprintf("%d (%d)", z1, maxZ))
	res.AddText(sc, "last generation serves", b.Name, "yes")
	_, err = in.Stop(15 * time.Second)
	return err
}

func runChurn(b Binary, p Params, res *Results, sc string) error {
	in, err := start(b, Spec{Opts: []string{"--interval=0", "--signal-on-hup=USR2"}, WorkerArgs: p.worker(), Tag: "churn"})
	if err != nil {
		return err
	}
	defer in.Kill()
	if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
		return err
	}
	if _, _, _, err := in.WaitOnly(0, 15*time.Second, time.Millisecond); err != nil {
		return err
	}
	u0 := readUsage(in.PID)
	var each []time.Duration
	t := time.Now()
	for n := 2; n <= p.Churn; n++ {
		t0 := time.Now()
		syscall.Kill(in.PID, syscall.SIGHUP)
		for {
			gens, err := in.StatusGens()
			if err == nil && len(gens) >= n {
				break
			}
			if time.Since(t0) > 30*time.Second || in.Exited() {
				return fmt.Errorf("status file does not list %d generations within 30s; log:\n%s", n, tail(in.Log()))
			}
			time.Sleep(200 * time.Microsecond)
		}
		each = append(each, time.Since(t0))
		// The next HUP makes this worker old: it must have set up its
		// signal handling (it is ready) before it gets USR2.
		for {
			gens, _ := in.StatusGens()
			newest := 0
			for g := range gens {
				newest = max(newest, g)
			}
			if _, ok := eventAt(in.ReadEvents(), gens[newest], "ready"); ok {
				break
			}
			if time.Since(t0) > 30*time.Second || in.Exited() {
				return fmt.Errorf("the worker of generation %d is not ready within 30s; log:\n%s", n, tail(in.Log()))
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	total := time.Since(t)
	u1 := readUsage(in.PID)
	gens, err := in.StatusGens()
	if err != nil {
		return err
	}
	live := 0
	for _, pid := range gens {
		if proc.Alive(pid) {
			live++
		}
	}
	res.Add(sc, "HUP → status file lists the new generation, median", Ms, b.Name, medianMs(each))
	res.Add(sc, "total time (each HUP after the last worker is ready)", Ms, b.Name, ms(total))
	res.Add(sc, "superdaemon CPU time for the churn", Ms, b.Name, ms(u1.cpu-u0.cpu))
	res.AddText(sc, "status file: generations listed / alive", b.Name, fmt.Sprintf("%d / %d", len(gens), live))
	d, err := in.Stop(30 * time.Second)
	if err != nil {
		return err
	}
	res.Add(sc, "TERM → exit", Ms, b.Name, ms(d))
	return nil
}

// describeBins is the list of binaries, for the conditions.
func describeBins(bins []Binary) string {
	var parts []string
	for _, b := range bins {
		parts = append(parts, b.Name+" = "+b.Path)
	}
	return strings.Join(parts, "; ")
}
