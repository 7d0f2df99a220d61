package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
)

// Worker pools (issue 11): ss-bridge's --workers, --rolling, --max-surge and
// TTIN/TTOU, with the benchmark's own Go worker (one core: GOMAXPROCS=1) and
// with a Node.js http server, which nobody here wrote, on the inherited
// descriptor. The anchors have no pools; their columns say n/a, except for
// the superdaemon's own cost under HUPs, where Perl's one worker is the
// reference.

var (
	nodePath   string // node, when found
	nodeScript string // the Node.js worker, written into workDir
)

// nodeServer is a plain Node.js http server as an operator would write it for
// Server::Starter: it listens on the first descriptor of SERVER_STARTER_PORT
// and drains on SIGTERM with server.close(). Node 19+'s close() also closes
// idle keep-alive connections, which races with a client sending its next
// request on one (a request lost that the superdaemon cannot help); like
// listener.ServeHTTP for the Go worker, it instead answers that request with
// "Connection: close".
const nodeServer = `'use strict';
const http = require('http');
const fs = require('fs');
const args = {};
for (const a of process.argv.slice(2)) {
  const m = /^-+([^=]+)=(.*)$/.exec(a);
  if (m) args[m[1]] = m[2];
}
const ev = (name) => {
  if (args.events) fs.appendFileSync(args.events, process.pid + ' ' + name + ' ' + (BigInt(Date.now()) * 1000000n) + '\n');
};
ev('start');
if (args['exit-if'] && fs.existsSync(args['exit-if'])) { ev('exit'); process.exit(1); }
const first = (process.env.SERVER_STARTER_PORT || '').split(';')[0];
const fd = parseInt(first.slice(first.lastIndexOf('=') + 1), 10);
const body = 'pid=' + process.pid + ' gen=' + process.env.SERVER_STARTER_GENERATION + '\n';
const latency = parseFloat(args['latency-ms'] || '0');
let draining = false;
const server = http.createServer((req, res) => {
  const send = () => {
    const h = {'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body)};
    if (draining) h['Connection'] = 'close';
    res.writeHead(200, h);
    res.end(body);
  };
  if (latency > 0) setTimeout(send, latency); else send();
});
server.keepAliveTimeout = 30000;
server.listen({fd: fd});
process.on('SIGHUP', () => {});
process.on('SIGUSR2', () => {});
process.on('SIGTERM', () => {
  ev('term');
  draining = true;
  server.closeIdleConnections = () => {};
  server.close(() => { ev('exit'); process.exit(0); });
  setTimeout(() => { ev('exit'); process.exit(0); }, 10000).unref();
});
`

func setupNode() error {
	path, err := exec.LookPath("node")
	if err != nil {
		return err
	}
	nodePath = path
	nodeScript = filepath.Join(workDir, "worker.js")
	return os.WriteFile(nodeScript, []byte(nodeServer), 0o644)
}

// poolKind is a kind of worker and how it counts as started.
type poolKind struct {
	name  string
	node  bool
	opts  []string // readiness options
	wargs []string
	// startBound: how long a bad build may take to be noticed: its
	// --ready-timeout (or --interval) and the 1 s margin of the target.
	startBound time.Duration
}

func poolKinds(p Params) []poolKind {
	return []poolKind{
		{name: "Go worker (GOMAXPROCS=1, --ready=notify)", opts: []string{"--ready=notify", "--ready-timeout=2"},
			wargs: p.worker("-ready", "-procs=1"), startBound: 3 * time.Second},
		{name: "Node.js http (--interval=1)", node: true, opts: []string{"--interval=1"},
			wargs: []string{fmt.Sprintf("-latency-ms=%g", ms(p.Latency))}, startBound: 2 * time.Second},
	}
}

// poolTarget is one of issue 11's targets, met or not, for the table of
// targets.
type poolTarget struct {
	target, worker, figure string
	met                    bool
}

var poolTargets []poolTarget

func addPoolTarget(target, worker, figure string, met bool) {
	poolTargets = append(poolTargets, poolTarget{target, worker, figure, met})
}

func scenarioPool(bins []Binary, p Params, res *Results) {
	b := bins[0]
	defer func() {
		// The anchors run one worker per generation.
		for _, row := range res.rows {
			if !strings.HasPrefix(row.Scenario, "pool") {
				continue
			}
			for _, a := range bins[1:] {
				if !row.Vals[a.Name].Set {
					row.Vals[a.Name] = Val{NA: true, Text: "no --workers", Set: true}
				}
			}
		}
	}()
	some := func(names ...string) bool {
		for _, n := range names {
			if p.PoolParts[n] {
				return true
			}
		}
		return false
	}
	part := func(name string) bool {
		if name == "go" || name == "node" {
			return !some("go", "node") || p.PoolParts[name]
		}
		return !some("roll", "bad", "kill", "scale", "cost") || p.PoolParts[name]
	}
	nodeErr := setupNode()
	for _, k := range poolKinds(p) {
		if !part(map[bool]string{false: "go", true: "node"}[k.node]) {
			continue
		}
		if k.node && nodeErr != nil {
			res.AddText("pool, "+k.name, "skipped", b.Name, "skipped: no node ("+nodeErr.Error()+")")
			continue
		}
		if part("roll") {
			for _, rolling := range []bool{true, false} {
				for _, ka := range p.Modes {
					runPoolRoll(b, k, rolling, ka, p, res)
				}
			}
		}
		if part("bad") {
			runPoolBadBuild(b, k, false, p, res)
			if !k.node {
				runPoolBadBuild(b, k, true, p, res)
			}
		}
		if part("kill") {
			for _, ka := range p.Modes {
				runPoolKill(b, k, ka, p, res)
			}
		}
		if part("scale") {
			runPoolScale(b, k, p, res)
		}
	}
	if part("cost") {
		runPoolCost(bins, p, res)
	}
}

