package admin

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestDecodeJSON(t *testing.T) {
	type doc struct {
		Name  string `json:"name"`
		Count int    `json:"count"`
	}
	for body, field := range map[string]string{
		`{"name":"a","count":1}`:  "",
		`{"name":"a","nmae":"b"}`: "nmae",
		`{"count":"many"}`:        "count",
		`{"name":"a"} {}`:         "-",
		`{"name":"a"}}`:           "-",
		`[1]`:                     "-",
		`{"name":`:                "-",
	} {
		var d doc
		err := DecodeJSON(strings.NewReader(body), &d)
		var fe *FieldError
		switch {
		case field == "" && err != nil:
			t.Errorf("%s: %v", body, err)
		case field == "-" && (err == nil || errors.As(err, &fe)):
			t.Errorf("%s: %v, want an error naming no field", body, err)
		case field != "" && field != "-" && (!errors.As(err, &fe) || fe.Field != field):
			t.Errorf("%s: %v, want a FieldError naming %s", body, err, field)
		}
	}
}

func TestBadRequestNamesTheField(t *testing.T) {
	w := httptest.NewRecorder()
	BadRequest(w, &FieldError{Field: "name", Msg: "too long"})
	if got := strings.TrimSpace(w.Body.String()); w.Code != 400 || got != `{"error":"name: too long","field":"name"}` {
		t.Errorf("%d %s", w.Code, got)
	}
	w = httptest.NewRecorder()
	BadRequest(w, errors.New("want one JSON object"))
	if got := strings.TrimSpace(w.Body.String()); got != `{"error":"want one JSON object"}` {
		t.Errorf("%s", got)
	}
}
