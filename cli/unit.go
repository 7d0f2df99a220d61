package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ss-bridge/ss-bridge/supervisor"
	"github.com/ss-bridge/ss-bridge/units"
)

// unitPaths makes the unit work as printed, wherever systemd runs it: the
// worker program, ss-bridge and every file option become absolute paths,
// and the working directory (returned, for WorkingDirectory=) is --dir or
// the current one, since systemd starts services in "/".
func unitPaths(o *Options, cfg supervisor.Config) (string, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the current directory: %w", err)
	}
	worker, err := cfg.CommandPath()
	if err != nil {
		return "", err
	}
	o.Command = append([]string{worker}, o.Command[1:]...)
	for _, p := range []*string{&o.Dir, &o.PidFile, &o.StatusFile, &o.EnvDir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(cwd, *p)
		}
	}
	if o.LogFile != "" && !strings.HasPrefix(strings.TrimSpace(o.LogFile), "|") && !filepath.IsAbs(o.LogFile) {
		o.LogFile = filepath.Join(cwd, o.LogFile)
	}
	if o.Binary == "" {
		if o.Binary, err = invokedPath(); err != nil {
			return "", fmt.Errorf("find ss-bridge's path (give --binary): %w", err)
		}
	} else if !filepath.IsAbs(o.Binary) {
		o.Binary = filepath.Join(cwd, o.Binary)
	}
	if why := buildTree(o.Binary); why != "" {
		fmt.Fprintf(os.Stderr, "ss-bridge: warning: ExecStart= runs %s, which lies in %s; install ss-bridge (e.g. in /usr/local/bin) and run that, or give --binary\n", o.Binary, why)
	}
	if o.Dir != "" {
		return o.Dir, nil
	}
	return cwd, nil
}

// invokedPath is the path ss-bridge was run by, made absolute. Not
// os.Executable: that resolves symbolic links, and a unit must keep naming
// /usr/local/bin/ss-bridge when it links to a versioned file, and not name
// the temporary file `go run` made.
func invokedPath() (string, error) {
	name := os.Args[0]
	if !strings.Contains(name, "/") {
		path, err := exec.LookPath(name)
		if err != nil {
			return os.Executable()
		}
		name = path
	}
	return filepath.Abs(name)
}

// buildTree says why path looks like a binary that will not stay where it
// is (a temporary directory, a Go build cache, a source tree), or "".
func buildTree(path string) string {
	tmp := filepath.Clean(os.TempDir())
	if strings.HasPrefix(path, tmp+"/") {
		return "the temporary directory " + tmp
	}
	if strings.Contains(path, "/go-build") {
		return "a Go build directory"
	}
	for dir := filepath.Dir(path); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		for _, marker := range []string{"go.mod", ".git"} {
			if _, err := os.Stat(filepath.Join(dir, marker)); err == nil {
				return "the source tree " + dir + " (it has " + marker + ")"
			}
		}
	}
	return ""
}

// writeUnits writes the unit files into --output-dir, one file each,
// refusing to replace a different file without --force.
func writeUnits(o *Options, files []units.File) error {
	if o.OutputDir == "" {
		return errors.New("no --output-dir")
	}
	changed, err := units.Write(o.OutputDir, files, o.Force)
	if err != nil {
		return err
	}
	for _, f := range files {
		state := "unchanged"
		for _, c := range changed {
			if c == f.Name {
				state = "wrote"
			}
		}
		fmt.Printf("%s %s\n", state, filepath.Join(o.OutputDir, f.Name))
	}
	return nil
}