// poolWait waits until the status file lists exactly n workers, all of one
// generation of at least minGen, all alive: a pool settled on a generation.
func poolWait(in *Instance, minGen, n int, timeout time.Duration) (gen int, pids []int, err error) {
	return poolWaitEvery(in, minGen, n, timeout, 2*time.Millisecond)
}

func poolWaitEvery(in *Instance, minGen, n int, timeout, poll time.Duration) (gen int, pids []int, err error) {
	deadline := time.Now().Add(timeout)
	for {
		es, _ := in.Entries()
		if len(es) == n && es[0].Generation >= minGen && es[0].Generation == es[n-1].Generation {
			ok := true
			pids = pids[:0]
			for _, e := range es {
				ok = ok && proc.Alive(e.PID)
				pids = append(pids, e.PID)
			}
			if ok {
				return es[0].Generation, pids, nil
			}
		}
		if in.Exited() {
			return 0, nil, fmt.Errorf("%s exited (%v); log:\n%s", in.bin.Name, in.werr, tail(in.Log()))
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(in.Status)
			return 0, nil, fmt.Errorf("status file does not show %d workers of one generation ≥ %d within %v (it shows %q); log:\n%s", n, minGen, timeout, data, tail(in.Log()))
		}
		time.Sleep(poll)
	}
}

// peakWatch polls the superdaemon's live (not zombie) children. Polling can
// miss a peak shorter than its period: the figure is a lower bound, checked
// against the one from the workers' events.
type peakWatch struct {
	stop chan struct{}
	wg   sync.WaitGroup
	peak int
}

