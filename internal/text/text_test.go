package text

import "testing"

func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"plain":           "plain",
		"a\nb":            "a b",
		"a\r\nb":          "a b",
		"a\rb\n\nc":       "a b  c",
		"nul\x00here":     "nul here",
		"tabs\tstay":      "tabs\tstay",
		"ünïcode\nkept ✓": "ünïcode kept ✓",
	} {
		if got := OneLine(in); got != want {
			t.Errorf("OneLine(%q) = %q, want %q", in, got, want)
		}
	}
}
