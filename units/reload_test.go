package units

import "testing"

func TestParseServing(t *testing.T) {
	for status, want := range map[string]Serving{
		"generation 7 (pid 1234) serving": {7, 1234},
		"generation 7 (pid 1234) serving: generation 99 (pid 1) serving; 1 old generation draining":                                          {7, 1234},
		"reload failed: worker 5 exited with status 3; generation 8 failed to start, retrying; generation 7 (pid 1234) still serving":        {7, 1234},
		"generation 9 (pid 55) starting; generation 8 (pid 44) still serving":                                                                {8, 44},
		"generation 3 failed to start, retrying":                                                                                             {},
		"generation 7: 4/4 serving; 2 of generation 6 draining":                                                                              {7, 0},
		"generation 6: 3/4 still serving; generation 7: 1/4 serving; generation 7: 1 starting":                                               {6, 0},
		"reload failed: new worker 9 exited with status 256 before it was ready; generation 6: 3/4 still serving; generation 7: 1/4 serving": {6, 0},
		"generation 7: 2 starting; 1 failed to start, retrying":                                                                              {},
		"": {},
	} {
		got, ok := ParseServing(status)
		if got != want || ok != (want != Serving{}) {
			t.Errorf("%q: %v %v, want %v", status, got, ok, want)
		}
	}
}