func watchPeak(pid int) *peakWatch {
	w := &peakWatch{stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for {
			n := 0
			for _, c := range children(pid) {
				if proc.Alive(c) {
					n++
				}
			}
			w.peak = max(w.peak, n)
			select {
			case <-w.stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *peakWatch) Stop() int {
	close(w.stop)
	w.wg.Wait()
	return w.peak
}

// eventPeaks sweeps the workers' start, term and exit events: the most
// workers alive at once, and the most alive and not yet told to go (serving
// or starting).
func eventPeaks(evs []Event) (alive, undrained int) {
	type step struct {
		at    time.Time
		alive int
		undr  int
	}
	var steps []step
	termed := map[int]bool{}
	for _, e := range evs {
		switch e.Name {
		case "start":
			steps = append(steps, step{e.At, 1, 1})
		case "term":
			termed[e.PID] = true
			steps = append(steps, step{e.At, 0, -1})
		}
	}
	for _, e := range evs {
		if e.Name == "exit" {
			d := -1
			if termed[e.PID] {
				d = 0
			}
			steps = append(steps, step{e.At, -1, d})
		}
	}
	// Ends before starts at the same instant (Node.js's clock is in ms).
	sort.SliceStable(steps, func(i, j int) bool {
		if steps[i].at.Equal(steps[j].at) {
			return steps[i].alive < steps[j].alive
		}
		return steps[i].at.Before(steps[j].at)
	})
	a, u := 0, 0
	for _, s := range steps {
		a += s.alive
		u += s.undr
		alive, undrained = max(alive, a), max(undrained, u)
	}
	return alive, undrained
}

func okRate(samples []Sample, from, to time.Duration) (n int) {
	for _, s := range samples {
		if s.Kind == OK && s.End >= from && s.End < to {
			n++
		}
	}
	return n
}

func runPoolRoll(b Binary, k poolKind, rolling, keepAlive bool, p Params, res *Results) {
	const n, surge = 4, 1
	opts := append([]string{"--workers=4"}, k.opts...)
	how := "whole-generation restarts"
	if rolling {
		opts = append(opts, "--rolling", fmt.Sprintf("--max-surge=%d", surge))
		how = fmt.Sprintf("rolling reloads (--max-surge=%d)", surge)
	}
	sc := fmt.Sprintf("pool, %s: %d workers, %d %s, closed-loop load (%s)", k.name, n, p.PoolRolls, how, modeName(keepAlive))
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	err := func() error {
		in, err := start(b, Spec{Opts: opts, WorkerArgs: k.wargs, Tag: "pool-roll", Node: k.node})
		if err != nil {
			return err
		}
		defer in.Kill()
		if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
			return err
		}
		gen, _, err := poolWait(in, 1, n, 15*time.Second)
		if err != nil {
			return err
		}
		watch := watchPeak(in.PID)
		// Closed loop: as fast as answered, so that a loss of capacity
		// during a roll shows as lower throughput.
		cfg := p.load(in.Addr, keepAlive)
		cfg.Rate = 0
		load := StartLoad(cfg)
		defer load.Stop()
		time.Sleep(time.Second)
		// Steady throughput is measured in the 500 ms before each HUP, so
		// that it and the reload's see the same load of the machine.
		type window struct{ from, to time.Duration }
		var rolls, steadies []window
		var took []time.Duration
		// Where the CPU goes: the superdaemon, its workers (those reaped
		// too) and the whole machine, in the steady windows and the rolls.
		var steadyCPU, rollCPU cpuUse
		for r := 0; r < p.PoolRolls; r++ {
			beforeSteady := takeCPU(in.PID)
			time.Sleep(500 * time.Millisecond)
			atHUP := takeCPU(in.PID)
			steadyCPU.add(beforeSteady, atHUP)
			t0 := time.Now()
			steadies = append(steadies, window{load.Since(t0.Add(-500 * time.Millisecond)), load.Since(t0)})
			syscall.Kill(in.PID, syscall.SIGHUP)
			// Polled gently: the benchmark shares the CPUs it measures.
			g, _, err := poolWaitEvery(in, gen+1, n, 30*time.Second, 10*time.Millisecond)
			if err != nil {
				return fmt.Errorf("reload %d: %w", r+1, err)
			}
			gen = g
			rollCPU.add(atHUP, takeCPU(in.PID))
			rolls = append(rolls, window{load.Since(t0), load.Since(time.Now())})
			took = append(took, time.Since(t0))
		}
		// The control: the same workers started and stopped as a roll
		// does, one at a time, but by this program on a socket of their own
		// that gets no request, with the pool serving and the superdaemon
		// idle. What the load loses then is the price of the workers'
		// starts and exits on these cores, which no superdaemon can avoid.
		// Compared with the 500 ms before each, as the rolls are: the
		// machine's other load varies.
		var controls, controlSteadies []window
		var controlErr error
		if rolling {
			for r := 0; r < p.PoolRolls && controlErr == nil; r++ {
				time.Sleep(500 * time.Millisecond)
				t0 := time.Now()
				controlSteadies = append(controlSteadies, window{load.Since(t0.Add(-500 * time.Millisecond)), load.Since(t0)})
				controlErr = controlRoll(k, n)
				controls = append(controls, window{load.Since(t0), load.Since(time.Now())})
			}
		}
		samples := load.Stop()
		peak := watch.Stop()
		alive, undrained := eventPeaks(in.ReadEvents())
		c := count(samples)
		rate := func(ws []window) float64 {
			var n float64
			var span time.Duration
			for _, w := range ws {
				n += float64(okRate(samples, w.from, w.to))
				span += w.to - w.from
			}
			return n / span.Seconds()
		}
		steady, during := rate(steadies), rate(rolls)
		bound, boundAll := n+surge, n+2*surge
		if !rolling {
			bound, boundAll = 2*n, 2*n
		}
		res.AddText(sc, "failed requests", b.Name, fmt.Sprintf("%s of %d", c, len(samples)))
		res.Add(sc, "HUP → every slot on the new generation, the old workers gone (median)", Ms, b.Name, medianMs(took))
		res.Add(sc, "peak worker processes (polled every 3 ms: a lower bound)", Count, b.Name, float64(peak))
		res.AddText(sc, "peak workers from their events: serving or starting / with those draining", b.Name, fmt.Sprintf("%d / %d", undrained, alive))
		if rolling {
			res.AddText(sc, "bound: N+K serving or starting / N+2K with those draining", b.Name, fmt.Sprintf("%d / %d", bound, boundAll))
		} else {
			res.AddText(sc, "bound: 2N (each HUP waits for the last one's old workers to exit)", b.Name, fmt.Sprintf("%d / %d", bound, boundAll))
		}
		res.Add(sc, "throughput, steady (the 500 ms before each HUP)", PerSec, b.Name, steady)
		res.Add(sc, "throughput during the reloads", PerSec, b.Name, during)
		res.AddText(sc, "throughput during the reloads / steady", b.Name, fmt.Sprintf("%.0f %%", 100*during/steady))
		var rollSpan time.Duration
		var served int
		for _, w := range rolls {
			rollSpan += w.to - w.from
			served += okRate(samples, w.from, w.to)
		}
		perRoll := func(v float64) float64 { return v / float64(len(rolls)) }
		// Capacity lost: the requests the steady rate would have served in
		// the reloads' time, less those served, as time at the steady rate.
		lost := perRoll(steady*rollSpan.Seconds() - float64(served))
		res.AddText(sc, "capacity lost per reload: requests short of the steady rate (as time at that rate)", b.Name,
			fmt.Sprintf("%.0f (%.0f ms)", lost, 1000*lost/steady))
		// CPU in ms from clock ticks (10 ms each; summed over every reload).
		res.AddText(sc, "CPU per reload: superdaemon / workers (steady: per second) / whole machine busy of available", b.Name,
			fmt.Sprintf("%.0f ms / %.0f ms (%.0f ms/s) / %.0f %% (steady %.0f %%)", perRoll(rollCPU.bridge), perRoll(rollCPU.workers),
				steadyCPU.workers/steadyCPU.seconds, 100*rollCPU.busy/rollCPU.total, 100*steadyCPU.busy/steadyCPU.total))
		// The workers' CPU beyond what the requests served cost at the
		// steady rate: starting the new ones, their cold first requests,
		// the old ones' exit.
		extra := perRoll(rollCPU.workers - float64(served)*steadyCPU.workers/steady/steadyCPU.seconds)
		res.AddText(sc, "workers' CPU per reload beyond the requests' steady cost (new workers' start, cold requests, old ones' exit)", b.Name,
			fmt.Sprintf("%.0f ms (%.0f ms per worker replaced)", extra, extra/n))
		if rolling {
			if controlErr != nil {
				res.AddText(sc, "control: the same worker starts and exits without a superdaemon, throughput / steady (the 500 ms before each)", b.Name, "ERROR: "+controlErr.Error())
			} else {
				ctl, ctlSteady := rate(controls), rate(controlSteadies)
				var span time.Duration
				for _, w := range controls {
					span += w.to - w.from
				}
				res.AddText(sc, "control: the same worker starts and exits without a superdaemon, throughput / steady (the 500 ms before each)", b.Name,
					fmt.Sprintf("%.0f %% (%.0f of %.0f req/s, over %.0f ms each; capacity lost %.0f ms each)", 100*ctl/ctlSteady, ctl, ctlSteady,
						ms(span)/float64(len(controls)), 1000*(ctlSteady-ctl)*span.Seconds()/float64(len(controls))/ctlSteady))
			}
		}
		mode := fmt.Sprintf("%s, %s", how, modeName(keepAlive))
		addPoolTarget(fmt.Sprintf("%d workers, %s: 0 failed requests", n, mode), k.name, c.String(), c.Failed() == 0)
		addPoolTarget(fmt.Sprintf("%s: peak workers ≤ %d serving or starting, ≤ %d in all", mode, bound, boundAll), k.name,
			fmt.Sprintf("%d / %d (polled: %d)", undrained, alive, peak), undrained <= bound && alive <= boundAll && peak <= boundAll)
		if rolling {
			addPoolTarget(mode+": throughput during a roll ≥ 90 % of steady", k.name, fmt.Sprintf("%.0f %% (%.0f of %.0f req/s)", 100*during/steady, during, steady), during >= 0.9*steady)
		}
		_, err = in.Stop(15 * time.Second)
		return err
	}()
	if err != nil {
		failure(res, sc, "failed requests", b.Name, err)
		addPoolTarget(sc, k.name, "ERROR", false)
	}
}

var startLine = regexp.MustCompile(`starting new worker \d+ \(generation (\d+), slot \d+\)`)

// runPoolBadBuild reloads a rolling pool of 4 into a build whose workers
// exit at once (or never send READY=1): the roll must stop after K, the old
// workers keep serving, and the next HUP, once the build is fixed, rolls.
func runPoolBadBuild(b Binary, k poolKind, noReady bool, p Params, res *Results) {
	const n, surge = 4, 1
	bad := "the new worker exits at once"
	if noReady {
		bad = "the new worker never sends READY=1 (--ready-timeout=2)"
	}
	sc := fmt.Sprintf("pool, %s: bad build, %s; %d workers, --rolling --max-surge=%d, paced load (new conn)", k.name, bad, n, surge)
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	err := func() error {
		runMu.Lock()
		runSeq++
		flagFile := filepath.Join(workDir, fmt.Sprintf("bad-build-%d", runSeq))
		runMu.Unlock()
		wargs := append([]string(nil), k.wargs...)
		if noReady {
			wargs = append(wargs, "-no-ready-if="+flagFile)
		} else {
			wargs = append(wargs, "-exit-if="+flagFile)
		}
		opts := append([]string{"--workers=4", "--rolling", fmt.Sprintf("--max-surge=%d", surge)}, k.opts...)
		in, err := start(b, Spec{Opts: opts, WorkerArgs: wargs, Tag: "pool-bad", Node: k.node})
		if err != nil {
			return err
		}
		defer in.Kill()
		if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
			return err
		}
		gen, oldPIDs, err := poolWait(in, 1, n, 15*time.Second)
		if err != nil {
			return err
		}
		load := StartLoad(p.load(in.Addr, false))
		defer load.Stop()
		time.Sleep(500 * time.Millisecond)
		if err := os.WriteFile(flagFile, nil, 0o644); err != nil {
			return err
		}
		logAt := len(in.Log())
		t0 := time.Now()
		syscall.Kill(in.PID, syscall.SIGHUP)
		var stoppedAfter time.Duration
		for {
			if strings.Contains(in.Log()[logAt:], "restart stopped") {
				stoppedAfter = time.Since(t0)
				break
			}
			if time.Since(t0) > 20*time.Second || in.Exited() {
				return fmt.Errorf("no \"restart stopped\" within 20s of the HUP; log:\n%s", tail(in.Log()))
			}
			time.Sleep(2 * time.Millisecond)
		}
		stopAt := load.Since(time.Now())
		time.Sleep(time.Second)
		es, _ := in.Entries()
		oldServing := 0
		for _, e := range es {
			if e.Generation == gen && proc.Alive(e.PID) {
				oldServing++
			}
		}
		// Started by the roll: up to its stop. A slot whose old worker was
		// told to go is refilled after it, with the build as it is now,
		// numbered with the roll's generation; those starts are the slot's
		// crash loop, counted by the old workers still serving.
		rolled := in.Log()[logAt:]
		if i := strings.Index(rolled, "restart stopped"); i >= 0 {
			rolled = rolled[:i]
		}
		started := 0
		for _, m := range startLine.FindAllStringSubmatch(rolled, -1) {
			if g, _ := strconv.Atoi(m[1]); g > gen {
				started++
			}
		}
		var line string
		for _, l := range strings.Split(in.Log()[logAt:], "\n") {
			if strings.Contains(l, "restart stopped") {
				line = strings.TrimSpace(l)
			}
		}
		// The fix: the next HUP rolls every slot.
		fixAt := load.Since(time.Now())
		os.Remove(flagFile)
		syscall.Kill(in.PID, syscall.SIGHUP)
		_, _, fixErr := poolWait(in, gen+1, n, 30*time.Second)
		time.Sleep(300 * time.Millisecond)
		samples := load.Stop()
		c := count(samples)
		// Who answered between the stop and the fix: only the old workers
		// (but for a new worker that was stopped finishing the requests it
		// had: 100 ms of grace).
		old := map[int32]bool{}
		for _, pid := range oldPIDs {
			old[int32(pid)] = true
		}
		after, afterOld := 0, 0
		for _, s := range samples {
			if s.Kind == OK && s.Start > stopAt+100*time.Millisecond && s.End < fixAt {
				after++
				if old[s.PID] {
					afterOld++
				}
			}
		}
		res.AddText(sc, "failed requests (bad build, then the fixed one)", b.Name, fmt.Sprintf("%s of %d", c, len(samples)))
		res.Add(sc, "HUP → \"restart stopped\" logged", Ms, b.Name, ms(stoppedAfter))
		res.AddText(sc, "the log says", b.Name, "`"+strings.TrimPrefix(line, "start_server: ")+"`")
		res.Add(sc, "new workers started by the bad roll (K)", Count, b.Name, float64(started))
		res.AddText(sc, "old workers still serving, 1 s after the stop", b.Name, fmt.Sprintf("%d of %d", oldServing, n))
		res.AddText(sc, "responses from the old workers, from 100 ms after the stop to the fix", b.Name, fmt.Sprintf("%d of %d", afterOld, after))
		res.AddText(sc, "next HUP, build fixed: every slot rolls", b.Name, yesNo(fixErr == nil))
		what := "bad build (" + bad + ")"
		addPoolTarget(what+": roll stops after K=1 new worker, the other old workers serve", k.name,
			fmt.Sprintf("%d started, %d of %d old serving", started, oldServing, n), started == surge && oldServing == n && afterOld == after && after > 0)
		addPoolTarget(what+": 0 failed requests", k.name, c.String(), c.Failed() == 0)
		addPoolTarget(fmt.Sprintf("%s: stop reported within the start bound + 1 s (%v)", what, k.startBound), k.name,
			fmt.Sprintf("%.0f ms", ms(stoppedAfter)), stoppedAfter <= k.startBound)
		if fixErr != nil {
			return fmt.Errorf("after the fix: %w", fixErr)
		}
		_, err = in.Stop(15 * time.Second)
		return err
	}()
	if err != nil {
		failure(res, sc, "failed requests (bad build, then the fixed one)", b.Name, err)
		addPoolTarget(sc, k.name, "ERROR", false)
	}
}

// workerSlot reads SERVER_STARTER_WORKER_SLOT from a worker's environment.
func workerSlot(pid int) (int, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return 0, false
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := strings.CutPrefix(string(kv), "SERVER_STARTER_WORKER_SLOT="); ok {
			n, err := strconv.Atoi(v)
			return n, err == nil
		}
	}
	return 0, false
}

