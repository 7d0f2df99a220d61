// Command ss-bench measures ss-bridge and other start_server-compatible
// superdaemons (Perl's start_server 0.35 by default) side by side, in one
// run, and prints a markdown table of the figures with ratios (ss-bridge /
// anchor), the conditions, and the project's performance targets marked met or not met.
//
// It runs every superdaemon on 127.0.0.1 with its own binary as the worker
// ("ss-bench worker"), loads it with raw HTTP/1.1 requests that are never
// retried, and reads the superdaemon's cost from /proc. See README.md
// ("Benchmark") for how to run it; -quick finishes in about a minute.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

type anchorFlag []Binary

func (a *anchorFlag) String() string { return describeBins(*a) }
func (a *anchorFlag) Set(v string) error {
	name, path, ok := strings.Cut(v, "=")
	if !ok {
		name, path = filepath.Base(v), v
	}
	*a = append(*a, Binary{Name: name, Path: path})
	return nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		os.Exit(workerMain(os.Args[2:]))
	}
	os.Exit(benchMain(os.Args[1:], os.Stdout))
}

func benchMain(args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("ss-bench", flag.ContinueOnError)
	bridge := fs.String("bridge", "bin/ss-bridge", "the ss-bridge binary under test")
	var anchors anchorFlag
	fs.Var(&anchors, "anchor", "NAME=PATH of a start_server-compatible binary to compare with; repeatable (default perl-0.35=/usr/bin/start_server)")
	scenarios := fs.String("scenarios", "hup,burst,restart,upgrade,cost,scale,pool,systemd", "comma-separated scenarios to run (pool: worker pools, with a Node.js worker too if node is installed; systemd: restarts under a real systemd in a container, needs root; neither is in -quick)")
	quick := fs.Bool("quick", false, "a run of about a minute: 1 repetition, new connections only, small scale figures")
	runs := fs.Int("runs", 5, "repetitions of each measurement (medians are reported)")
	rate := fs.Float64("rate", 2500, "load: requests per second offered")
	conns := fs.Int("conns", 8, "load: concurrent connections")
	latency := fs.Duration("latency", time.Millisecond, "the worker's latency per request")
	window := fs.Duration("window", 5*time.Second, "how long idle and loaded usage is measured")
	restarts := fs.Int("restarts", 10000, "consecutive restarts in the scale scenario")
	sockets := fs.Int("sockets", 1000, "listening sockets in the scale scenario")
	churn := fs.Int("churn", 100, "live generations in the status-file churn")
	upgrades := fs.Int("upgrades", 100, "self-upgrades in a row in the upgrade scenario")
	keepAlive := fs.String("modes", "new,keepalive", "load modes: new (a connection per request), keepalive")
	systemdCycles := fs.Int("systemd-cycles", 3, "systemctl restart cycles per configuration and mode in the systemd scenario")
	poolRolls := fs.Int("pool-rolls", 10, "reloads of a pool of 4 under load in the pool scenario")
	poolKillFor := fs.Duration("pool-kill-for", 20*time.Second, "how long a pool worker is SIGKILLed every second in the pool scenario")
	poolParts := fs.String("pool-parts", "", "parts of the pool scenario to run, comma-separated: roll,bad,kill,scale,cost, and the workers: go,node (default: all)")
	out := fs.String("out", "", "also write the report to this file")
	keep := fs.Bool("keep", false, "keep the instances' files (logs, status, events)")
	verbose := fs.Bool("v", false, "progress details on stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		defaults := map[string]func(){
			"runs":     func() { *runs = 1 },
			"window":   func() { *window = 2 * time.Second },
			"restarts": func() { *restarts = 50 },
			"churn":    func() { *churn = 20 },
			"upgrades": func() { *upgrades = 10 },
			"modes":    func() { *keepAlive = "new" },
			"scenarios": func() {
				// Not pool: it takes two minutes even when short (Node.js
				// starts slowly); -quick -scenarios=pool runs a short one.
				*scenarios = "hup,burst,restart,upgrade,cost,scale"
			},
			"pool-rolls":    func() { *poolRolls = 2 },
			"pool-kill-for": func() { *poolKillFor = 3 * time.Second },
		}
		for name, f := range defaults {
			if !set[name] {
				f()
			}
		}
	}
	if len(anchors) == 0 {
		anchors = anchorFlag{{Name: "perl-0.35", Path: "/usr/bin/start_server"}}
	}
	p := Params{Runs: max(1, *runs), Rate: *rate, Conns: *conns, Latency: *latency, Window: *window,
		Restarts: *restarts, Sockets: *sockets, Churn: max(2, *churn), Verbose: *verbose,
		SystemdCycles: max(1, *systemdCycles), Upgrades: max(1, *upgrades), PoolRolls: max(1, *poolRolls), PoolKillFor: max(time.Second, *poolKillFor)}
	if *poolParts != "" {
		p.PoolParts = map[string]bool{}
		for _, part := range strings.Split(*poolParts, ",") {
			switch part = strings.TrimSpace(part); part {
			case "roll", "bad", "kill", "scale", "cost", "go", "node":
				p.PoolParts[part] = true
			default:
				fmt.Fprintf(os.Stderr, "ss-bench: unknown part %q of the pool scenario\n", part)
				return 2
			}
		}
	}
	for _, m := range strings.Split(*keepAlive, ",") {
		switch strings.TrimSpace(m) {
		case "new":
			p.Modes = append(p.Modes, false)
		case "keepalive":
			p.Modes = append(p.Modes, true)
		default:
			fmt.Fprintf(os.Stderr, "ss-bench: unknown mode %q\n", m)
			return 2
		}
	}

	bins := []Binary{{Name: "ss-bridge", Path: *bridge, Notify: true}}
	bins = append(bins, anchors...)
	for i := range bins {
		path, err := exec.LookPath(bins[i].Path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ss-bench: %s: %v\n", bins[i].Name, err)
			return 1
		}
		if bins[i].Path, err = filepath.Abs(path); err != nil {
			fmt.Fprintf(os.Stderr, "ss-bench: %v\n", err)
			return 1
		}
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ss-bench: %v\n", err)
		return 1
	}
	selfPath = self
	if workDir, err = os.MkdirTemp("", "ss-bench-"); err != nil {
		fmt.Fprintf(os.Stderr, "ss-bench: %v\n", err)
		return 1
	}
	if *keep {
		fmt.Fprintf(os.Stderr, "ss-bench: files in %s\n", workDir)
	} else {
		defer os.RemoveAll(workDir)
	}

	res := newResults()
	began := time.Now()
	run := map[string]func([]Binary, Params, *Results){
		"hup": scenarioHUP, "burst": scenarioBurst, "restart": scenarioRestart,
		"cost": scenarioCost, "scale": scenarioScale, "pool": scenarioPool, "systemd": scenarioSystemd, "upgrade": scenarioUpgrade,
		// Only the pool scenario's superdaemon cost, for work on it.
		"poolcost": runPoolCost,
	}
	for _, name := range strings.Split(*scenarios, ",") {
		f, ok := run[strings.TrimSpace(name)]
		if !ok {
			fmt.Fprintf(os.Stderr, "ss-bench: unknown scenario %q\n", name)
			return 2
		}
		f(bins, p, res)
	}

	var report strings.Builder
	fmt.Fprintf(&report, "Conditions: %s\n\n", conditions(bins, p, *quick, args, time.Since(began)))
	res.Print(&report, bins)
	report.WriteString("\n")
	printTargets(&report, res, bins)
	printPoolTargets(&report)
	fmt.Fprint(stdout, report.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report.String()), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "ss-bench: %v\n", err)
			return 1
		}
	}
	return 0
}

