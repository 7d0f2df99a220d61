package units

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// Systemd is a connection to a service manager over D-Bus. Every call is
// bounded by its context: go-systemd's own connect ignores the context, so
// Connect enforces it from outside.
type Systemd struct {
	conn *sd.Conn
	user bool
}

// Connect connects to the system's service manager, or with user to the
// calling user's. The bus is the one in DBUS_SYSTEM_BUS_ADDRESS or
// DBUS_SESSION_BUS_ADDRESS when set.
func Connect(ctx context.Context, user bool) (*Systemd, error) {
	bus := "system"
	dial := sd.NewSystemConnectionContext
	if user {
		bus, dial = "user", sd.NewUserConnectionContext
	}
	type result struct {
		conn *sd.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		// godbus closes a connection when the context it was made with is
		// done, so the connection gets its own, and ctx bounds only the wait.
		c, err := dial(context.Background())
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("connect to the %s bus: %w", bus, r.err)
		}
		return &Systemd{conn: r.conn, user: user}, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("connect to the %s bus: %w", bus, ctx.Err())
	}
}

// Close closes the connection.
func (s *Systemd) Close() { s.conn.Close() }

// Version is the service manager's major version, e.g. 257.
func (s *Systemd) Version(ctx context.Context) (int, error) {
	v, err := call(ctx, func() (string, error) { return s.conn.GetManagerProperty("Version") })
	if err != nil {
		return 0, fmt.Errorf("read systemd's version: %w", err)
	}
	return parseVersion(strings.Trim(v, `"`))
}

func parseVersion(v string) (int, error) {
	digits := strings.TrimLeft(v, "v")
	end := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		digits = digits[:end]
	}
	n, err := strconv.Atoi(digits)
	if err != nil {
		return 0, fmt.Errorf("systemd version %q is not a number", v)
	}
	return n, nil
}