// runPoolKill SIGKILLs the longest-lived worker of 4 every second: each must
// be replaced in its slot; the failed requests are those the killed process
// held (in flight, or its keep-alive connections).
func runPoolKill(b Binary, k poolKind, keepAlive bool, p Params, res *Results) {
	const n = 4
	sc := fmt.Sprintf("pool, %s: %d workers, one SIGKILLed every second for %v, paced load (%s)", k.name, n, p.PoolKillFor, modeName(keepAlive))
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	err := func() error {
		opts := append([]string{"--workers=4"}, k.opts...)
		in, err := start(b, Spec{Opts: opts, WorkerArgs: k.wargs, Tag: "pool-kill", Node: k.node})
		if err != nil {
			return err
		}
		defer in.Kill()
		if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
			return err
		}
		_, pids, err := poolWait(in, 1, n, 15*time.Second)
		if err != nil {
			return err
		}
		seen := map[int]time.Time{}
		for _, pid := range pids {
			seen[pid] = time.Now()
		}
		load := StartLoad(p.load(in.Addr, keepAlive))
		defer load.Stop()
		time.Sleep(time.Second)
		kills, sameSlot := 0, 0
		var replace, killedAt []time.Duration
		end := time.Now().Add(p.PoolKillFor)
		for next := time.Now(); time.Now().Before(end); next = next.Add(time.Second) {
			time.Sleep(time.Until(next))
			es, _ := in.Entries()
			victim := 0
			for _, e := range es {
				if _, ok := seen[e.PID]; !ok {
					seen[e.PID] = time.Now()
				}
				if victim == 0 || seen[e.PID].Before(seen[victim]) {
					victim = e.PID
				}
			}
			slot, ok := workerSlot(victim)
			if !ok {
				return fmt.Errorf("no slot in the environment of worker %d", victim)
			}
			t0 := time.Now()
			killedAt = append(killedAt, load.Since(t0))
			syscall.Kill(victim, syscall.SIGKILL)
			kills++
			// Its replacement: a pid not seen before, the pool at n again.
			for {
				es, _ := in.Entries()
				fresh := 0
				for _, e := range es {
					if _, ok := seen[e.PID]; !ok && proc.Alive(e.PID) {
						fresh = e.PID
					}
				}
				if fresh != 0 && len(es) == n {
					seen[fresh] = time.Now()
					replace = append(replace, time.Since(t0))
					if s, ok := workerSlot(fresh); ok && s == slot {
						sameSlot++
					}
					break
				}
				if time.Since(t0) > 10*time.Second || in.Exited() {
					return fmt.Errorf("worker %d (slot %d) not replaced within 10s; log:\n%s", victim, slot, tail(in.Log()))
				}
				time.Sleep(time.Millisecond)
			}
		}
		time.Sleep(500 * time.Millisecond)
		samples := load.Stop()
		c := count(samples)
		// A failure the kill explains: a request in flight at a kill, or
		// the next request on a keep-alive connection the killed worker
		// held (sent on a reused connection, unanswered, soon after).
		held, other := 0, 0
		for _, s := range samples {
			if s.Kind == OK {
				continue
			}
			explained := false
			for _, k := range killedAt {
				if s.Start <= k+time.Millisecond && s.End >= k ||
					s.Reused && s.Unanswered && s.Start >= k && s.Start < k+time.Second {
					explained = true
					break
				}
			}
			if explained {
				held++
			} else {
				other++
			}
		}
		res.Add(sc, "workers killed", Count, b.Name, float64(kills))
		res.AddText(sc, "replaced in the same slot", b.Name, fmt.Sprintf("%d of %d", sameSlot, kills))
		res.Add(sc, "SIGKILL → replacement in the status file (median)", Ms, b.Name, medianMs(replace))
		res.AddText(sc, "failed requests", b.Name, fmt.Sprintf("%s of %d", c, len(samples)))
		res.AddText(sc, "failed requests per kill", b.Name, fmt.Sprintf("%.2f", float64(c.Failed())/float64(kills)))
		res.AddText(sc, "failed: held by the killed worker (in flight at the kill, or its keep-alive connection's next request) / other", b.Name, fmt.Sprintf("%d / %d", held, other))
		addPoolTarget(fmt.Sprintf("SIGKILL of one of 4 every second (%s): replaced in its slot each time", modeName(keepAlive)), k.name,
			fmt.Sprintf("%d of %d", sameSlot, kills), sameSlot == kills && kills > 0)
		addPoolTarget(fmt.Sprintf("SIGKILL (%s): only requests the killed worker held fail", modeName(keepAlive)), k.name,
			fmt.Sprintf("%d held (%.2f per kill), %d other", held, float64(held)/float64(kills), other), other == 0)
		_, err = in.Stop(15 * time.Second)
		return err
	}()
	if err != nil {
		failure(res, sc, "workers killed", b.Name, err)
		addPoolTarget(sc, k.name, "ERROR", false)
	}
}

