package cli

import (
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseFollowsGetoptLong(t *testing.T) {
	o, err := Parse([]string{"--port=80", "-port", "127.0.0.1:81", "--PATH=/s", "--int", "0.5",
		"--signal-on-h=usr1", "--enable-auto", "--kill-old-delay=3", "server", "--", "--port", "x"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.Ports, []string{"80", "127.0.0.1:81"}) || !reflect.DeepEqual(o.Paths, []string{"/s"}) {
		t.Fatalf("ports %q paths %q", o.Ports, o.Paths)
	}
	if o.Interval != 500*time.Millisecond || o.SignalOnHUP != "usr1" || !o.EnableAutoRestart || *o.KillOldDelay != 3 {
		t.Fatalf("got %+v", o)
	}
	// Non-option words are permuted into the command, as Getopt::Long does.
	if !reflect.DeepEqual(o.Command, []string{"server", "--port", "x"}) {
		t.Fatalf("command %q", o.Command)
	}
	if o.AutoRestartInterval != nil {
		t.Fatal("an option not given must stay unset, so the environment's value stands")
	}
	if o, _ := Parse(nil); o.Interval != time.Second {
		t.Fatalf("default interval %v", o.Interval)
	}
}

func TestParseErrors(t *testing.T) {
	for args, want := range map[string]string{
		"--foo":              "unknown option: foo",
		"--s=1":              "option s is ambiguous (signal-on-hup, signal-on-term, status-file, stop)",
		"--port":             "option --port requires an argument",
		"--daemonize=1":      "option --daemonize does not take an argument",
		"--interval=abc":     `--interval=abc: `,
		"--interval=-1":      `--interval=-1: `,
		"--backlog=0":        `--backlog=0: `,
		"--path-mode=0999":   `--path-mode=0999: `,
		"--kill-timeout=1x":  `--kill-timeout=1x: `,
		"--max-backoff=-2":   `--max-backoff=-2: `,
		"--auto-restart-i=x": `--auto-restart-interval=x: `,
		// Not "never": the supervisor would use its default of a minute.
		"--max-backoff=0":       `--max-backoff=0: must be more than 0`,
		"--ready-timeout=0.":    `--ready-timeout=0.: must be more than 0`,
		"--ready-timeout=1e-10": `--ready-timeout=1e-10: must be more than 0`,
	} {
		_, err := Parse(strings.Fields(args))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Parse(%s) = %v, want %q", args, err, want)
		}
	}
}

// The options 0.35 exports to the workers are added to our environment,
// after it, so that they win over what we inherited.
func TestConfigureExportsGivenOptions(t *testing.T) {
	t.Setenv("KILL_OLD_DELAY", "9")
	o, _ := Parse([]string{"--envdir=/e", "--enable-auto-restart", "--auto-restart-interval=7", "--", "w"})
	c, err := configure(o)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ENVDIR=/e", "ENABLE_AUTO_RESTART=1", "AUTO_RESTART_INTERVAL=7"}
	if !slices.Equal(c.Env, want) {
		t.Fatalf("Env = %q, want %q", c.Env, want)
	}
}

// configure carries every server option into the service's configuration.
func TestConfigureBuildsTheServiceConfig(t *testing.T) {
	o, err := Parse(strings.Fields("--port=127.0.0.1:0 --path=/tmp/s.sock --path-mode=0600 --backlog=7 " +
		"--pid-file=/p --status-file=/s --log-file=/l --daemonize --signal-on-hup=15 --signal-on-term=USR1 " +
		"--ready=notify --interval=2 -- w a"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := configure(o)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Supervisor
	if len(c.Specs) != 2 || c.Specs[0].Key != "127.0.0.1:0" || c.Specs[1].Key != "/tmp/s.sock" ||
		c.PathMode != 0o600 || c.Backlog != 7 || c.PidFile != "/p" || c.LogFile != "/l" || !c.Daemonize || c.ListenFDs {
		t.Errorf("service config %+v", c)
	}
	if !slices.Equal(s.Command, []string{"w", "a"}) || s.StatusFile != "/s" || s.Interval != 2*time.Second ||
		s.SignalOnHUP != syscall.SIGTERM || s.SignalOnHUPName != "15" || s.SignalOnTERM != syscall.SIGUSR1 ||
		s.SignalOnTERMName != "" || !s.ReadyByNotify || s.ReadyTimeout != time.Minute || s.Env != nil {
		t.Errorf("supervisor config %+v", s)
	}
}

// Bad values fail with the messages the e2e tests match.
func TestConfigureRejects(t *testing.T) {
	for args, want := range map[string]string{
		"--signal-on-hup=NOPE -- w":              "--signal-on-hup: ",
		"--listen-fds --port=127.0.0.1:0=5 -- w": "--port 127.0.0.1:0=5: --listen-fds passes the sockets on descriptors 3 and up",
		"--kill-old-delay=1 -- w":                "",
	} {
		o, err := Parse(strings.Fields(args))
		if err != nil {
			t.Fatalf("Parse(%s): %v", args, err)
		}
		_, err = configure(o)
		if want == "" {
			if err != nil {
				t.Errorf("configure(%s): %v", args, err)
			}
		} else if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("configure(%s) = %v, want %q...", args, err, want)
		}
	}
	t.Setenv("AUTO_RESTART_INTERVAL", "soon")
	o, _ := Parse([]string{"--", "w"})
	if _, err := configure(o); err == nil || !strings.HasPrefix(err.Error(), "AUTO_RESTART_INTERVAL=soon: ") {
		t.Errorf("an inherited bad AUTO_RESTART_INTERVAL: %v", err)
	}
}

// --workers, --rolling and --max-surge reach the supervisor and a unit's
// command line; the pool options without --workers, and counts out of
// range, are errors.
func TestPoolOptions(t *testing.T) {
	o, err := Parse(strings.Fields("--workers=4 --rolling --max-surge=2 -- w"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := configure(o)
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Supervisor; s.Workers != 4 || !s.Rolling || s.MaxSurge != 2 {
		t.Errorf("supervisor config %+v", s)
	}
	if got := strings.Join(serverArgs(o), " "); !strings.Contains(got, "--max-surge=2") || !strings.Contains(got, "--rolling") ||
		!strings.Contains(got, "--workers=4") {
		t.Errorf("unit arguments %q", got)
	}
	for _, args := range []string{"--rolling -- w", "--max-surge=2 -- w"} {
		o, err := Parse(strings.Fields(args))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := configure(o); err == nil || !strings.Contains(err.Error(), "give --workers too") {
			t.Errorf("configure(%s): %v", args, err)
		}
	}
	for _, args := range []string{"--workers=0", "--workers=1025", "--workers=x", "--max-surge=0"} {
		if _, err := Parse([]string{args, "--", "w"}); err == nil || !strings.Contains(err.Error(), "a whole number from 1 to 1024 expected") {
			t.Errorf("Parse(%s): %v", args, err)
		}
	}
}
