package units_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/systemdtest"
)

// A worker whose STATUS= is not valid UTF-8 (Latin-1 "café"): systemd 257
// ignores a status text that is not UTF-8 clean, so when ss-bridge passed the
// worker's bytes on in its own STATUS=, the unit's StatusText never said
// which generation serves, and `ss-bridge reload` failed after a good reload
// ("no generation serves after the reload").
func TestWorkerStatusNotUTF8(t *testing.T) {
	c := systemdtest.Boot(t)
	bridge, err := c.BuildGo(module+"/cmd/ss-bridge", "ss-bridge")
	if err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\nsystemd-notify --ready --status=\"$(printf 'caf\\351')\"\nexec sleep infinity\n"
	if err := os.WriteFile(filepath.Join(c.HostDir(), "latin1-worker"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	out, code := inDir(t, c, "/", bridge, "unit", "--name=latin1", "--install", "--now",
		"--port=127.0.0.1:"+port, "--ready=notify", "--", c.GuestPath("latin1-worker"))
	if code != 0 {
		t.Fatalf("unit --install --now: exit %d: %q", code, out)
	}
	if err := c.WaitProperty("latin1.service", "ActiveState", "active", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	out, code = run(t, c, bridge, "reload", "latin1")
	if code != 0 || !strings.HasPrefix(out, "latin1.service reloaded: generation 2 (pid ") {
		st, _ := c.Property("latin1.service", "StatusText")
		j, _ := c.Journal("latin1.service")
		t.Fatalf("reload: exit %d: %q (StatusText %q)\n%s", code, out, st, j)
	}
}