// runPoolScale goes from 1 worker to 8 with TTIN and back with TTOU, one
// signal at a time (signals of one kind pending together merge into one).
func runPoolScale(b Binary, k poolKind, p Params, res *Results) {
	for _, ka := range p.Modes {
		sc := fmt.Sprintf("pool, %s: scaling 1 → 8 → 1 with TTIN/TTOU, paced load (%s)", k.name, modeName(ka))
		fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
		err := func() error {
			opts := append([]string{"--workers=1"}, k.opts...)
			in, err := start(b, Spec{Opts: opts, WorkerArgs: k.wargs, Tag: "pool-scale", Node: k.node})
			if err != nil {
				return err
			}
			defer in.Kill()
			if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
				return err
			}
			load := StartLoad(p.load(in.Addr, ka))
			defer load.Stop()
			time.Sleep(500 * time.Millisecond)
			wait := func(want int) error {
				deadline := time.Now().Add(15 * time.Second)
				for {
					es, _ := in.Entries()
					alive := 0
					for _, e := range es {
						if proc.Alive(e.PID) {
							alive++
						}
					}
					if len(es) == want && alive == want {
						return nil
					}
					if time.Now().After(deadline) || in.Exited() {
						return fmt.Errorf("the pool does not reach %d workers within 15s; log:\n%s", want, tail(in.Log()))
					}
					time.Sleep(time.Millisecond)
				}
			}
			t0 := time.Now()
			for w := 2; w <= 8; w++ {
				syscall.Kill(in.PID, syscall.SIGTTIN)
				if err := wait(w); err != nil {
					return err
				}
			}
			up := time.Since(t0)
			t1 := time.Now()
			for w := 7; w >= 1; w-- {
				syscall.Kill(in.PID, syscall.SIGTTOU)
				if err := wait(w); err != nil {
					return err
				}
			}
			down := time.Since(t1)
			time.Sleep(300 * time.Millisecond)
			samples := load.Stop()
			c := count(samples)
			res.AddText(sc, "failed requests", b.Name, fmt.Sprintf("%s of %d", c, len(samples)))
			res.Add(sc, "1 → 8 (7 TTIN, each after the last took effect)", Ms, b.Name, ms(up))
			res.Add(sc, "8 → 1 (7 TTOU, each once the removed worker exited)", Ms, b.Name, ms(down))
			addPoolTarget(fmt.Sprintf("scaling 1 → 8 → 1 (%s): 0 failed requests", modeName(ka)), k.name, c.String(), c.Failed() == 0)
			_, err = in.Stop(15 * time.Second)
			return err
		}()
		if err != nil {
			failure(res, sc, "failed requests", b.Name, err)
			addPoolTarget(sc, k.name, "ERROR", false)
		}
	}
}

