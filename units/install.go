package units

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Write installs files in dir. A file that exists with other content is
// not overwritten unless force is set; then nothing at all is written. It
// reports which files changed.
func Write(dir string, files []File, force bool) (changed []string, err error) {
	for _, f := range files {
		old, err := os.ReadFile(filepath.Join(dir, f.Name))
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, f.Name), err)
		case !bytes.Equal(old, []byte(f.Content)) && !force:
			return nil, fmt.Errorf("%s exists and differs from the generated unit; use --force to replace it", filepath.Join(dir, f.Name))
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	for _, f := range files {
		path := filepath.Join(dir, f.Name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, []byte(f.Content)) {
			continue
		}
		tmp := path + ".ss-bridge-new"
		if err := os.WriteFile(tmp, []byte(f.Content), 0o644); err != nil {
			os.Remove(tmp)
			return changed, fmt.Errorf("write %s: %w", path, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return changed, fmt.Errorf("write %s: %w", path, err)
		}
		changed = append(changed, f.Name)
	}
	return changed, nil
}
