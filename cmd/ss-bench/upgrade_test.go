package main

import (
	"strings"
	"testing"
	"time"
)

func TestUpgradeUnderLoad(t *testing.T) {
	p := Params{Rate: 400, Conns: 4, Latency: time.Millisecond, Upgrades: 3, Modes: []bool{false}}
	res := newResults()
	scenarioUpgrade([]Binary{{Name: "ss-bridge", Path: testBridge, Notify: true}, {Name: "perl", Path: "/bin/false"}}, p, res)
	sc := "3 self-upgrades in a row (new conn)"
	// Get reports false for text figures: read them as printed.
	if v, _ := res.Get(sc, "failed requests, all upgrades", "ss-bridge"); !strings.HasPrefix(v.Text, "0 of ") || v.Text == "0 of 0" {
		t.Errorf("failed requests: %+v", v)
	}
	if v, _ := res.Get(sc, "worker and bridge pids unchanged", "ss-bridge"); v.Text != "yes" {
		t.Errorf("pids unchanged: %+v", v)
	}
	if v, ok := res.Get(sc, "USR2 to the new image serving, median", "ss-bridge"); !ok || v.V <= 0 {
		t.Errorf("USR2 to serving: %+v", v)
	}
	if v, _ := res.Get(sc, "failed requests, all upgrades", "perl"); !v.NA {
		t.Errorf("perl: %+v, want n/a", v)
	}
}
