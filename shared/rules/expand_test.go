package rules

import "testing"

// expand fills each placeholder once, leaves anything else as written, and
// never expands what it put in (a person's text quoting {scene}).
func TestExpand(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"no placeholder", "no placeholder"},
		{"{scene}", "s1"},
		{"欢迎光临{label}（{group}·{scene}）", "欢迎光临北京店（北京·s1）"},
		{"{{scene}}", "{s1}"},
		{"{unknown} {scene", "{unknown} {scene"},
		{"x{", "x{"},
		{"you said: {content}", "you said: hi {scene}"},
		{"{scene}{scene}", "s1s1"},
	} {
		if got := expand(c.in, "s1", "北京店", "北京", "hi {scene}"); got != c.want {
			t.Errorf("expand(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
