package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procStat is what the benchmark reads of a process in /proc.
type procStat struct {
	ppid  int
	state byte
	ticks int64 // utime+stime of every thread, in clock ticks
}

func readStat(pid int) (procStat, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return procStat{}, false
	}
	st := procStat{state: f[0][0]}
	st.ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	st.ticks = ut + stt
	return st, true
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	st, ok := readStat(pid)
	return ok && st.state != 'Z'
}

// statusField returns a numeric field of /proc/pid/status ("VmRSS" in kB,
// "Threads").
func statusField(path, name string) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			fs := strings.Fields(v)
			if len(fs) == 0 {
				return 0, false
			}
			n, err := strconv.ParseInt(fs[0], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

func rssKB(pid int) int64 {
	n, _ := statusField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS")
	return n
}

func threads(pid int) int64 {
	n, _ := statusField(fmt.Sprintf("/proc/%d/status", pid), "Threads")
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
		if v, ok := statusField(t+"/status", "voluntary_ctxt_switches"); ok {
			u.vol += v
		}
		if v, ok := statusField(t+"/status", "nonvoluntary_ctxt_switches"); ok {
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
		if st, ok := readStat(pid); ok {
			u.cpu = time.Duration(st.ticks) * 10 * time.Millisecond
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

func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// zombies counts pid's children that are zombies.
func zombies(pid int) int {
	n := 0
	for _, c := range children(pid) {
		if st, ok := readStat(c); ok && st.state == 'Z' {
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
			if st, ok := readStat(n); ok && st.ppid == pid {
				out = append(out, n)
			}
		}
	}
	return out
}
