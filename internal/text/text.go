// Package text holds the string helpers that several packages need alike.
package text

import "strings"

var lineBreaks = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ", "\x00", " ")

// OneLine is s with each line break (CR LF, LF or CR) and NUL replaced by a
// space: fit for a line of a log, a table cell, or an sd_notify field, where
// a line break would start a new field and a NUL is refused.
func OneLine(s string) string {
	return lineBreaks.Replace(s)
}
