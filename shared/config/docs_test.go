package config

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// readByMain are variables a binary's main reads itself, outside FromEnv,
// with the file that reads them: they belong in the table too.
var readByMain = map[string]string{
	"NATS_LISTEN": "../../ingress/main.go", // -nats-listen's default
}

// The configuration page's table names every variable FromEnv reads, and
// every row names one that a binary reads: the table cannot drift from the
// code either way.
func TestConfigurationPageMatchesFromEnv(t *testing.T) {
	page, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := tableVariables(t, string(page))

	read := map[string]bool{}
	c := Defaults()
	_ = c.FromEnv(func(key string) (string, bool) { read[key] = true; return "", false })
	if len(read) == 0 {
		t.Fatal("FromEnv read no variable")
	}
	for key, file := range readByMain {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(src), `"`+key+`"`) {
			t.Errorf("%s no longer reads %s: take it out of readByMain (and the page)", file, key)
		}
		read[key] = true
	}

	for key := range read {
		if !documented[key] {
			t.Errorf("docs/configuration.md: %s is read but has no row in the table", key)
		}
	}
	for key := range documented {
		if !read[key] {
			t.Errorf("docs/configuration.md: the table documents %s, which no binary reads", key)
		}
	}
}

// tableVariables returns the variables named in the first cell of each
// table row between <!-- config:env --> and <!-- /config:env -->.
func tableVariables(t *testing.T, page string) map[string]bool {
	t.Helper()
	_, rest, ok := strings.Cut(page, "<!-- config:env -->")
	section, _, ok2 := strings.Cut(rest, "<!-- /config:env -->")
	if !ok || !ok2 {
		t.Fatal("docs/configuration.md: no <!-- config:env --> … <!-- /config:env --> section")
	}
	name := regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")
	vars := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "|") || len(cells) < 3 || slices.Contains([]string{"variable", ""}, strings.TrimSpace(strings.Trim(cells[1], "-"))) {
			continue // not a row, the header or its rule
		}
		found := name.FindAllStringSubmatch(cells[1], -1)
		if len(found) == 0 {
			t.Errorf("docs/configuration.md: a row names no variable: %s", line)
		}
		for _, m := range found {
			vars[m[1]] = true
		}
	}
	return vars
}
