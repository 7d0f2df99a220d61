package supervisor

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// environment is a worker's environment, by name.
type environment map[string]string

func newEnvironment(list []string) environment {
	env := environment{}
	for _, kv := range list {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

func (e environment) list() []string {
	out := make([]string, 0, len(e))
	for k, v := range e {
		out = append(out, k+"="+v)
	}
	return out
}

// withEnvDir returns base overlaid with the files of the directory named by
// ENVDIR, as 0.35 reads them: each file NAME not starting with '.' sets NAME
// to its first line; empty and unreadable files are skipped. Because the
// overlay is rebuilt from base every time, a file removed since the last read
// no longer sets its variable.
func withEnvDir(base environment) environment {
	env := make(environment, len(base))
	for k, v := range base {
		env[k] = v
	}
	dir := env["ENVDIR"]
	if dir == "" {
		return env
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return env
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.ContainsRune(name, '=') {
			continue
		}
		if line, ok := firstLine(filepath.Join(dir, name)); ok {
			env[name] = line
		}
	}
	return env
}

func firstLine(path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	r := bufio.NewReader(f)
	line, err := r.ReadString('\n')
	if line == "" && err != nil {
		return "", false
	}
	return strings.TrimSuffix(line, "\n"), true
}

// truthy is Perl's truth for an environment value: unset, "" and "0" are false.
func (e environment) truthy(name string) bool {
	v := e[name]
	return v != "" && v != "0"
}

// seconds reads a duration in seconds; ok is false when the variable is unset
// or not a number.
func (e environment) seconds(name string) (time.Duration, bool) {
	v, set := e[name]
	if !set {
		return 0, false
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || f < 0 {
		return 0, false
	}
	return time.Duration(f * float64(time.Second)), true
}

// autoRestart reports whether auto-restart is on, and its interval
// (AUTO_RESTART_INTERVAL, 360 s when unset or zero, as 0.35's "||= 360").
func (e environment) autoRestart() (bool, time.Duration) {
	if !e.truthy("ENABLE_AUTO_RESTART") {
		return false, 0
	}
	d, ok := e.seconds("AUTO_RESTART_INTERVAL")
	if !ok || d == 0 {
		d = 360 * time.Second
	}
	return true, d
}

// killOldDelay is KILL_OLD_DELAY, or 5 s with auto-restart and 0 without.
func (e environment) killOldDelay() time.Duration {
	if d, ok := e.seconds("KILL_OLD_DELAY"); ok {
		return d
	}
	if e.truthy("ENABLE_AUTO_RESTART") {
		return 5 * time.Second
	}
	return 0
}

// lookPath finds a command as execvp(3) would, in this environment's PATH.
// A name with a slash is returned as it is: it is relative to the worker's
// directory, which the kernel resolves after the chdir.
func (e environment) lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path, ok := e["PATH"]
	if !ok {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &os.PathError{Op: "exec", Path: name, Err: errNotInPath}
}

type notInPathError struct{}

func (notInPathError) Error() string { return "command not found in PATH" }

var errNotInPath = notInPathError{}

// formatSeconds prints a duration the way the log lines print seconds: whole
// numbers without a fraction, as 0.35 printed them.
func formatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}