// runPoolCost measures the superdaemon's own context switches and CPU time
// while it is sent a HUP every 500 ms under load, with one worker and with
// pools of 4 (Go worker, --interval=0 for every binary).
func runPoolCost(bins []Binary, p Params, res *Results) {
	sc := fmt.Sprintf("pool: superdaemon cost, a HUP every 500 ms for %v under load (new conn), --interval=0", p.Window)
	fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
	cfgs := []struct {
		name string
		opts []string
		all  bool // run the anchors too
	}{
		{"one worker (no --workers)", nil, true},
		{"--workers=1", []string{"--workers=1"}, false},
		{"--workers=4", []string{"--workers=4"}, false},
		{"--workers=4 --rolling", []string{"--workers=4", "--rolling"}, false},
	}
	one := map[string]float64{}
	for _, cfg := range cfgs {
		for i, b := range bins {
			if i > 0 && !cfg.all {
				continue
			}
			m := "context switches per second, " + cfg.name
			cs, cpu, err := poolCostRun(b, cfg.opts, p)
			if err != nil {
				failure(res, sc, m, b.Name, err)
				continue
			}
			res.Add(sc, m, PerSec, b.Name, cs)
			res.Add(sc, "CPU time (ms per s), "+cfg.name, Ms, b.Name, ms(cpu))
			if cfg.all {
				one[b.Name] = cs
			}
		}
	}
	if len(bins) < 2 {
		return
	}
	perl, okP := one[bins[1].Name]
	for _, cfg := range cfgs {
		v, ok := res.Get(sc, "context switches per second, "+cfg.name, bins[0].Name)
		if !ok || !okP {
			continue
		}
		addPoolTarget(fmt.Sprintf("superdaemon context switches under HUPs, %s ≤ 2 × %s's one worker + 5 (%.1f/s)", cfg.name, bins[1].Name, 2*perl+5),
			"Go worker", fmt.Sprintf("%.1f/s (%s: %.1f/s)", v.V, bins[1].Name, perl), v.V <= 2*perl+5)
	}
}

