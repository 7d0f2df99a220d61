package cli

import (
	"reflect"
	"strings"
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

func TestWorkerEnvExportsGivenOptions(t *testing.T) {
	t.Setenv("KILL_OLD_DELAY", "9")
	o, _ := Parse([]string{"--envdir=/e", "--enable-auto-restart", "--auto-restart-interval=7"})
	env := workerEnv(o)
	last := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		last[k] = v
	}
	if last["ENVDIR"] != "/e" || last["ENABLE_AUTO_RESTART"] != "1" || last["AUTO_RESTART_INTERVAL"] != "7" || last["KILL_OLD_DELAY"] != "9" {
		t.Fatalf("environment %v", last)
	}
}
