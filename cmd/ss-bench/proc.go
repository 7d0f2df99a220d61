package main

import (
	"fmt"
	"github.com/ss-bridge/ss-bridge/internal/proc"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func rssKB(pid int) int64 {
	n, _ := proc.StatusField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS")
	return n
}

func threads(pid int) int64 {
	n, _ := proc.StatusField(fmt.Sprintf("/proc/%d/status", pid), "Threads")
	return n
}

// usage is a process's CPU time and context switches so far, summed over its
// threads (/proc/pid/status counts the main thread's switches only).
type usage struct {
	at    time.Time
	cpu   time.Duration
	vol   int64
	invol int64
}

func readUsage(pid int) usage {
	u := usage{at: time.Now()}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, t := range tasks {
		if v, ok := proc.StatusField(t+"/status", "voluntary_ctxt_switches"); ok {
			u.vol += v
		}
		if v, ok := proc.StatusField(t+"/status", "nonvoluntary_ctxt_switches"); ok {
			u.invol += v
		}
		// schedstat: time on CPU in ns, more precise than stat's ticks.
		if data, err := os.ReadFile(t + "/schedstat"); err == nil {
			if f := strings.Fields(string(data)); len(f) > 0 {
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				u.cpu += time.Duration(ns)
			}
		}
	}
	if u.cpu == 0 {
		if st, ok := proc.ReadStat(pid); ok {
			u.cpu = time.Duration(st.Ticks) * 10 * time.Millisecond
		}
	}
	return u
}

// rates is CPU time per second and context switches per second between two
// usages.
func rates(a, b usage) (cpuPerSec time.Duration, switchesPerSec float64) {
	d := b.at.Sub(a.at).Seconds()
	if d <= 0 {
		return 0, 0
	}
	return time.Duration(float64(b.cpu-a.cpu) / d), float64(b.vol+b.invol-a.vol-a.invol) / d
}

// zombies counts pid's children that are zombies.
func zombies(pid int) int {
	n := 0
	for _, c := range children(pid) {
		if st, ok := proc.ReadStat(c); ok && st.State == 'Z' {
			n++
		}
	}
	return n
}

// children lists pid's children (all threads' children).
func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if len(tasks) > 0 {
		for _, t := range tasks {
			data, _ := os.ReadFile(t)
			for _, f := range strings.Fields(string(data)) {
				if n, err := strconv.Atoi(f); err == nil {
					out = append(out, n)
				}
			}
		}
		return out
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			if st, ok := proc.ReadStat(n); ok && st.PPID == pid {
				out = append(out, n)
			}
		}
	}
	return out
}
