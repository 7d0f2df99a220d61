package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

// Unit says how a value prints.
type Unit int

const (
	Ms Unit = iota
	MB
	Count
	PerSec
	Text
)

// Val is one binary's figure for a metric; NA when it does not apply.
type Val struct {
	V    float64
	Text string
	NA   bool
	Set  bool
}

// Row is one metric of one scenario, for every binary.
type Row struct {
	Scenario, Metric string
	Unit             Unit
	Vals             map[string]Val
}

// Results collects the rows in the order they are first added.
type Results struct {
	rows  []*Row
	index map[string]*Row
}

func newResults() *Results { return &Results{index: map[string]*Row{}} }

func (r *Results) row(scenario, metric string, unit Unit) *Row {
	key := scenario + "\x00" + metric
	if row, ok := r.index[key]; ok {
		return row
	}
	row := &Row{Scenario: scenario, Metric: metric, Unit: unit, Vals: map[string]Val{}}
	r.rows = append(r.rows, row)
	r.index[key] = row
	return row
}

// Add records a number (ms for Ms, MB for MB, a count, a rate).
func (r *Results) Add(scenario, metric string, unit Unit, bin string, v float64) {
	if math.IsNaN(v) {
		r.NA(scenario, metric, unit, bin, "no data")
		return
	}
	r.row(scenario, metric, unit).Vals[bin] = Val{V: v, Set: true}
}

// AddText records a figure that is not a number.
func (r *Results) AddText(scenario, metric, bin, text string) {
	r.row(scenario, metric, Text).Vals[bin] = Val{Text: text, Set: true}
}

// NA records that a metric does not apply to a binary.
func (r *Results) NA(scenario, metric string, unit Unit, bin, why string) {
	r.row(scenario, metric, unit).Vals[bin] = Val{NA: true, Text: why, Set: true}
}

// Get returns a binary's figure.
func (r *Results) Get(scenario, metric, bin string) (Val, bool) {
	row, ok := r.index[scenario+"\x00"+metric]
	if !ok {
		return Val{}, false
	}
	v, ok := row.Vals[bin]
	return v, ok && v.Set && !v.NA && row.Unit != Text
}

func (v Val) format(u Unit) string {
	switch {
	case !v.Set:
		return "—"
	case v.NA:
		if v.Text != "" {
			return "n/a (" + v.Text + ")"
		}
		return "n/a"
	case v.Text != "":
		return v.Text
	}
	switch u {
	case Ms:
		if v.V >= 100 {
			return fmt.Sprintf("%.0f ms", v.V)
		}
		return fmt.Sprintf("%.2f ms", v.V)
	case MB:
		return fmt.Sprintf("%.1f MB", v.V)
	case Count:
		return fmt.Sprintf("%.0f", v.V)
	case PerSec:
		return fmt.Sprintf("%.1f/s", v.V)
	}
	return fmt.Sprint(v.V)
}

func ratio(a, b Val, u Unit) string {
	if !a.Set || !b.Set || a.NA || b.NA || u == Text || a.Text != "" || b.Text != "" {
		return ""
	}
	switch {
	case a.V == 0 && b.V == 0:
		return "1 (both 0)"
	case b.V == 0:
		return "∞ (anchor 0)"
	}
	r := a.V / b.V
	if r < 0.01 {
		return fmt.Sprintf("%.4f", r)
	}
	return fmt.Sprintf("%.2f", r)
}

// Print writes the table in markdown: one column per binary and one ratio
// column (subject / anchor) per anchor.
func (r *Results) Print(w io.Writer, bins []Binary) {
	subject := bins[0].Name
	head := []string{"scenario", "metric"}
	for _, b := range bins {
		head = append(head, b.Name)
	}
	for _, b := range bins[1:] {
		head = append(head, subject+" / "+b.Name)
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(head, " | "))
	fmt.Fprintf(w, "|%s\n", strings.Repeat(" --- |", len(head)))
	for _, row := range r.rows {
		cells := []string{row.Scenario, row.Metric}
		for _, b := range bins {
			cells = append(cells, row.Vals[b.Name].format(row.Unit))
		}
		for _, b := range bins[1:] {
			cells = append(cells, ratio(row.Vals[subject], row.Vals[b.Name], row.Unit))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// medianMs is the median of durations, in ms; NaN when there are none.
func medianMs(ds []time.Duration) float64 {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = ms(d)
	}
	return median(xs)
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
