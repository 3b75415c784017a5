package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// WriteError answers with {"error": msg} and status code.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, map[string]string{"error": msg})
}

// FieldError names the field of a request body that is wrong.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// BadRequest answers 400 with err, and the field when a *FieldError is to
// blame.
func BadRequest(w http.ResponseWriter, err error) {
	body := map[string]string{"error": err.Error()}
	var fe *FieldError
	if errors.As(err, &fe) {
		body["field"] = fe.Field
	}
	WriteJSON(w, http.StatusBadRequest, body)
}

// DecodeJSON reads one JSON object into v, and nothing after it. An unknown
// field (a misspelt one must not pass as a default) or a value of the
// wrong type is a *FieldError naming it.
func DecodeJSON(r io.Reader, v any) error {
	d := json.NewDecoder(r)
	d.DisallowUnknownFields()
	err := d.Decode(v)
	var te *json.UnmarshalTypeError
	switch {
	case err == nil:
		if _, err := d.Token(); err != io.EOF {
			return errors.New("want one JSON object, nothing after it")
		}
		return nil
	case errors.As(err, &te) && te.Field != "":
		return &FieldError{Field: te.Field, Msg: "want a " + te.Type.String()}
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return &FieldError{Field: strings.Trim(f, `"`), Msg: "unknown field"}
	}
	return fmt.Errorf("want one JSON object: %w", err)
}