func poolCostRun(b Binary, opts []string, p Params) (cs float64, cpu time.Duration, err error) {
	in, err := start(b, Spec{Opts: append([]string{"--interval=0"}, opts...), WorkerArgs: p.worker(), Tag: "pool-cost"})
	if err != nil {
		return 0, 0, err
	}
	defer in.Kill()
	if _, err := in.WaitServing(in.Addr, 1, 15*time.Second); err != nil {
		return 0, 0, err
	}
	load := StartLoad(p.load(in.Addr, false))
	defer load.Stop()
	time.Sleep(time.Second)
	u0 := readUsage(in.PID)
	for end := time.Now().Add(p.Window); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		syscall.Kill(in.PID, syscall.SIGHUP)
	}
	u1 := readUsage(in.PID)
	load.Stop()
	cpu, cs = rates(u0, u1)
	_, err = in.Stop(15 * time.Second)
	return cs, cpu, err
}

// printPoolTargets writes issue 11's targets.
func printPoolTargets(w io.Writer) {
	if len(poolTargets) == 0 {
		return
	}
	fmt.Fprintf(w, "\nWorker pool targets (issue 11; ss-bridge only, the anchors have no pools):\n\n")
	fmt.Fprintf(w, "| target | worker | figure | met |\n| --- | --- | --- | --- |\n")
	for _, t := range poolTargets {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.target, t.worker, t.figure, map[bool]string{true: "met", false: "NOT MET"}[t.met])
	}
}