func conditions(bins []Binary, p Params, quick bool, args []string, took time.Duration) string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	var versions []string
	for _, b := range bins {
		v, _ := exec.Command(b.Path, "--version").Output()
		versions = append(versions, fmt.Sprintf("%s (%s: %s)", b.Name, b.Path, strings.TrimSpace(string(v))))
	}
	mode := ""
	if quick {
		mode = " -quick;"
	}
	return fmt.Sprintf("%d cores (%s), Linux %s, %s;%s %s; load %.0f req/s offered over %d connections, worker latency %v; "+
		"medians over %d repetitions (%d systemctl restart cycles under systemd); usage windows %v; %d restarts, %d sockets, %d churned generations; `ss-bench %s`; took %v",
		runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)), runtime.Version(), mode, strings.Join(versions, ", "),
		p.Rate, p.Conns, p.Latency, p.Runs, p.SystemdCycles, p.Window, p.Restarts, p.Sockets, p.Churn, strings.Join(args, " "), took.Round(time.Second))
}

// failedOf reads the number of failed requests at the start of a figure
// such as "0 of 1234" or "12 (3 refused, ...) of 1234".
func failedOf(v Val) (int, bool) {
	if !v.Set || v.NA {
		return 0, false
	}
	f := strings.Fields(v.Text)
	if len(f) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(f[0])
	return n, err == nil
}

