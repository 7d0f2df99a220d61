package supervisor

import (
	"fmt"
	"path/filepath"
)

// CommandPath is the absolute path of the worker program, found as a worker
// start finds it: a name without "/" in PATH (the envdir's included), a
// relative path in Dir. It fails as Check does. A unit file needs it: the
// service manager starts ss-bridge with its own PATH, in its own directory.
func (cfg Config) CommandPath() (string, error) {
	if err := cfg.Check(); err != nil {
		return "", err
	}
	name := cfg.Command[0]
	path, err := withEnvDir(newEnvironment(cfg.Env)).lookPath(name)
	if err != nil {
		return "", fmt.Errorf("server program %s: %w", name, unwrapPathError(err))
	}
	if !filepath.IsAbs(path) && cfg.Dir != "" {
		path = filepath.Join(cfg.Dir, path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("server program %s: %w", name, err)
	}
	return abs, nil
}