// cpuSnapshot is the CPU used so far, in ms, from /proc's clock ticks: by a
// superdaemon, by its workers (live, and reaped: its cutime), and by the
// whole machine (busy, and in all).
type cpuSnapshot struct {
	at                           time.Time
	bridge, workers, busy, total float64
}

// ticks reads utime, stime, cutime and cstime from /proc/PID/stat.
func ticks(pid int) (self, children float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndex(s, ")")+1:]) // f[0] is field 3, state
	if len(f) < 15 {
		return 0, 0
	}
	field := func(n int) float64 {
		v, _ := strconv.ParseFloat(f[n-3], 64)
		return v
	}
	return field(14) + field(15), field(16) + field(17)
}

// msPerTick: USER_HZ, 100 on every Linux this runs on.
const msPerTick = 10

func takeCPU(bridge int) cpuSnapshot {
	c := cpuSnapshot{at: time.Now()}
	self, reaped := ticks(bridge)
	c.bridge, c.workers = self*msPerTick, reaped*msPerTick
	for _, w := range children(bridge) {
		t, r := ticks(w)
		c.workers += (t + r) * msPerTick
	}
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0]) // cpu user nice system idle iowait irq softirq steal ...
		for i := 1; i < len(f) && i <= 8; i++ {
			v, _ := strconv.ParseFloat(f[i], 64)
			c.total += v * msPerTick
			if i != 4 && i != 5 {
				c.busy += v * msPerTick
			}
		}
	}
	return c
}

// cpuUse sums the CPU used between pairs of snapshots.
type cpuUse struct {
	seconds, bridge, workers, busy, total float64
}

func (u *cpuUse) add(from, to cpuSnapshot) {
	u.seconds += to.at.Sub(from.at).Seconds()
	u.bridge += to.bridge - from.bridge
	u.workers += to.workers - from.workers
	u.busy += to.busy - from.busy
	u.total += to.total - from.total
}

// controlRoll starts n workers of kind k one after the other, as a rolling
// restart with a surge of 1 does: each once the one before counts as started
// (READY, or --interval for Node.js), which is then told to go (TERM); it
// returns once the last has counted as started and every one has exited.
// They listen on a socket of their own, which no client knows. The socket
// is never an *os.File here: its Fd() would make it blocking for every
// holder, and a worker would then hang in accept(2) when told to go.
func controlRoll(k poolKind, n int) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := syscall.Listen(fd, 128); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	port := sa.(*syscall.SockaddrInet4).Port
	events, err := os.CreateTemp(workDir, "control-*.events")
	if err != nil {
		return err
	}
	events.Close()
	defer os.Remove(events.Name())
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	null := devnull.Fd() // a file, not the socket: blocking is harmless
	var pids []int
	waited := map[int]bool{}
	wait := func(pid int) {
		if !waited[pid] {
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, 0, nil)
			waited[pid] = true
		}
	}
	defer func() {
		for _, pid := range pids {
			if !waited[pid] {
				syscall.Kill(pid, syscall.SIGKILL)
				wait(pid)
			}
		}
	}()
	env := append(cleanEnv(), fmt.Sprintf("SERVER_STARTER_PORT=127.0.0.1:%d=3", port), "SERVER_STARTER_GENERATION=0")
	for i := 0; i < n; i++ {
		argv := append([]string{selfPath, "worker", "-events=" + events.Name()}, k.wargs...)
		if k.node {
			argv = append([]string{nodePath, nodeScript, "-events=" + events.Name()}, k.wargs...)
		}
		pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{Env: env, Files: []uintptr{null, null, null, uintptr(fd)}})
		if err != nil {
			return fmt.Errorf("control worker: %w", err)
		}
		pids = append(pids, pid)
		started := time.Now()
		// Counts as started: its READY (the Go worker's "ready" event comes
		// just before it), or --interval=1 for Node.js.
		for {
			if k.node {
				if time.Since(started) >= time.Second {
					break
				}
			} else if data, _ := os.ReadFile(events.Name()); strings.Contains(string(data), fmt.Sprintf("%d ready ", pid)) {
				break
			}
			if time.Since(started) > 30*time.Second {
				return fmt.Errorf("control worker %d not ready within 30s", pid)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if i > 0 {
			syscall.Kill(pids[i-1], syscall.SIGTERM)
		}
	}
	syscall.Kill(pids[n-1], syscall.SIGTERM)
	for _, pid := range pids {
		wait(pid)
	}
	return nil
}