// call runs f, which cannot be cancelled, and gives up when ctx is done.
func call[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, busError(r.err)
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// busError turns a D-Bus error into its message, which is what systemd
// means ("Unit app.service not found.", "Access denied").
func busError(err error) error {
	var e dbus.Error
	if errors.As(err, &e) {
		msg := e.Name
		if len(e.Body) > 0 {
			if s, ok := e.Body[0].(string); ok {
				msg = s
			}
		}
		return errors.New(strings.TrimSuffix(msg, "."))
	}
	return err
}

// ReloadDaemon makes systemd read its unit files again (daemon-reload).
func (s *Systemd) ReloadDaemon(ctx context.Context) error {
	_, err := call(ctx, func() (struct{}, error) { return struct{}{}, s.conn.ReloadContext(ctx) })
	if err != nil {
		return fmt.Errorf("daemon-reload: %w", err)
	}
	return nil
}

// Enable enables unit files, as systemctl enable does.
func (s *Systemd) Enable(ctx context.Context, names []string) error {
	_, err := call(ctx, func() (struct{}, error) {
		_, _, err := s.conn.EnableUnitFilesContext(ctx, names, false, true)
		return struct{}{}, err
	})
	if err != nil {
		return fmt.Errorf("enable %s: %w", strings.Join(names, " "), err)
	}
	return nil
}

// Start starts a unit and waits for its job. It fails unless the job's
// result is "done".
func (s *Systemd) Start(ctx context.Context, unit string) error {
	return s.job(ctx, "start", unit, s.conn.StartUnitContext)
}

// Reload reloads a unit and waits for its job. It fails unless the job's
// result is "done".
func (s *Systemd) Reload(ctx context.Context, unit string) error {
	return s.job(ctx, "reload", unit, s.conn.ReloadUnitContext)
}

// job runs a unit job and waits for its result.
func (s *Systemd) job(ctx context.Context, what, unit string, start func(context.Context, string, string, chan<- string) (int, error)) error {
	if err := s.mustExist(ctx, unit); err != nil {
		return err
	}
	// Buffered: go-systemd delivers the result while holding its job lock,
	// so an unread channel would block every later job.
	result := make(chan string, 1)
	if _, err := call(ctx, func() (int, error) { return start(ctx, unit, "replace", result) }); err != nil {
		return fmt.Errorf("%s %s: %w", what, unit, err)
	}
	select {
	case r := <-result:
		if r != "done" {
			return fmt.Errorf("%s %s: job %s", what, unit, r)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: no result from systemd: %w", what, unit, ctx.Err())
	}
}

// mustExist fails with systemd's words when it has no such unit: asking for
// the properties of an unknown unit is not an error over D-Bus.
func (s *Systemd) mustExist(ctx context.Context, unit string) error {
	p, err := call(ctx, func() (*sd.Property, error) { return s.conn.GetUnitPropertyContext(ctx, unit, "LoadState") })
	if err != nil {
		return fmt.Errorf("%s: %w", unit, err)
	}
	if state := strings.Trim(p.Value.String(), `"`); state != "loaded" {
		return fmt.Errorf("unit %s is %s", unit, state)
	}
	return nil
}

// Status is what systemd says of a unit.
type Status struct {
	Unit        string    `json:"unit"`
	ActiveState string    `json:"active_state"`
	SubState    string    `json:"sub_state"`
	MainPID     int       `json:"main_pid"`
	Since       time.Time `json:"since,omitzero"`
	StatusText  string    `json:"status_text"`
}

// Status reads a unit's state.
func (s *Systemd) Status(ctx context.Context, unit string) (Status, error) {
	if err := s.mustExist(ctx, unit); err != nil {
		return Status{}, err
	}
	props, err := call(ctx, func() (map[string]any, error) {
		return s.conn.GetUnitTypePropertiesContext(ctx, unit, unitType(unit))
	})
	if err != nil {
		return Status{}, fmt.Errorf("%s: %w", unit, err)
	}
	unitProps, err := call(ctx, func() (map[string]any, error) { return s.conn.GetUnitPropertiesContext(ctx, unit) })
	if err != nil {
		return Status{}, fmt.Errorf("%s: %w", unit, err)
	}
	st := Status{Unit: unit}
	st.ActiveState, _ = unitProps["ActiveState"].(string)
	st.SubState, _ = unitProps["SubState"].(string)
	if since, ok := unitProps["ActiveEnterTimestamp"].(uint64); ok && since > 0 {
		st.Since = time.UnixMicro(int64(since))
	}
	if pid, ok := props["MainPID"].(uint32); ok {
		st.MainPID = int(pid)
	}
	st.StatusText, _ = props["StatusText"].(string)
	return st, nil
}

func unitType(unit string) string {
	if i := strings.LastIndexByte(unit, '.'); i >= 0 {
		t := unit[i+1:]
		return strings.ToUpper(t[:1]) + t[1:]
	}
	return "Service"
}

// UnitDir is where unit files are installed: /etc/systemd/system, or the
// user's configuration directory with user.
func UnitDir(user bool) (string, error) {
	if !user {
		return "/etc/systemd/system", nil
	}
	if dir := os.Getenv("XDG_CONFIG_HOME"); dir != "" {
		return dir + "/systemd/user", nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the user unit directory: %w", err)
	}
	return home + "/.config/systemd/user", nil
}

// KillMain sends sig to the unit's main process only, as systemctl kill
// --kill-whom=main does.
func (s *Systemd) KillMain(ctx context.Context, unit string, sig syscall.Signal) error {
	if err := s.mustExist(ctx, unit); err != nil {
		return err
	}
	_, err := call(ctx, func() (struct{}, error) {
		return struct{}{}, s.conn.KillUnitWithTarget(ctx, unit, sd.Main, int32(sig))
	})
	if err != nil {
		return fmt.Errorf("send %s to the main process of %s: %w", unix.SignalName(sig), unit, err)
	}
	return nil
}