// printTargets evaluates the project's performance targets against the first anchor.
func printTargets(w io.Writer, res *Results, bins []Binary) {
	subject, anchor := bins[0].Name, bins[1].Name
	fmt.Fprintf(w, "Targets (ss-bridge against %s, same run):\n\n", anchor)
	fmt.Fprintf(w, "| target | ss-bridge | %s | ratio | met |\n| --- | --- | --- | --- | --- |\n", anchor)
	line := func(target, a, b, r string, met bool, known bool) {
		m := "not measured"
		if known {
			m = map[bool]string{true: "met", false: "NOT MET"}[met]
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", target, a, b, r, m)
	}
	get := func(sc, metric, bin string) (Val, bool) { return res.Get(sc, metric, bin) }
	fmtMs := func(v Val, ok bool) string {
		if !ok {
			return "—"
		}
		return v.format(Ms)
	}
	rat := func(a, b Val, okA, okB bool) string {
		if !okA || !okB {
			return ""
		}
		return ratio(a, b, Ms)
	}

	// Failed requests across HUPs.
	var failed, anchorFailed, rows int
	for _, row := range res.rows {
		if (strings.HasPrefix(row.Scenario, "HUP")) && row.Metric == "failed requests" {
			if n, ok := failedOf(row.Vals[subject]); ok {
				failed += n
				rows++
			}
			if n, ok := failedOf(row.Vals[anchor]); ok {
				anchorFailed += n
			}
		}
	}
	line("failed requests across HUPs, every mode: 0", strconv.Itoa(failed), strconv.Itoa(anchorFailed), "", failed == 0, rows > 0)
	// Failed requests across systemctl restarts, socket unit and fd store.
	var sdFailed, sdAnchor, sdAnchorRows int
	sdCfgs := map[string]bool{}
	for _, row := range res.rows {
		if !strings.HasPrefix(row.Scenario, systemdScenarioPrefix) || row.Metric != "failed requests, all cycles" {
			continue
		}
		if n, ok := failedOf(row.Vals[subject]); ok {
			sdFailed += n
			cfg, _, _ := strings.Cut(strings.TrimPrefix(row.Scenario, systemdScenarioPrefix+", "), ":")
			sdCfgs[cfg] = true
		}
		if n, ok := failedOf(row.Vals[anchor]); ok {
			sdAnchor += n
			sdAnchorRows++
		}
	}
	sdA, sdB := "—", "—"
	if len(sdCfgs) > 0 {
		sdA = strconv.Itoa(sdFailed)
	}
	if sdAnchorRows > 0 {
		sdB = strconv.Itoa(sdAnchor)
	}
	line("superdaemon restart under systemd (socket unit, fd store): 0 failed requests", sdA, sdB, "", sdFailed == 0, sdCfgs["socket unit"] && sdCfgs["fd store"])

	// Old worker signalled with readiness by notification.
	var scNotify string
	for _, row := range res.rows {
		if strings.HasPrefix(row.Scenario, "HUP, --ready=notify") && row.Metric == "old worker signalled − new worker READY" {
			scNotify = row.Scenario
			break
		}
	}
	mode := strings.TrimPrefix(scNotify, "HUP, --ready=notify ")
	a, okA := get(scNotify, "old worker signalled − new worker READY", subject)
	line("old worker signalled ≤ 5 ms after the new worker's READY (--ready=notify)", fmtMs(a, okA), "n/a", "", okA && a.V <= 5, okA)
	a, okA = get(scNotify, "HUP → old worker signalled", subject)
	b, okB := get("HUP, --interval=1 "+mode, "HUP → old worker signalled", anchor)
	line("HUP → old worker signalled: ss-bridge --ready=notify vs anchor --interval=1", fmtMs(a, okA), fmtMs(b, okB), rat(a, b, okA, okB), okA && okB && a.V < b.V, okA && okB)

	// Slow start with notification: no stretch without responses.
	sc := "HUP, 200 ms start, --ready=notify " + mode
	a, okA = get(sc, "longest stretch without responses", subject)
	ref, okR := get(sc, "(reference: longest stretch in the second before the HUPs)", subject)
	p99, okP := get(sc, "(reference: p99 latency before the HUPs)", subject)
	b, okB = get("HUP, 200 ms start, --interval=0 "+mode, "longest stretch without responses", anchor)
	normal := max(ref.V, p99.V)
	line(fmt.Sprintf("200 ms start with --ready=notify: longest stretch without responses ≤ normal (%.1f ms: the longest in the second before the HUPs, or p99 latency) [anchor: --interval=0]", normal),
		fmtMs(a, okA), fmtMs(b, okB), rat(a, b, okA, okB), okA && okR && okP && a.V <= normal, okA && okR && okP)

	// Cost.
	lsc := ""
	for _, row := range res.rows {
		if strings.HasPrefix(row.Scenario, "cost under load") {
			lsc = row.Scenario
			break
		}
	}
	a, okA = get(lsc, "context switches under load", subject)
	b, okB = get(lsc, "context switches under load", anchor)
	line("context switches under load ≤ anchor's", fmtVal(a, okA, PerSec), fmtVal(b, okB, PerSec), rat(a, b, okA, okB), okA && okB && a.V <= b.V, okA && okB)
	a, okA = get(lsc, "CPU time under load (ms per s)", subject)
	b, okB = get(lsc, "CPU time under load (ms per s)", anchor)
	line("CPU time under load ≤ anchor's", fmtMs(a, okA), fmtMs(b, okB), rat(a, b, okA, okB), okA && okB && a.V <= b.V, okA && okB)
	a, okA = get("cost", "context switches idle", subject)
	b, okB = get("cost", "context switches idle", anchor)
	line("context switches idle: 0 (< 0.5/s)", fmtVal(a, okA, PerSec), fmtVal(b, okB, PerSec), rat(a, b, okA, okB), okA && a.V < 0.5, okA)
	a, okA = get("cost", "RSS idle", subject)
	b, okB = get("cost", "RSS idle", anchor)
	a2, okA2 := get(lsc, "RSS under load (max)", subject)
	line("RSS ≤ 5.3 MB (the Go port's), idle and under load", fmtVal(a, okA, MB)+" / "+fmtVal(a2, okA2, MB), fmtVal(b, okB, MB), rat(a, b, okA, okB), okA && okA2 && a.V <= 5.3 && a2.V <= 5.3, okA && okA2)
	a, okA = get("cost", "startup: exec → first response", subject)
	b, okB = get("cost", "startup: exec → first response", anchor)
	line("startup ≤ 14 ms (the Go port's)", fmtMs(a, okA), fmtMs(b, okB), rat(a, b, okA, okB), okA && a.V <= 14, okA)
	for _, m := range []string{"TERM → exit, idle", "TERM → exit, TERM 150 ms into --interval=1"} {
		a, okA = get("cost", m, subject)
		b, okB = get("cost", m, anchor)
		line(m+" ≤ anchor's (anchor: its ~3 ms plus the worker's drain)", fmtMs(a, okA), fmtMs(b, okB), rat(a, b, okA, okB), okA && okB && a.V <= b.V, okA && okB)
	}
}

func fmtVal(v Val, ok bool, u Unit) string {
	if !ok {
		return "—"
	}
	return v.format(u)
}
