package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
	"github.com/ss-bridge/ss-bridge/service"
)

// ---------------------------------------------------------------------------
// Self-upgrade (ss-bridge only): USR2 in a row under load

func scenarioUpgrade(bins []Binary, p Params, res *Results) {
	for _, ka := range p.Modes {
		sc := fmt.Sprintf("%d self-upgrades in a row (%s)", p.Upgrades, modeName(ka))
		fmt.Fprintf(os.Stderr, "scenario %s\n", sc)
		for _, b := range bins {
			if !b.Notify { // not ss-bridge: start_server cannot upgrade itself
				res.NA(sc, "failed requests, all upgrades", Text, b.Name, "no self-upgrade")
				continue
			}
			if err := runUpgrade(b, ka, p, res, sc); err != nil {
				failure(res, sc, "failed requests, all upgrades", b.Name, err)
			}
		}
	}
}

func runUpgrade(b Binary, keepAlive bool, p Params, res *Results, sc string) error {
	ports, err := testkit.FreePorts(1)
	if err != nil {
		return err
	}
	// A copy of its own, as an installed binary that a package upgrade replaces: the
	// same program each time, which is what the mechanism costs.
	exe := filepath.Join(workDir, fmt.Sprintf("upgrade-%d-ss-bridge", ports[0]))
	if err := copyFile(b.Path, exe); err != nil {
		return err
	}
	pidFile := exe + ".pid"
	spec := Spec{Ports: ports, Opts: []string{"--interval=1", "--pid-file=" + pidFile}, WorkerArgs: p.worker(), Tag: "upgrade"}
	in, err := start(Binary{Name: b.Name, Path: exe, Notify: true}, spec)
	if err != nil {
		return err
	}
	defer func() { in.Kill() }()
	if _, _, _, err := in.WaitOnly(0, 15*time.Second, 10*time.Millisecond); err != nil {
		return err
	}
	workersBefore, err := in.StatusGens()
	if err != nil {
		return err
	}
	load := StartLoad(p.load(in.Addr, keepAlive))
	defer load.Stop()
	time.Sleep(300 * time.Millisecond)

	resultFile := service.ResultFile(pidFile)
	type round struct{ t0, done time.Time }
	var rounds []round
	var fdsFirst, rssFirst int64
	for i := range p.Upgrades {
		before, err := service.ReadResult(resultFile)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if err := syscall.Kill(in.PID, syscall.SIGUSR2); err != nil {
			return err
		}
		for {
			r, err := service.ReadResult(resultFile)
			if err == nil && r.Seq > before.Seq {
				if !r.OK {
					return fmt.Errorf("upgrade %d: %s", i+1, r.Error)
				}
				if r.PID != in.PID {
					return fmt.Errorf("upgrade %d: done by pid %d, not %d", i+1, r.PID, in.PID)
				}
				break
			}
			if in.Exited() || time.Since(t0) > 30*time.Second {
				return fmt.Errorf("upgrade %d: no outcome (exited: %v)", i+1, in.Exited())
			}
			time.Sleep(200 * time.Microsecond)
		}
		rounds = append(rounds, round{t0, time.Now()})
		if i == 0 {
			fdsFirst, rssFirst = int64(proc.FDCount(in.PID)), rssKB(in.PID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	samples := load.Stop()
	c := count(samples)
	var took, gaps []time.Duration
	for _, r := range rounds {
		took = append(took, r.done.Sub(r.t0))
		gaps = append(gaps, maxGap(samples, load.Since(r.t0), load.Since(r.done)+20*time.Millisecond))
	}
	workersAfter, err := in.StatusGens()
	if err != nil {
		return err
	}
	slices.Sort(took)
	slices.Sort(gaps)
	res.AddText(sc, "failed requests, all upgrades", b.Name, fmt.Sprintf("%s of %d", c, len(samples)))
	res.Add(sc, "USR2 to the new image serving, median", Ms, b.Name, medianMs(took))
	res.Add(sc, "USR2 to the new image serving, slowest", Ms, b.Name, ms(took[len(took)-1]))
	res.Add(sc, "longest stretch without responses in an upgrade, median", Ms, b.Name, medianMs(gaps))
	res.Add(sc, "longest stretch without responses in an upgrade, worst", Ms, b.Name, ms(gaps[len(gaps)-1]))
	res.AddText(sc, "worker and bridge pids unchanged", b.Name, yesNo(sameWorkers(workersBefore, workersAfter) && !in.Exited()))
	res.AddText(sc, "fds / RSS after the first and the last upgrade", b.Name,
		fmt.Sprintf("%d / %.1f MB, %d / %.1f MB", fdsFirst, float64(rssFirst)/1024, proc.FDCount(in.PID), float64(rssKB(in.PID))/1024))
	_, err = in.Stop(15 * time.Second)
	return err
}

func sameWorkers(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for gen, pid := range a {
		if b[gen] != pid {
			return false
		}
	}
	return true
}
