package units

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Serving is the generation that serves, as ss-bridge's STATUS= says. The
// status text is the supervisor's summary: parts joined by "; ", of which
// the serving generation is the first "generation N (pid P) serving" (maybe
// followed by ": " and the worker's own status) or, while a restart is under
// way or after it failed, "generation N (pid P) still serving". A failed
// reload is "reload failed: REASON; " before the summary. A pool's
// (--workers) parts are "generation N: S/T serving" and, for older
// generations, "generation N: S/T still serving"; its Serving has no PID.
type Serving struct {
	Generation int
	PID        int
}

// ParseServing finds the serving generation in ss-bridge's status text.
func ParseServing(status string) (Serving, bool) {
	for _, part := range strings.Split(status, "; ") {
		var s Serving
		rest, ok := strings.CutPrefix(part, "generation ")
		if !ok {
			continue
		}
		if num, counts, ok := strings.Cut(rest, ": "); ok && !strings.Contains(num, " ") {
			if s, ok := poolServing(num, counts); ok {
				return s, true
			}
			continue
		}
		num, rest, ok := strings.Cut(rest, " (pid ")
		if !ok {
			continue
		}
		pid, rest, ok := strings.Cut(rest, ") ")
		if !ok || !(strings.HasPrefix(rest, "serving") || strings.HasPrefix(rest, "still serving")) {
			continue
		}
		var err1, err2 error
		s.Generation, err1 = strconv.Atoi(num)
		s.PID, err2 = strconv.Atoi(pid)
		if err1 == nil && err2 == nil && s.Generation > 0 && s.PID > 0 {
			return s, true
		}
	}
	return Serving{}, false
}

// poolServing reads a pool's part "N: S/T serving" (or "still serving"),
// given as num and counts.
func poolServing(num, counts string) (Serving, bool) {
	frac, state, ok := strings.Cut(counts, " ")
	if !ok || (state != "serving" && state != "still serving") {
		return Serving{}, false
	}
	s, t, ok := strings.Cut(frac, "/")
	gen, err1 := strconv.Atoi(num)
	serving, err2 := strconv.Atoi(s)
	total, err3 := strconv.Atoi(t)
	if !ok || err1 != nil || err2 != nil || err3 != nil || gen < 1 || serving < 1 || total < serving {
		return Serving{}, false
	}
	return Serving{Generation: gen}, true
}

// unitState is what reload needs to know of a unit.
type unitState struct {
	active, sub, result string
	job                 uint32 // 0: no job
	invocation          []byte
	statusText          string
}

// state reads the unit's state in two calls, one GetAll per interface, so
// that each half is one consistent snapshot.
func (s *Systemd) state(ctx context.Context, unit string) (unitState, error) {
	var st unitState
	unitProps, err := call(ctx, func() (map[string]any, error) { return s.conn.GetUnitPropertiesContext(ctx, unit) })
	if err != nil {
		return st, fmt.Errorf("%s: read its state: %w", unit, err)
	}
	serviceProps, err := call(ctx, func() (map[string]any, error) {
		return s.conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
	})
	if err != nil {
		return st, fmt.Errorf("%s: read its state: %w", unit, err)
	}
	st.active, _ = unitProps["ActiveState"].(string)
	st.sub, _ = unitProps["SubState"].(string)
	st.invocation, _ = unitProps["InvocationID"].([]byte)
	if fields, ok := unitProps["Job"].([]any); ok && len(fields) > 0 {
		st.job, _ = fields[0].(uint32)
	}
	st.statusText, _ = serviceProps["StatusText"].(string)
	st.result, _ = serviceProps["Result"].(string)
	return st, nil
}

// settle waits until the unit has no job and is active, inactive or failed:
// a reload job queued while a start job runs is merged into it, and no
// reload happens at all.
func (s *Systemd) settle(ctx context.Context, unit string) (unitState, error) {
	for {
		st, err := s.state(ctx, unit)
		if err != nil {
			return st, err
		}
		if st.job == 0 && (st.active == "active" || st.active == "inactive" || st.active == "failed") {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("%s is still %s (%s): %w", unit, st.active, st.sub, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ErrNotRunning is ReloadServing's error for a unit that is not running:
// there is nothing to reload, and its next start runs the new code.
var ErrNotRunning = errors.New("not running")

// ReloadServing reloads an ss-bridge unit and returns the generation that
// serves after it, which started after the call. It first waits for a
// start or reload under way to end. It fails when the unit has failed, when
// the reload job fails, and when no newer generation serves after it: a
// reload whose new generation failed to start leaves the old one serving.
// A unit that is not running gives ErrNotRunning.
func (s *Systemd) ReloadServing(ctx context.Context, unit string) (Serving, error) {
	if err := s.mustExist(ctx, unit); err != nil {
		return Serving{}, err
	}
	before, err := s.settle(ctx, unit)
	if err != nil {
		return Serving{}, fmt.Errorf("reload %s: %w", unit, err)
	}
	switch before.active {
	case "inactive":
		return Serving{}, ErrNotRunning
	case "failed":
		return Serving{}, fmt.Errorf("reload %s: the unit has failed (result %s); not reloaded", unit, before.result)
	}
	old, _ := ParseServing(before.statusText)
	if err := s.Reload(ctx, unit); err != nil {
		return Serving{}, err
	}
	after, err := s.settle(ctx, unit)
	if err != nil {
		return Serving{}, fmt.Errorf("reload %s: %w", unit, err)
	}
	now, ok := ParseServing(after.statusText)
	switch {
	case after.active != "active":
		return Serving{}, fmt.Errorf("reload %s: the unit is %s (%s) after the reload", unit, after.active, after.sub)
	case !ok:
		return Serving{}, fmt.Errorf("reload %s: no generation serves after the reload (status %q)", unit, after.statusText)
	case !bytes.Equal(after.invocation, before.invocation):
		// Restarted meanwhile: whatever serves now started after the call.
		return now, nil
	case now.Generation <= old.Generation && strings.HasPrefix(after.statusText, "reload failed"):
		return now, fmt.Errorf("reload %s: %s", unit, after.statusText)
	case now.Generation <= old.Generation:
		return now, fmt.Errorf("reload %s: generation %d still serves; no new generation started (status %q)", unit, now.Generation, after.statusText)
	}
	return now, nil
}
