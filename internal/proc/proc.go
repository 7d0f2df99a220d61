// Package proc reads what Linux says of processes in /proc.
package proc

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Stat is a process's /proc/PID/stat, as far as ss-bridge needs it.
type Stat struct {
	PID, PPID, Pgrp, Session int
	// State is R, S, D, Z, T...
	State byte
	// Ticks is the user and system CPU time of every thread, in clock ticks.
	Ticks int64
}

// ReadStat reads /proc/PID/stat; ok is false when the process is gone.
func ReadStat(pid int) (st Stat, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, false
	}
	// The command name, in parentheses, may hold spaces and ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return Stat{}, false
	}
	st = Stat{PID: pid, State: f[0][0]}
	st.PPID, _ = strconv.Atoi(f[1])
	st.Pgrp, _ = strconv.Atoi(f[2])
	st.Session, _ = strconv.Atoi(f[3])
	user, _ := strconv.ParseInt(f[11], 10, 64)
	system, _ := strconv.ParseInt(f[12], 10, 64)
	st.Ticks = user + system
	return st, true
}

// Parent is pid's parent, or -1 when pid is gone.
func Parent(pid int) int {
	if st, ok := ReadStat(pid); ok {
		return st.PPID
	}
	return -1
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	st, ok := ReadStat(pid)
	return ok && st.State != 'Z'
}

// WaitDead waits up to timeout for pid to be gone or a zombie, and reports
// whether it is.
func WaitDead(pid int, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if !Alive(pid) {
			return true
		}
	}
	return !Alive(pid)
}

// All reads every process's stat.
func All() []Stat {
	ents, _ := os.ReadDir("/proc")
	var out []Stat
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if st, ok := ReadStat(pid); ok {
				out = append(out, st)
			}
		}
	}
	return out
}

// Children are the processes whose parent is pid, zombies included.
func Children(pid int) []Stat {
	var out []Stat
	for _, st := range All() {
		if st.PPID == pid {
			out = append(out, st)
		}
	}
	return out
}

// FDCount is how many descriptors pid has open, or -1 when it is gone.
func FDCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// StatusField is a numeric field of a /proc/.../status file, such as
// "VmRSS" (in kB) or "Threads".
func StatusField(path, name string) (int64, bool) {
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
