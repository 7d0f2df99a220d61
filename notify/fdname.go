package notify

import (
	"fmt"
	"strings"
)

// maxFDNameLen is the longest FDNAME systemd accepts (FDNAME_MAX).
const maxFDNameLen = 255

// EncodeFDName turns a socket key ("8080", "127.0.0.1:8080", "[::1]:8080",
// "/run/app.sock", or any other byte string) into a name systemd accepts in
// FDNAME= and LISTEN_FDNAMES. systemd takes printable ASCII except ':'; the
// encoding keeps ASCII letters, digits and ".-/[]@" as they are and writes
// every other byte, '_' included, as '_' and two upper-case hex digits:
// "127.0.0.1:8080" becomes "127.0.0.1_3A8080". The result can be longer than
// the 255 characters systemd allows; StoreFDs checks that.
func EncodeFDName(key string) string {
	var b strings.Builder
	b.Grow(len(key))
	for i := 0; i < len(key); i++ {
		c := key[i]
		if plainFDNameByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(upperHex[c>>4])
		b.WriteByte(upperHex[c&0xf])
	}
	return b.String()
}

// DecodeFDName reverses EncodeFDName. It accepts exactly the names
// EncodeFDName produces, so that a name from LISTEN_FDNAMES that decodes
// without error was stored by EncodeFDName: DecodeFDName(EncodeFDName(k)) is
// k, and EncodeFDName of a decoded name gives the name back.
func DecodeFDName(name string) (string, error) {
	bad := func(i int, why string) (string, error) {
		return "", fmt.Errorf("invalid encoded descriptor name %q at byte %d: %s", name, i, why)
	}
	var b strings.Builder
	b.Grow(len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		if plainFDNameByte(c) {
			b.WriteByte(c)
			continue
		}
		if c != '_' {
			return bad(i, fmt.Sprintf("byte %q is not escaped", c))
		}
		if i+2 >= len(name) {
			return bad(i, "'_' is not followed by two hex digits")
		}
		hi, lo := unhex(name[i+1]), unhex(name[i+2])
		if hi < 0 || lo < 0 {
			return bad(i, "'_' is not followed by two upper-case hex digits")
		}
		d := byte(hi<<4 | lo)
		if plainFDNameByte(d) {
			return bad(i, fmt.Sprintf("byte %q must not be escaped", d))
		}
		b.WriteByte(d)
		i += 2
	}
	return b.String(), nil
}

const upperHex = "0123456789ABCDEF"

// plainFDNameByte reports whether EncodeFDName leaves c as it is.
func plainFDNameByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte(".-/[]@", c) >= 0
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// validFDName is systemd's fdname_is_valid(): printable ASCII except ':',
// at most 255 characters.
func validFDName(name string) bool {
	if len(name) > maxFDNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < ' ' || c >= 127 || c == ':' {
			return false
		}
	}
	return true
}
