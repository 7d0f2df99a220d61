package notify

import (
	"strings"
	"testing"
)

func TestEncodeFDName(t *testing.T) {
	for _, tc := range []struct{ key, name string }{
		{"8080", "8080"},
		{"127.0.0.1:8080", "127.0.0.1_3A8080"},
		{"[::1]:8080", "[_3A_3A1]_3A8080"},
		{"[fe80::1%eth0]:80", "[fe80_3A_3A1_25eth0]_3A80"},
		{"/run/app.sock", "/run/app.sock"},
		{"/run/my_app sock", "/run/my_5Fapp_20sock"},
		{"@abstract", "@abstract"},
		{"", ""},
		{"\x00\xff_", "_00_FF_5F"},
	} {
		if got := EncodeFDName(tc.key); got != tc.name {
			t.Errorf("EncodeFDName(%q) = %q, want %q", tc.key, got, tc.name)
		}
		if got, err := DecodeFDName(tc.name); err != nil || got != tc.key {
			t.Errorf("DecodeFDName(%q) = %q, %v; want %q", tc.name, got, err, tc.key)
		}
	}
}

func TestDecodeFDNameRejectsWhatEncodeNeverGives(t *testing.T) {
	for _, name := range []string{
		"127.0.0.1:8080", // ':' unescaped
		"a_",             // truncated escapes
		"a_3",
		"a_3a",   // lower-case hex
		"a_41",   // 'A' needs no escape
		"a_2F",   // '/' needs no escape
		"a b",    // space unescaped
		"a\xffb", // non-ASCII
		"_G0",
		"stored_",
	} {
		if got, err := DecodeFDName(name); err == nil {
			t.Errorf("DecodeFDName(%q) = %q, want an error", name, got)
		}
	}
}

func TestLongKeysAreRefusedBeforeSystemdSeesThem(t *testing.T) {
	if _, err := fdName("/" + strings.Repeat("x", 254)); err != nil {
		t.Errorf("a 255-character name: %v", err)
	}
	if _, err := fdName("/" + strings.Repeat(":", 100)); err == nil {
		t.Error("a key encoding to 301 characters was accepted")
	}
}

func FuzzFDName(f *testing.F) {
	for _, s := range []string{"8080", "127.0.0.1:8080", "[::1]:8080", "/run/app.sock", "_3A", "a_5F_"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name := EncodeFDName(s)
		if !validFDName(name) && len(name) <= maxFDNameLen {
			t.Fatalf("EncodeFDName(%q) = %q, which systemd rejects", s, name)
		}
		if strings.ContainsAny(name, ":\n=") {
			t.Fatalf("EncodeFDName(%q) = %q", s, name)
		}
		if back, err := DecodeFDName(name); err != nil || back != s {
			t.Fatalf("DecodeFDName(EncodeFDName(%q)) = %q, %v", s, back, err)
		}
		// Read as a name: only canonical encodings decode.
		if key, err := DecodeFDName(s); err == nil && EncodeFDName(key) != s {
			t.Fatalf("DecodeFDName(%q) = %q, which encodes as %q", s, key, EncodeFDName(key))
		}
	})
}
